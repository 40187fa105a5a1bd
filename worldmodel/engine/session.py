"""The playable world: ``WorldSession`` generates one frame per ``step(action)``, forever, in constant memory.

A session owns the state of one player's world: the codec, the ``window.RollingWindow`` (KV cache with the
attention sink, the frames in the window, the noise) and, with ``compile``, the compiled steady-state pass. The
modes it runs (rolling, frame by frame, teacher) are listed in ``engine.config``; the tick itself lives in
``engine.window``, shared with distillation's batched rollouts.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from games.data.actions import ActionSpace
from games.data.errors import InputError
from worldmodel.engine.config import EngineConfig
from worldmodel.engine.kv_cache import cached_pass, start_cache
from worldmodel.engine.window import RollingWindow
from worldmodel.metadata import ModelInfo
from worldmodel.nn.flow import Denoiser


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
        """Whether the steady-state tick has been compiled (``compile``: at the first reset)."""
        return self._tick_net is not None

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
            if cfg.compile and cfg.fuse_reencode and self._tick_net is None:
                self._compile_tick()
        return self.last_frame

    @property
    def cache(self):
        return self.window.cache

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
        saved = self.cache.last_clean
        self._pass(x, sigma, actions, reencode=True)
        self.cache.last_clean = saved

    @torch.no_grad()
    def step(self, action) -> np.ndarray:
        """Advance one tick holding ``action``; returns the newest clean frame, uint8 [H, W, 3]."""
        action = torch.from_numpy(self.action_space.validate(action)).to(self.device)[None]  # [1, A]
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
