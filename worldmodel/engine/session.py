"""The playable world: ``WorldSession`` generates one frame per ``step(action)``, forever, in constant memory.

A session owns the state of one player's world: the codec, the ``window.RollingWindow`` (KV cache with the
attention sink, the frames in the window, the noise) and, with ``compile``, the compiled steady-state pass. The
modes it runs (rolling, frame by frame, teacher) are listed in ``engine.config``; the tick itself lives in
``engine.window``, shared with distillation's batched rollouts.

Compiling the tick takes seconds (a minute on a cold machine). With ``background_compile`` the session does not wait
for it: it ticks eager from the first frame while a thread compiles and warms the pass on a cache of its own, and
``step`` switches to the compiled pass at the start of the first tick after it is ready. Both compute the same
function; their frames differ by float rounding only (``tests/test_engine.py`` measures it).
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import replace

import numpy as np
import torch

from games.data.actions import ActionSpace
from games.data.errors import InputError
from worldmodel.engine.config import EngineConfig
from worldmodel.engine.kv_cache import KVCache, cached_pass, start_cache
from worldmodel.engine.window import RollingWindow
from worldmodel.metadata import ModelInfo
from worldmodel.nn.flow import Denoiser

log = logging.getLogger("rollingworld.engine")

# Python's GIL switch interval while a background compile runs (default 5 ms). Measured on the bundled pong with a
# warm compile cache, the machine busy: eager ticks over 33 ms during the compile fell from 23 % to 4 % at 0.5 ms
# (p99 220 -> 48 ms); 0.1 ms did no better.
COMPILE_SWITCH_INTERVAL = 0.0005


class WorldSession:
    """A playable world: ``reset(start_frames, seed)`` then ``step(action) -> frame`` every tick."""

    def __init__(self, denoiser: Denoiser, codec, action_space: ActionSpace, cfg: EngineConfig | None = None,
                 frame_size: tuple[int, int] | None = None, info: ModelInfo | None = None):
        self.cfg = cfg = cfg or EngineConfig()
        self.denoiser, self.codec, self.action_space = denoiser.eval(), codec.eval(), action_space
        self.net = denoiser.net
        self.device = next(denoiser.parameters()).device
        self.frame_size = frame_size  # (H, W) of frames; None = whatever the first reset gets
        self.info = info  # what the checkpoint says of the model (game, fps, ...); None: built by hand
        self.start_frames: np.ndarray | None = None  # uint8 [K, S, H, W, 3]: starts stored in the checkpoint
        schedule = denoiser.schedule if cfg.shift is None else replace(denoiser.schedule, shift=cfg.shift)
        self.levels = schedule.levels(cfg.steps).tolist()  # steps + 1 levels, 1 -> 0
        self.ticks = 0
        self._tick_net = None  # the compiled steady-state pass (``compile``), built at the first reset
        self._decode = self._decode_uint8  # latent [1, 1, C, h, w] -> uint8 frames (compiled with the tick)
        self._compiler: threading.Thread | None = None  # the background compile, while it runs
        self._ready = None  # (tick net, decode) compiled and warmed, waiting for the next tick boundary
        self.compile_seconds: float | None = None  # how long compiling took, once it is done
        self.compile_error: str | None = None  # why compiling failed (the session stays eager)
        self.hold_eager = False  # keep ticking eager even once compiled (replay switches at the recorded tick)

    @classmethod
    def from_checkpoint(cls, path, cfg: EngineConfig | None = None, device="cpu") -> "WorldSession":
        """A session over the world model in the checkpoint ``path`` (teacher or student), with the start frames
        it holds (a bundled model's ``start.frames``) as ``start_frames``."""
        from worldmodel.checkpoint import CheckpointError, load_checkpoint
        from worldmodel.engine.sampler import load_teacher

        ckpt = load_checkpoint(path, device=device)  # read once: the model and the start frames
        model = load_teacher(ckpt, device=device)
        info = model.info
        session = cls(model.denoiser, model.codec, info.action_space, cfg, info.frame_size, info)
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
        return self.cfg.window if self.cfg.rolling else 1

    @property
    def compiled(self) -> bool:
        """Whether ticks now run the compiled steady-state pass (``compile``)."""
        return self._tick_net is not None

    @property
    def compiling(self) -> bool:
        """Whether the tick is being compiled in the background (ticks run eager meanwhile)."""
        return self._compiler is not None and self._compiler.is_alive()

    def wait_compiled(self, timeout: float | None = None) -> bool:
        """Block until a background compile has finished (then switch to it); whether ticks now run compiled."""
        if self._compiler is not None:
            self._compiler.join(timeout)
        self._switch()
        return self.compiled

    @torch.no_grad()
    def reset(self, start_frames, seed: int = 0) -> np.ndarray:
        """Start a session from real frames (uint8 [H, W, 3] or [S, H, W, 3]); returns the last of them."""
        frames = self._check_frames(start_frames)
        cfg = self.cfg
        latents = self.codec.encode(torch.from_numpy(frames).to(self.device))[None]  # [1, S, C, h, w]
        cache = start_cache(self.denoiser, latents, self.action_space.size, cfg.sink, cfg.recent)
        c = self.net.cfg
        self.window = RollingWindow(self.denoiser, cache, self.levels, (c.channels, c.height, c.width),
                                    torch.Generator(device=self.device).manual_seed(int(seed)),
                                    cfg.fuse_reencode, run_pass=self._pass)
        self.ticks = 0
        self.last_frame = frames[-1]
        if cfg.rolling:
            noop = torch.zeros(1, self.action_space.size, device=self.device)
            for _ in range(cfg.window - 1):  # fill the window (holding no key): every step() then emits a frame
                self.window.tick(noop)
            if cfg.compile and cfg.fuse_reencode and self._tick_net is None and self._compiler is None:
                if cfg.background_compile:
                    self._compiler = threading.Thread(target=self._compile_tick, args=(torch.get_num_threads(),),
                                                      name="rollingworld-compile", daemon=True)
                    self._compiler.start()
                else:
                    self._compile_tick(torch.get_num_threads())
                    self._switch()
        return self.last_frame

    @property
    def cache(self):
        return self.window.cache

    def _decode_uint8(self, latent: torch.Tensor) -> torch.Tensor:
        return self.codec.to_uint8(self.codec.decode(latent))

    def _compile_tick(self, threads: int) -> None:
        """Compile the steady-state pass (emitted frame + window, every cache slot) and the decode, and run them
        once on zeros and on a cache of the session's shapes but its own, so that compiling happens here and
        never inside a tick; the session's state is not touched, so this may run in another thread. The result
        waits in ``_ready`` for ``_switch``. A failure leaves the session eager, with ``compile_error`` set."""
        began = time.perf_counter()
        background = threading.current_thread() is not threading.main_thread()
        switch_interval = sys.getswitchinterval()
        if background:  # the compiler is Python-heavy: hand the GIL back to the ticking thread 10x sooner
            sys.setswitchinterval(COMPILE_SWITCH_INTERVAL)
        try:
            torch.set_num_threads(threads)  # per thread in OpenMP; compiled kernels keep the count they see here
            with torch.no_grad():  # grad mode is per thread too: compile for the mode ticks run in
                net = torch.compile(self.denoiser, dynamic=False)
                decode = torch.compile(self._decode_uint8, dynamic=False)
                T = self.cfg.window + 1
                c = self.net.cfg
                x = torch.zeros(1, T, c.channels, c.height, c.width, device=self.device)
                decode(x[:, :1])
                cache = self.window.cache
                dummy = KVCache(cache.k.shape[0], cache.k.shape[2], cache.k.shape[4], cache.n_tokens,
                                cache.sink_capacity, cache.recent_capacity, self.device, cache.k.dtype)
                dummy.last_clean = torch.zeros_like(x[:, :1])
                sigma = torch.zeros(1, T, device=self.device)
                actions = torch.zeros(1, T, self.action_space.size, device=self.device)
                cached_pass(net, dummy, x, sigma, actions, reencode=True)
            self._ready = (net, decode)
        except Exception as e:  # noqa: BLE001 - any failure of the compiler: play on, eager
            self.compile_error = f"{type(e).__name__}: {e}".splitlines()[0]
            log.warning("compiling the tick failed, the session stays eager: %s", self.compile_error)
        finally:
            if background:
                sys.setswitchinterval(switch_interval)
        self.compile_seconds = time.perf_counter() - began

    def _switch(self) -> None:
        """Take the compiled pass into use if it is ready and not held back (called between ticks only)."""
        if self._ready is not None and not self.hold_eager:
            self._tick_net, self._decode = self._ready
            self._ready = None
            self._compiler = None

    @torch.no_grad()
    def step(self, action) -> np.ndarray:
        """Advance one tick holding ``action``; returns the newest clean frame, uint8 [H, W, 3]."""
        action = torch.from_numpy(self.action_space.validate(action)).to(self.device)[None]  # [1, A]
        if self._ready is not None:
            self._switch()  # between ticks: the compiled pass, unless held eager
        if self.cfg.rolling:
            latent, _ = self.window.tick(action)
        else:
            latent, _ = self.window.denoise_frame(action)
        self.ticks += 1
        self.last_frame = self._decode(latent)[0, 0].cpu().numpy()
        return self.last_frame

    def _pass(self, x, sigma, actions, reencode: bool = False):
        """One forward over the input frames attending to the cache (see ``cached_pass``); the steady-state
        pass runs compiled once ``compile`` has built it."""
        steady = reencode and x.shape[1] == self.cfg.window + 1
        net = self._tick_net if steady and self._tick_net is not None else self.denoiser
        return cached_pass(net, self.cache, x, sigma, actions, reencode)

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
