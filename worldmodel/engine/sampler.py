"""Many-step sampling with the teacher: the quality reference that the distilled student is measured against.

``rollout`` generates frames autoregressively from real start frames and a recorded action sequence, each frame
denoised with ``steps`` Euler steps given the last ``context`` generated (or start) frames. ``teacher_forced``
predicts every frame from the *real* frames before it. Both work in the codec's latent space and return uint8.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from worldmodel.checkpoint import Checkpoint, check_action_space, load_checkpoint
from worldmodel.nn.codec import make_codec
from worldmodel.nn.flow import Denoiser, NoiseSchedule, sample_next_frame
from worldmodel.nn.dit import DiT, DiTConfig


@dataclass
class Teacher:
    """A loaded teacher checkpoint: the EMA denoiser, its codec and its metadata."""
    denoiser: Denoiser
    codec: torch.nn.Module
    metadata: dict

    @property
    def attention(self) -> str:
        return self.metadata.get("attention", "causal")

    @property
    def clip_len(self) -> int:
        return int(self.metadata["provenance"].get("train_config", {}).get("clip_len", 8))


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


@torch.no_grad()
def teacher_forced(teacher: Teacher, frames: np.ndarray, causing_actions: np.ndarray, first: int,
                   steps: int = 16, context: int | None = None, seed: int = 0) -> np.ndarray:
    """Predict frames[first:] each from the real frames before it. ``causing_actions[t]`` produced frame t.

    Returns uint8 [len(frames) - first, H, W, 3].
    """
    device = next(teacher.denoiser.parameters()).device
    context = context or teacher.clip_len - 1
    codec = teacher.codec
    latents = codec.encode(torch.from_numpy(frames).to(device))[None]  # [1, T, C, h, w]
    acts = torch.from_numpy(np.asarray(causing_actions, np.float32)).to(device)[None]
    g = torch.Generator(device=device).manual_seed(seed)
    out = []
    for t in range(first, len(frames)):
        lo = max(0, t - context)
        x = sample_next_frame(teacher.denoiser, latents[:, lo:t], acts[:, lo:t], acts[:, t], steps,
                              attention=teacher.attention, generator=g)
        out.append(codec.to_uint8(codec.decode(x))[0].cpu().numpy())
    return np.stack(out)


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between uint8 images (data range 255)."""
    return pooled_psnr([mse(a, b)])


def pooled_psnr(mses) -> float:
    """PSNR of the mean squared error over samples (finite even when some samples are exact copies)."""
    m = float(np.mean(mses))
    return float("inf") if m == 0 else float(10 * np.log10(255.0 ** 2 / m))


def fidelity(teacher: Teacher, recording, episodes, horizons=(1, 4, 16), starts: int = 2, steps: int = 16,
             seed: int = 0, context_sigma: float = 0.0) -> dict:
    """Teacher-forced next-frame PSNR and autoregressive PSNR by horizon on ``episodes`` of ``recording``,
    next to the two trivial baselines (repeat the last real frame; the mean frame), on the same frames.
    Every figure is the PSNR of the mean squared error over all samples (pooled)."""
    rng = np.random.default_rng(seed)
    H = max(horizons)
    ctx = teacher.clip_len - 1
    tf, tf_repeat, ar = [], [], {h: [] for h in horizons}
    ar_repeat, ar_mean = {h: [] for h in horizons}, {h: [] for h in horizons}
    for ep in episodes:
        ep = recording[ep]
        if ep.length < ctx + H + 2:
            continue
        frames, actions = ep.frames(), ep.actions()
        mean_frame = frames.mean(axis=0).round().astype(np.uint8)
        for _ in range(starts):
            s = int(rng.integers(ctx + 1, ep.length - H))
            causing = np.concatenate([np.zeros_like(actions[:1]), actions[:-1]])  # causing[t] produced frame t
            pred = teacher_forced(teacher, frames[s - ctx:s + 1], causing[s - ctx:s + 1], first=ctx, steps=steps,
                                  seed=seed)
            tf.append(mse(pred[0], frames[s]))
            tf_repeat.append(mse(frames[s - 1], frames[s]))
            gen = rollout(teacher, frames[s - ctx:s], causing[s:s + H], steps=steps, seed=seed,
                          start_actions=causing[s - ctx:s], context_sigma=context_sigma)
            for h in horizons:
                truth = frames[s + h - 1]
                ar[h].append(mse(gen[h - 1], truth))
                ar_repeat[h].append(mse(frames[s - 1], truth))
                ar_mean[h].append(mse(mean_frame, truth))
    if not tf:
        raise ValueError("no episode long enough for these horizons")
    p = pooled_psnr
    return {"samples": len(tf), "steps": steps, "teacher_forced": p(tf), "teacher_forced_repeat_last": p(tf_repeat),
            "autoregressive": {h: p(ar[h]) for h in horizons},
            "repeat_last": {h: p(ar_repeat[h]) for h in horizons},
            "mean_frame": {h: p(ar_mean[h]) for h in horizons}}
