"""The one tick of streaming generation, shared by play (batch 1) and distillation (batch B, gradient windows).

``RollingWindow`` holds what moves from tick to tick for B sessions in lockstep: the KV cache (attention sink +
ring of recent clean frames, ``kv_cache.KVCache``), the frames in the window at their noise levels, the frame
emitted last tick awaiting its clean re-encode, and the generator of every noise draw. ``WorldSession`` calls it
with batch 1 under ``no_grad``; ``Rollout`` calls it with batch B and names the ticks whose pass carries gradient.
Because both call this one function, a student trains on exactly the passes, cache and noise order it plays with.

- ``tick``: Rolling Forcing (Liu et al. 2025, Sec. 3.1). A pure-noise frame carrying the action held now enters
  the **rolling window**; one forward pass denoises the W window frames jointly (bidirectional inside the
  window), attending to the sink and recent cache. The oldest frame leaves clean (emitted); its **clean
  re-encode** (keys/values at level 0, pushed into the cache) rides in front of the next tick's pass (fused) or
  runs at once; every other frame is re-noised from its prediction to the next lower level with fresh noise.
- ``denoise_frame``: frame-by-frame autoregression (Self-Forcing style): one frame fully denoised through all
  the levels before the next, strictly causal, then clean re-encoded.
"""
from __future__ import annotations

from typing import Callable

import torch

from worldmodel.engine.kv_cache import KVCache, cached_pass

# (x, sigma, actions, reencode) -> x0, or (x0, kv) with reencode: one cached forward (``kv_cache.cached_pass``)
PassFn = Callable[..., object]


class RollingWindow:
    """The window of ``len(levels) - 1`` frames, the cache and the noise of B sessions (see the module docstring).

    ``levels``: the W + 1 decreasing noise levels (1 -> 0): a window frame at level index i is at ``levels[i]``.
    ``frame_shape``: (C, h, w) of a latent frame. ``run_pass`` replaces the plain cached forward (the session's
    compiled steady-state pass); it must compute the same thing.
    """

    def __init__(self, denoiser, cache: KVCache, levels: list[float], frame_shape: tuple[int, int, int],
                 generator: torch.Generator, fuse_reencode: bool = True, run_pass: PassFn | None = None):
        self.denoiser, self.cache, self.levels = denoiser, cache, [float(s) for s in levels]
        self.size = len(self.levels) - 1  # W
        self.batch = cache.k.shape[1]
        self.device = cache.k.device
        self.shape = (self.batch, 1, *frame_shape)
        self.gen, self.fuse_reencode = generator, fuse_reencode
        self.run_pass = run_pass or (lambda x, sigma, actions, reencode=False:
                                     cached_pass(denoiser, cache, x, sigma, actions, reencode))
        self.frames: list[dict] = []  # oldest first: {"x": latent at its level, "level": index, "action": [B, A],
        #                                              "index": the frame's number since the start}
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None  # emitted, not yet re-encoded (fused)
        self.entered = 0  # frames entered so far

    def noise(self) -> torch.Tensor:
        return torch.randn(self.shape, generator=self.gen, device=self.device)  # [B, 1, C, h, w]

    def _sigma(self, levels: list[float]) -> torch.Tensor:
        return torch.tensor([levels] * self.batch, device=self.device)  # [B, T]

    # -- Rolling Forcing ------------------------------------------------------------------------------------------
    def tick(self, action: torch.Tensor, grad_frames: tuple[int, int] | None = None):
        """Enter a noise frame holding ``action`` [B, A] and run the window's pass; once the window is full its
        oldest frame is emitted. Returns (emitted clean latent [B, 1, C, h, w] or None, graded) where ``graded``
        lists (clean prediction with gradient, its level) of the window frames numbered in ``[first, end)`` =
        ``grad_frames``: only then does the pass carry gradient (Sec. 3.3, non-overlapping gradient windows).
        Everything kept for later ticks (cache, re-noised frames) is detached."""
        self.frames.append({"x": self.noise(), "level": 0, "action": action, "index": self.entered})
        self.entered += 1
        x = torch.cat([f["x"] for f in self.frames], 1)  # [B, n, C, h, w], n <= W
        sigma = self._sigma([self.levels[f["level"]] for f in self.frames])
        actions = torch.stack([f["action"] for f in self.frames], 1)  # [B, n, A]
        with torch.set_grad_enabled(grad_frames is not None and torch.is_grad_enabled()):
            if self.pending is not None:  # the last emitted frame's clean re-encode rides in front of the window
                latent, act = self.pending
                self.pending = None
                zero = torch.zeros(self.batch, 1, device=self.device)
                x0, kv = self.run_pass(torch.cat([latent, x], 1), torch.cat([zero, sigma], 1),
                                       torch.cat([act, actions], 1), reencode=True)
                self.cache.push(kv, latent)
                x0 = x0[:, 1:]
            else:
                x0 = self.run_pass(x, sigma, actions)  # [B, n, C, h, w]
        graded = []
        if grad_frames is not None:
            first, end = grad_frames
            graded = [(x0[:, i:i + 1], self.levels[f["level"]]) for i, f in enumerate(self.frames)
                      if first <= f["index"] < end]
        x0 = x0.detach()
        out = None
        if len(self.frames) == self.size:
            out = x0[:, :1]
            if self.fuse_reencode:
                self.pending = (out, actions[:, :1])
            else:
                self.push_clean(out, actions[:, :1])
            self.frames.pop(0)
            x0 = x0[:, 1:]
        for i, f in enumerate(self.frames):  # re-noise each prediction to its next lower level, fresh noise
            f["level"] += 1
            s = self.levels[f["level"]]
            f["x"] = (1 - s) * x0[:, i:i + 1] + s * self.noise()
        return out, graded

    # -- frame by frame -------------------------------------------------------------------------------------------
    def denoise_frame(self, action: torch.Tensor, exit_step: int | None = None):
        """One frame holding ``action`` [B, A], denoised through every level, then clean re-encoded. Returns (the
        clean latent [B, 1, C, h, w], graded): with ``exit_step`` = i, the prediction of step i carries gradient
        (Self-Forcing's random exit step) and is returned with its level."""
        x, act = self.noise(), action[:, None]
        graded = []
        for i, (s, s_next) in enumerate(zip(self.levels[:-1], self.levels[1:])):
            with torch.set_grad_enabled(exit_step == i and torch.is_grad_enabled()):
                x0 = self.run_pass(x, self._sigma([s]), act)
            if exit_step == i:
                graded.append((x0, s))
            x0 = x0.detach()
            x = (1 - s_next) * x0 + s_next * self.noise() if s_next > 0 else x0
        self.push_clean(x, act)
        self.entered += 1
        return x, graded

    @torch.no_grad()
    def push_clean(self, latent: torch.Tensor, actions: torch.Tensor) -> None:
        """Clean re-encode: keys/values of the finished frames at level 0, pushed into the cache."""
        _, kv = self.run_pass(latent, torch.zeros(self.batch, 1, device=self.device), actions, reencode=True)
        self.cache.push(kv, latent)
