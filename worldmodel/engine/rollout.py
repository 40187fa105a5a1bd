"""Batched streaming rollouts: the engine's tick for B sessions at once, with gradient through chosen ticks only.

Distillation trains the student on its **own** rollouts, generated exactly the way ``engine.WorldSession`` plays:
the same rolling window (or frame-by-frame loop), the same attention sink and ring of recent frames with
re-indexed positions, the same fused clean re-encode, the same order of noise draws (a test checks that one
rollout of batch 1 reproduces a session's frames). Evaluation uses it too, because it takes the action of every
frame explicitly (a session's first W-1 frames hold no key while the window fills).

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

from worldmodel.nn.flow import Denoiser
from worldmodel.engine.kv_cache import KVCache, cached_pass, start_cache

ROLLOUT_MODES = ("rolling", "rolling_nosink", "framewise")


def gradient_windows(n_frames: int, window: int, offset: int) -> list[tuple[int, int, int]]:
    """The ticks whose passes carry gradient for a rollout of ``n_frames`` emitted frames: a list of
    ``(tick, first frame, end frame)`` whose frame ranges ``[first, end)`` tile ``[0, n_frames)`` exactly once."""
    if not 0 <= offset < window:
        raise ValueError(f"offset must lie in [0, {window}), got {offset}")
    out = []
    for tick in range(offset, n_frames + window - 1, window):
        first, end = max(0, tick - window + 1), min(tick, n_frames - 1) + 1
        if first < end:
            out.append((tick, first, end))
    return out


@dataclass
class RolloutResult:
    frames: torch.Tensor  # [B, N, C, h, w] the emitted clean latents (detached)
    outputs: torch.Tensor | None  # [B, N, C, h, w] each frame's prediction in its gradient window (or None)
    levels: torch.Tensor | None  # [N] the level each output was predicted from


class Rollout:
    """Streams ``B`` sessions of a denoiser in lockstep, as ``WorldSession`` does one.

    ``levels``: the W + 1 decreasing noise levels (1 -> 0) of the window (frame by frame: of each frame's loop).
    """

    def __init__(self, denoiser: Denoiser, levels: list[float], mode: str = "rolling", sink: int = 1,
                 recent: int = 4):
        if mode not in ROLLOUT_MODES:
            raise ValueError(f"unknown rollout mode {mode!r}; choose from {', '.join(ROLLOUT_MODES)}")
        self.denoiser, self.levels, self.mode = denoiser, [float(s) for s in levels], mode
        self.window = len(levels) - 1
        self.sink, self.recent = (0 if mode == "rolling_nosink" else sink), recent

    @property
    def lookahead(self) -> int:
        """Frames entered after the last emitted one (their actions are needed; they are never emitted)."""
        return self.window - 1 if self.mode != "framewise" else 0

    def run(self, start: torch.Tensor, actions: torch.Tensor, n_frames: int, generator: torch.Generator,
            grad_offset: int | None = None) -> RolloutResult:
        """Generate ``n_frames`` frames after the clean start latents ``start`` [B, S, C, h, w].

        ``actions`` [B, n_frames + lookahead, A]: the action of each generated frame. ``grad_offset``: None for
        a rollout without gradient, else the offset of the gradient windows (see the module docstring).
        """
        B = start.shape[0]
        if actions.shape[1] < n_frames + self.lookahead:
            raise ValueError(f"need {n_frames + self.lookahead} actions, got {actions.shape[1]}")
        net = self.denoiser.net.cfg
        self.shape = (B, 1, net.channels, net.height, net.width)
        self.gen, self.device = generator, start.device
        cache = start_cache(self.denoiser, start, actions.shape[-1], self.sink, self.recent)
        grad = {} if grad_offset is None else {t: (a, b) for t, a, b in
                                                gradient_windows(n_frames, self.window, grad_offset)}
        if self.mode == "framewise":
            frames, outputs, levels = self._framewise(cache, actions, n_frames, grad)
        else:
            frames, outputs, levels = self._rolling(cache, actions, n_frames, grad)
        if grad_offset is None:
            return RolloutResult(torch.cat(frames, 1), None, None)
        return RolloutResult(torch.cat(frames, 1), torch.cat(outputs, 1), torch.tensor(levels))

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

    def _noise(self) -> torch.Tensor:
        return torch.randn(self.shape, generator=self.gen, device=self.device)

    def _sigma(self, level_indices: list[int]) -> torch.Tensor:
        row = torch.tensor([self.levels[i] for i in level_indices], device=self.device)
        return row[None].expand(self.shape[0], -1)

    def _rolling(self, cache: KVCache, actions, n_frames: int, grad: dict):
        W = self.window
        window: list[dict] = []  # oldest first: {"x", "level", "action", "frame"}
        pending = None  # the last emitted frame and its action, re-encoded in front of the next pass
        frames, outputs, out_levels = [], [], []
        for tick in range(n_frames + W - 1):
            window.append({"x": self._noise(), "level": 0, "action": actions[:, tick], "frame": tick})
            x = torch.cat([f["x"] for f in window], 1)
            sigma = self._sigma([f["level"] for f in window])
            acts = torch.stack([f["action"] for f in window], 1)
            with torch.set_grad_enabled(tick in grad and torch.is_grad_enabled()):
                if pending is not None:
                    latent, act = pending
                    zero = torch.zeros(x.shape[0], 1, device=self.device)
                    x0, kv = cached_pass(self.denoiser, cache, torch.cat([latent, x], 1),
                                         torch.cat([zero, sigma], 1), torch.cat([act, acts], 1), reencode=True)
                    cache.push(kv, latent)
                    x0 = x0[:, 1:]
                else:
                    x0 = cached_pass(self.denoiser, cache, x, sigma, acts)
            if tick in grad:
                first, end = grad[tick]
                for i, f in enumerate(window):
                    if first <= f["frame"] < end:
                        outputs.append(x0[:, i:i + 1])
                        out_levels.append(self.levels[f["level"]])
            x0 = x0.detach()
            if len(window) >= W:
                frames.append(x0[:, :1])
                pending = (x0[:, :1], acts[:, :1])
                window.pop(0)
                x0 = x0[:, 1:]
            for i, f in enumerate(window):  # re-noise each prediction to its next lower level, fresh noise
                f["level"] += 1
                s = self.levels[f["level"]]
                f["x"] = (1 - s) * x0[:, i:i + 1] + s * self._noise()
        return frames, outputs, out_levels

    def _framewise(self, cache: KVCache, actions, n_frames: int, grad: dict):
        W = self.window
        exit_step = {}  # frame -> the denoising step whose prediction carries gradient
        for tick, (first, end) in grad.items():
            for j in range(first, end):
                exit_step[j] = tick - j
        frames, outputs, out_levels = [], [], []
        for j in range(n_frames):
            x, act = self._noise(), actions[:, j:j + 1]
            for i in range(W):
                s, s_next = self.levels[i], self.levels[i + 1]
                with torch.set_grad_enabled(exit_step.get(j) == i and torch.is_grad_enabled()):
                    x0 = cached_pass(self.denoiser, cache, x, self._sigma([i]), act)
                if exit_step.get(j) == i:
                    outputs.append(x0)
                    out_levels.append(s)
                x0 = x0.detach()
                x = (1 - s_next) * x0 + s_next * self._noise() if s_next > 0 else x0
            with torch.no_grad():  # clean re-encode of the finished frame
                _, kv = cached_pass(self.denoiser, cache, x, self._sigma([W]), act, reencode=True)
            cache.push(kv, x)
            frames.append(x)
        return frames, outputs, out_levels
