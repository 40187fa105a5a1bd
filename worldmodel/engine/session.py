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

from games.data.actions import ActionSpace
from games.data.errors import InputError
from worldmodel.nn.flow import Denoiser
from worldmodel.engine.kv_cache import cached_pass, start_cache

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
        self.start_frames: np.ndarray | None = None  # uint8 [K, S, H, W, 3]: starts stored in the checkpoint
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
        """A session over the world model in the checkpoint ``path`` (teacher or student), with the start frames
        it holds (a bundled model's ``start.frames``) as ``start_frames``."""
        from worldmodel.engine.sampler import load_teacher
        from games.data.actions import ActionSpace as Space
        from worldmodel.checkpoint import CheckpointError, load_checkpoint

        ckpt = load_checkpoint(path, device=device)  # read once: the model and the start frames
        model = load_teacher(ckpt, device=device)
        frame = model.metadata.get("frame", {})
        size = (frame["height"], frame["width"]) if "height" in frame else None
        session = cls(model.denoiser, model.codec, Space.from_dict(model.metadata["action_space"]), cfg, size)
        session.metadata = model.metadata
        start = ckpt.group("start.").get("frames")  # a bundled model's start frames
        if start is not None:
            if start.dtype != torch.uint8 or start.ndim != 5 or start.shape[-1] != 3:
                raise CheckpointError(f"{path}: start.frames should be uint8 [K, S, H, W, 3], "
                                      f"not {start.dtype} {tuple(start.shape)}")
            session.start_frames = start.cpu().numpy()
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
        cfg = self.cfg
        self.gen = torch.Generator(device=self.device).manual_seed(int(seed))
        sink = 0 if cfg.mode == "rolling_nosink" else cfg.sink
        latents = self.codec.encode(torch.from_numpy(frames).to(self.device))[None]  # [1, S, C, h, w]
        self.cache = start_cache(self.denoiser, latents, self.action_space.size, sink, cfg.recent)
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
        """One forward over the input frames attending to the cache (see ``cached_pass``); the steady-state
        pass runs compiled once ``compile`` has built it."""
        steady = reencode and x.shape[1] == self.cfg.window + 1
        net = self._tick_net if steady and self._tick_net is not None else self.denoiser
        return cached_pass(net, self.cache, x, sigma, actions, reencode)

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
