"""Batched streaming rollouts: the engine's tick for B sessions at once, with gradient through chosen ticks only.

Distillation trains the student on its **own** rollouts, made by the very tick ``WorldSession`` plays with
(``window.RollingWindow``, here with batch B): the same rolling window (or frame-by-frame loop), attention sink,
ring of recent frames with re-indexed positions, fused clean re-encode and order of noise draws. Evaluation uses
it too, because it takes the action of every frame explicitly (a session's first W-1 frames hold no key while the
window fills).

Gradient windows (Rolling Forcing, Sec. 3.3): with an ``offset`` in [0, W), the passes of ticks
``offset, offset + W, offset + 2W, ...`` run with gradient and every other pass without. The window of tick
``k`` holds frames ``k-W+1 .. k``, so these windows do not overlap and tile the rollout's frames exactly once;
frame ``j`` contributes the clean prediction it got in its window, at level index ``k - j``. Frame by frame, the
same offsets pick for each frame the denoising step (level index ``k - j``) whose prediction carries gradient:
Self-Forcing's random exit step. Everything stored for later ticks (cache, re-noised window frames) is detached.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from worldmodel.engine.kv_cache import start_cache
from worldmodel.engine.window import RollingWindow
from worldmodel.nn.flow import Denoiser


def gradient_windows(n_frames: int, window: int, offset: int, first_frame: int = 0) -> list[tuple[int, int, int]]:
    """The ticks whose passes carry gradient for a rollout of ``n_frames`` emitted frames: a list of
    ``(tick, first frame, end frame)`` whose frame ranges ``[first, end)`` tile ``[first_frame, n_frames)`` exactly
    once (the frames before ``first_frame``, a prefix generated without gradient, get none)."""
    if not 0 <= offset < window:
        raise ValueError(f"offset must lie in [0, {window}), got {offset}")
    if not 0 <= first_frame < n_frames:
        raise ValueError(f"first_frame must lie in [0, {n_frames}), got {first_frame}")
    out = []
    for tick in range(first_frame + offset, n_frames + window - 1, window):
        first, end = max(first_frame, tick - window + 1), min(tick, n_frames - 1) + 1
        if first < end:
            out.append((tick, first, end))
    return out


@dataclass
class RolloutResult:
    frames: torch.Tensor  # [B, N, C, h, w] the emitted clean latents (detached)
    outputs: torch.Tensor | None  # [B, N - F, C, h, w] the prediction of each frame from F = grad_from on, in
    #                               its gradient window (or None)
    levels: torch.Tensor | None  # [N - F] the level each output was predicted from


class Rollout:
    """Streams ``B`` sessions of a denoiser in lockstep, as ``WorldSession`` does one.

    ``levels``: the W + 1 decreasing noise levels (1 -> 0) of the window (frame by frame: of each frame's loop).
    """

    def __init__(self, denoiser: Denoiser, levels: list[float], mode: str = "rolling", sink: int = 1,
                 recent: int = 4):
        if mode not in ("rolling", "framewise"):  # teacher sampling is framewise with the teacher's levels
            raise ValueError(f"unknown rollout mode {mode!r}; choose from rolling, framewise")
        self.denoiser, self.levels, self.mode = denoiser, [float(s) for s in levels], mode
        self.window = len(levels) - 1
        self.sink, self.recent = sink, recent

    @property
    def lookahead(self) -> int:
        """Frames entered after the last emitted one (their actions are needed; they are never emitted)."""
        return self.window - 1 if self.mode != "framewise" else 0

    def run(self, start: torch.Tensor, actions: torch.Tensor, n_frames: int, generator: torch.Generator,
            grad_offset: int | None = None, grad_from: int = 0) -> RolloutResult:
        """Generate ``n_frames`` frames after the clean start latents ``start`` [B, S, C, h, w].

        ``actions`` [B, n_frames + lookahead, A]: the action of each generated frame. ``grad_offset``: None for
        a rollout without gradient, else the offset of the gradient windows (see the module docstring), which
        cover frames ``grad_from`` on: the frames before are a prefix generated without gradient, so that the
        graded frames follow a long self-generated history (the official ``start_gradient_frame_index``).
        """
        if actions.shape[1] < n_frames + self.lookahead:
            raise ValueError(f"need {n_frames + self.lookahead} actions, got {actions.shape[1]}")
        net = self.denoiser.net.cfg
        cache = start_cache(self.denoiser, start, actions.shape[-1], self.sink, self.recent)
        window = RollingWindow(self.denoiser, cache, self.levels, (net.channels, net.height, net.width), generator)
        grad = {} if grad_offset is None else {t: (a, b) for t, a, b in
                                                gradient_windows(n_frames, self.window, grad_offset, grad_from)}
        frames, graded = [], []
        if self.mode == "framewise":
            exit_step = {j: tick - j for tick, (first, end) in grad.items() for j in range(first, end)}
            for j in range(n_frames):
                latent, out = window.denoise_frame(actions[:, j], exit_step.get(j))
                frames.append(latent)
                graded += out
        else:
            for tick in range(n_frames + self.window - 1):
                latent, out = window.tick(actions[:, tick], grad.get(tick))
                if latent is not None:
                    frames.append(latent)
                graded += out
        if grad_offset is None:
            return RolloutResult(torch.cat(frames, 1), None, None)
        return RolloutResult(torch.cat(frames, 1), torch.cat([x for x, _ in graded], 1),
                             torch.tensor([s for _, s in graded]))

    @torch.no_grad()
    def generate_uint8(self, codec, start_frames: np.ndarray, actions: np.ndarray, n_frames: int,
                       seed: int = 0) -> np.ndarray:
        """``n_frames`` frames uint8 [N, H, W, 3] after the real ``start_frames`` [S, H, W, 3] of one session,
        ``actions`` [n_frames + lookahead, A] (each frame's action), decoded in pieces (long sessions)."""
        device = next(self.denoiser.parameters()).device
        start = codec.encode(torch.from_numpy(start_frames).to(device))[None]
        acts = torch.from_numpy(np.asarray(actions[:n_frames + self.lookahead], np.float32)).to(device)[None]
        frames = self.run(start, acts, n_frames, torch.Generator(device=device).manual_seed(seed)).frames
        return np.concatenate([codec.to_uint8(codec.decode(frames[:, i:i + 256]))[0].cpu().numpy()
                               for i in range(0, n_frames, 256)])
