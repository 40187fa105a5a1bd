"""Streaming inference: ``WorldSession`` generates one frame per ``step(action)``, forever, in constant memory.

Modes (``EngineConfig.mode``), all in one engine so that they are compared on equal terms:

- ``rolling``: Rolling Forcing (Liu et al. 2025, Sec. 3.1). A **rolling window** of W frames at increasing noise
  levels is denoised jointly by one forward pass a tick (bidirectional inside the window), attending to the
  attention sink and the recent cache. The oldest frame leaves clean and is shown; its clean keys/values are
  computed (**clean re-encode**, a forward at level 0) and pushed into the cache; every other frame is re-noised
  from its prediction to the next lower level; a pure-noise frame carrying the action held now enters.
- ``rolling_nosink``: the same without the sink (ablation): the start frames only pass through the ring.
- ``framewise``: frame-by-frame autoregression (Self-Forcing style): each frame fully denoised in W steps before
  the next, strictly causal.
- ``teacher``: like ``framewise`` with ``teacher_steps`` steps (many-step sampling with the teacher).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from games.actions import ActionSpace
from games.errors import InputError
from worldmodel.flow import Denoiser
from worldmodel.kv_cache import KVCache

MODES = ("rolling", "rolling_nosink", "framewise", "teacher")


@dataclass
class EngineConfig:
    mode: str = "rolling"  # rolling | rolling_nosink | framewise | teacher
    window: int = 4  # W: frames in the rolling window = denoising steps per frame
    sink: int = 1  # S: first frames of a session kept in the cache forever
    recent: int = 4  # C: recent clean frames in the ring
    shift: float | None = None  # level shift (None = the checkpoint's schedule)
    teacher_steps: int = 16  # Euler steps per frame in teacher mode
    fuse_reencode: bool = True  # rolling: compute the emitted frame's clean keys/values in the next tick's pass
    compile: bool = False  # rolling + fused: torch.compile the fixed-shape tick at the first reset (not in a tick)


class WorldSession:
    """A playable world: ``reset(start_frames, seed)`` then ``step(action) -> frame`` every tick."""

    def __init__(self, denoiser: Denoiser, codec, action_space: ActionSpace, cfg: EngineConfig | None = None,
                 frame_size: tuple[int, int] | None = None):
        self.cfg = cfg = cfg or EngineConfig()
        if cfg.mode not in MODES:
            raise InputError(f"unknown engine mode {cfg.mode!r}; choose from {', '.join(MODES)}")
        if cfg.window < 1 or cfg.recent < 0 or cfg.sink < 0:
            raise InputError(f"need window >= 1, recent >= 0, sink >= 0; got {cfg}")
        self.denoiser, self.codec, self.action_space = denoiser.eval(), codec.eval(), action_space
        self.net = denoiser.net
        self.device = next(denoiser.parameters()).device
        self.frame_size = frame_size  # (H, W) of frames; None = whatever the first reset gets
        steps = cfg.teacher_steps if cfg.mode == "teacher" else cfg.window
        schedule = denoiser.schedule
        if cfg.shift is not None:
            schedule = type(schedule)(**{**schedule.to_dict(), "shift": cfg.shift})
        self.levels = schedule.levels(steps).tolist()  # steps + 1 levels, 1 -> 0
        self.ticks = 0
        self._tick_net = None  # the compiled steady-state pass (``compile``), built at the first reset
        self._decode = self._decode_uint8  # latent [1, 1, C, h, w] -> uint8 frames (compiled with the tick)

    @classmethod
    def from_checkpoint(cls, path, cfg: EngineConfig | None = None, device="cpu") -> "WorldSession":
        """A session over the world model in the checkpoint ``path`` (teacher or student)."""
        from worldmodel.sample import load_teacher
        from games.actions import ActionSpace as Space

        model = load_teacher(path, device=device)
        frame = model.metadata.get("frame", {})
        size = (frame["height"], frame["width"]) if "height" in frame else None
        session = cls(model.denoiser, model.codec, Space.from_dict(model.metadata["action_space"]), cfg, size)
        session.metadata = model.metadata
        return session

    # -- public API -------------------------------------------------------------------------------------------------
    @property
    def latency_ticks(self) -> int:
        """step() calls from the one that first carries an action to the one whose frame shows its effect."""
        return self.cfg.window if self.cfg.mode.startswith("rolling") else 1

    @property
    def compiled(self) -> bool:
        """Whether the steady-state tick has been compiled (``compile``: at the first reset)."""
        return self._tick_net is not None

    @torch.no_grad()
    def reset(self, start_frames, seed: int = 0) -> np.ndarray:
        """Start a session from real frames (uint8 [H, W, 3] or [S, H, W, 3]); returns the last of them."""
        frames = self._check_frames(start_frames)
        cfg, net = self.cfg, self.net
        self.gen = torch.Generator(device=self.device).manual_seed(int(seed))
        heads, dim = net.cfg.heads, net.cfg.dim
        sink = 0 if cfg.mode == "rolling_nosink" else cfg.sink
        self.cache = KVCache(net.cfg.depth, heads, dim // heads, net.cfg.tokens_per_frame, sink,
                             max(cfg.recent, 1 if sink == 0 else 0), device=self.device)
        latents = self.codec.encode(torch.from_numpy(frames).to(self.device))[None]  # [1, S, C, h, w]
        noop = torch.zeros(1, latents.shape[1], self.action_space.size, device=self.device)
        sigma = torch.zeros(1, latents.shape[1], device=self.device)
        from worldmodel.attention import causal_mask

        _, kv = self.denoiser(latents, sigma, noop, frame_mask=causal_mask(latents.shape[1], self.device),
                              return_kv=True)
        self.cache.push(kv, latents)
        self.window: list[dict] = []  # oldest first: {"x": latent at its level, "level": index, "action": [A]}
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None  # emitted, not yet re-encoded (fused)
        self.ticks = 0
        self.last_frame = frames[-1]
        if cfg.mode.startswith("rolling"):
            self._warm_up()
            if cfg.compile and cfg.fuse_reencode and self._tick_net is None:
                self._compile_tick()
        return self.last_frame

    def _decode_uint8(self, latent: torch.Tensor) -> torch.Tensor:
        return self.codec.to_uint8(self.codec.decode(latent))

    def _compile_tick(self) -> None:
        """Compile the steady-state pass (emitted frame + window, every cache slot) and run it once on dummy
        inputs, so that compilation happens now and never inside a tick. The session's state is not touched."""
        self._tick_net = torch.compile(self.denoiser, dynamic=False)
        self._decode = torch.compile(self._decode_uint8, dynamic=False)
        T = self.cfg.window + 1
        c = self.net.cfg
        x = torch.zeros(1, T, c.channels, c.height, c.width, device=self.device)
        self._decode(x[:, :1])
        sigma = torch.zeros(1, T, device=self.device)
        actions = torch.zeros(1, T, self.action_space.size, device=self.device)
        saved = self.pending, self.cache.last_clean
        self.pending = None
        self._pass(x, sigma, actions, reencode=True)
        self.pending, self.cache.last_clean = saved

    @torch.no_grad()
    def step(self, action) -> np.ndarray:
        """Advance one tick holding ``action``; returns the newest clean frame, uint8 [H, W, 3]."""
        action = torch.from_numpy(self.action_space.validate(action)).to(self.device)
        if self.cfg.mode.startswith("rolling"):
            latent = self._rolling_tick(action)
        else:
            latent = self._denoise_one_frame(action, self.levels)
        self.ticks += 1
        self.last_frame = self._decode(latent)[0, 0].cpu().numpy()
        return self.last_frame

    # -- Rolling Forcing --------------------------------------------------------------------------------------------
    def _new_noise(self) -> torch.Tensor:
        C, h, w = self.net.cfg.channels, self.net.cfg.height, self.net.cfg.width
        return torch.randn(1, 1, C, h, w, generator=self.gen, device=self.device)

    def _warm_up(self) -> None:
        """Fill the window with W-1 frames (holding no key) so that every step() emits a frame at once."""
        noop = torch.zeros(self.action_space.size, device=self.device)
        for _ in range(self.cfg.window - 1):
            self.window.append({"x": self._new_noise(), "level": 0, "action": noop})
            self._window_pass(emit=False)

    def _window_pass(self, emit: bool):
        """One joint forward over the window; the oldest frame is emitted if ``emit``; the rest move down a level."""
        x = torch.cat([f["x"] for f in self.window], dim=1)  # [1, W, C, h, w]
        sigma = torch.tensor([[self.levels[f["level"]] for f in self.window]], device=self.device)
        actions = torch.stack([f["action"] for f in self.window])[None]  # [1, W, A]
        if self.pending is not None:  # the last emitted frame's clean re-encode rides in front of the window
            latent, act = self.pending
            self.pending = None
            zero = torch.zeros(1, 1, device=self.device)
            x0, kv = self._pass(torch.cat([latent, x], 1), torch.cat([zero, sigma], 1), torch.cat([act, actions], 1),
                                reencode=True)
            self.cache.push(kv, latent)
            x0 = x0[:, 1:]
        else:
            x0 = self._pass(x, sigma, actions)  # [1, W, C, h, w]
        out = None
        if emit:
            out = x0[:, :1]
            if self.cfg.fuse_reencode:
                self.pending = (out, actions[:, :1])
            else:
                self._push_clean(out, actions[:, :1])
            self.window.pop(0)
            x0 = x0[:, 1:]
        for i, f in enumerate(self.window):  # re-noise each prediction to its next lower level, fresh noise
            f["level"] += 1
            s = self.levels[f["level"]]
            f["x"] = (1 - s) * x0[:, i:i + 1] + s * self._new_noise()
        return out

    def _rolling_tick(self, action: torch.Tensor) -> torch.Tensor:
        self.window.append({"x": self._new_noise(), "level": 0, "action": action})
        return self._window_pass(emit=len(self.window) >= self.cfg.window)

    # -- frame by frame -------------------------------------------------------------------------------------------
    def _denoise_one_frame(self, action: torch.Tensor, levels: list[float]) -> torch.Tensor:
        x = self._new_noise()
        actions = action[None, None]
        for s, s_next in zip(levels[:-1], levels[1:]):
            x0 = self._pass(x, torch.full((1, 1), s, device=self.device), actions)
            x = (1 - s_next) * x0 + s_next * self._new_noise() if s_next > 0 else x0
        self._push_clean(x, actions)
        return x

    # -- shared -----------------------------------------------------------------------------------------------------
    def _pass(self, x, sigma, actions, reencode: bool = False):
        """One forward over input frames x [1, T, C, h, w] (levels sigma [1, T], actions [1, T, A]) attending to
        the cache and, bidirectionally, to each other; returns clean-frame predictions [1, T, C, h, w].

        With ``reencode``, x[:, 0] is a finished clean frame whose keys/values the caller pushes into the cache
        (also returned): it attends only to the cache and itself, and this pass already sees the cache as it
        will be after that push, without the frame the push evicts. A frame's clean re-encode thus sees the sink
        and the C-1 newest recent frames, whether it runs alone or fused in front of the next window.

        Every pass sees every cache slot, masked, so the steady-state tick has one fixed shape (``compile``).
        """
        context, seen, n_ctx = self.cache.context(without_evicted=reencode)
        T, slots = x.shape[1], seen.numel()
        mask = torch.ones(T, slots + T, dtype=torch.bool, device=self.device)
        mask[:, :slots] = seen
        if reencode:
            mask[0, slots + 1:] = False
        prev = torch.cat([self.cache.last_clean, x[:, :-1]], dim=1)
        prev_sigma = torch.cat([torch.zeros(1, 1, device=self.device), sigma[:, :-1]], dim=1)
        steady = reencode and T == self.cfg.window + 1
        net = self._tick_net if steady and self._tick_net is not None else self.denoiser
        return net(x, sigma, actions, prev=prev, prev_sigma=prev_sigma,
                   frame_pos=torch.arange(n_ctx, n_ctx + T, device=self.device), frame_mask=mask, context=context,
                   return_kv=reencode)

    def _push_clean(self, latent: torch.Tensor, actions: torch.Tensor) -> None:
        """Clean re-encode: keys/values of the finished frame at level 0, pushed into the cache."""
        _, kv = self._pass(latent, torch.zeros(1, 1, device=self.device), actions, reencode=True)
        self.cache.push(kv, latent)

    def _check_frames(self, frames) -> np.ndarray:
        arr = np.asarray(frames)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise InputError(f"start frames must be uint8 [H, W, 3] or [N, H, W, 3] RGB images, "
                             f"got {arr.dtype} array of shape {tuple(np.shape(frames))}")
        want = self.frame_size
        if want is not None and tuple(arr.shape[1:3]) != tuple(want):
            raise InputError(f"start frames are {arr.shape[2]}x{arr.shape[1]} but this model makes "
                             f"{want[1]}x{want[0]} frames")
        return np.ascontiguousarray(arr)
