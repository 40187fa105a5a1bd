"""Many-step sampling with the teacher: the quality reference that the distilled student is measured against.

``rollout`` generates frames autoregressively from real start frames and a recorded action sequence, each frame
denoised with ``steps`` Euler steps given the last ``context`` generated (or start) frames, in the codec's latent
space; it returns uint8. ``ManyStepSampler`` hands it to the fidelity evaluator (``eval.fidelity``), which scores it
against the real game as it scores the engine's sessions.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from worldmodel.checkpoint import Checkpoint, CheckpointError, check_action_space, load_checkpoint
from worldmodel.metadata import ModelInfo
from worldmodel.nn.codec import make_codec
from worldmodel.nn.flow import Denoiser, NoiseSchedule, sample_next_frame
from worldmodel.nn.dit import DiT, DiTConfig


@dataclass
class Teacher:
    """A loaded teacher checkpoint: the EMA denoiser, its codec and its metadata (read once into ``info``)."""
    denoiser: Denoiser
    codec: torch.nn.Module
    metadata: dict
    info: ModelInfo = field(init=False)  # the metadata's typed fields (``rollout`` asks for some every frame)

    def __post_init__(self):
        self.info = ModelInfo.from_metadata(self.metadata)

    @property
    def attention(self) -> str:
        return self.info.attention

    @property
    def clip_len(self) -> int:
        return self.info.clip_len


def codec_from_checkpoint(ckpt):
    """The codec stored in a loaded checkpoint (its config in the metadata, its weights under ``codec.``)."""
    codec = make_codec(ckpt.metadata["codec"])
    codec.load_state_dict(ckpt.group("codec."))
    return codec


def load_teacher(path, device="cpu", action_space=None) -> Teacher:
    """The teacher in ``path`` (a file, or a ``Checkpoint`` already read); with ``action_space``, a CheckpointError
    unless it matches the checkpoint's."""
    ckpt = path if isinstance(path, Checkpoint) else load_checkpoint(path, device=device)
    meta = ckpt.metadata
    if meta["kind"] == "codec":
        raise CheckpointError(f"{ckpt.path} is a codec checkpoint: a world model (a teacher or a student) is needed "
                              "here")
    if action_space is not None:
        check_action_space(meta, action_space)
    net = DiT(DiTConfig.from_metadata(meta["model"]))
    net.load_state_dict(ckpt.group("model."))
    codec = codec_from_checkpoint(ckpt)
    schedule = NoiseSchedule(**meta["schedule"])
    den = Denoiser(net, schedule).to(device).eval().requires_grad_(False)
    return Teacher(den, codec.to(device).eval(), meta)


@torch.no_grad()
def rollout(teacher: Teacher, start_frames: np.ndarray, actions: np.ndarray, steps: int = 16,
            context: int | None = None, seed: int = 0, start_actions: np.ndarray | None = None,
            context_sigma: float = 0.0) -> np.ndarray:
    """Generate len(actions) frames after ``start_frames`` uint8 [S, H, W, 3].

    ``actions[i]`` [A] is the action that produces generated frame i (the one held while the frame before it was
    shown). Each new frame sees at most ``context`` previous frames (default: the teacher's clip length - 1).
    ``start_actions`` [S, A]: the actions that produced the start frames, if known (else zeros).
    Returns uint8 [N, H, W, 3].
    """
    device = next(teacher.denoiser.parameters()).device
    context = context or teacher.clip_len - 1
    codec = teacher.codec
    latents = codec.encode(torch.from_numpy(start_frames).to(device))[None]  # [1, S, C, h, w]
    if start_actions is None:
        acts = torch.zeros(1, latents.shape[1], actions.shape[-1], device=device)
    else:
        acts = torch.from_numpy(np.asarray(start_actions, np.float32)).to(device)[None]
    all_actions = torch.from_numpy(np.asarray(actions, np.float32)).to(device)
    g = torch.Generator(device=device).manual_seed(seed)
    out = []
    for i in range(len(actions)):
        x = sample_next_frame(teacher.denoiser, latents[:, -context:], acts[:, -context:], all_actions[i][None],
                              steps, attention=teacher.attention, generator=g,
                              context_sigma=context_sigma)  # [1, C, h, w]
        latents = torch.cat([latents[:, -context:], x[:, None]], dim=1)
        acts = torch.cat([acts[:, -context:], all_actions[i][None, None]], dim=1)
        out.append(codec.to_uint8(codec.decode(x))[0].cpu().numpy())
    return np.stack(out)


@dataclass
class ManyStepSampler:
    """The teacher sampled as ``rollout`` samples it, for the fidelity evaluator (``eval.fidelity``): B sessions,
    one after another, session i seeded ``seed + i``."""
    teacher: Teacher
    steps: int = 16  # Euler steps per frame
    context_sigma: float = 0.0  # the noise level the context frames are shown at (see ``rollout``)
    lookahead: int = 0  # frame by frame: no action is needed past the last frame

    def generate(self, start: np.ndarray, actions: np.ndarray, n: int, seed: int) -> np.ndarray:
        """``n`` frames uint8 [B, n, H, W, 3] after ``start`` [B, S, H, W, 3]; ``actions`` [B, >= S + n, A]: row t
        produced frame t of the session, start frames first."""
        S = start.shape[1]
        return np.stack([rollout(self.teacher, start[i], actions[i, S:S + n], self.steps, seed=seed + i,
                                 start_actions=actions[i, :S], context_sigma=self.context_sigma)
                         for i in range(len(start))])
