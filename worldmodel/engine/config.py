"""How a session generates: the one list of modes and the engine settings, built from a checkpoint's own.

Modes, all run by the same engine so that they are compared on equal terms:

- ``rolling``: Rolling Forcing (Liu et al. 2025, Sec. 3.1): a rolling window of W frames at increasing noise
  levels, denoised jointly, one pass a tick (``window.RollingWindow.tick``). ``sink=0`` is the paper's ablation
  without the attention sink (the start frames only pass through the ring).
- ``framewise``: frame-by-frame autoregression (Self-Forcing style): each frame fully denoised in W steps before
  the next, strictly causal (``window.RollingWindow.denoise_frame``).
- ``teacher``: like ``framewise`` with ``teacher_steps`` steps (many-step sampling with the teacher).

A student plays as it was distilled: ``EngineConfig.for_model`` takes mode, window, sink and recent from the
checkpoint's metadata (``metadata.EngineSettings``) unless a caller overrides them.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from games.data.errors import InputError
from worldmodel.metadata import EngineSettings, ModelInfo

MODES = ("rolling", "framewise", "teacher")


@dataclass
class EngineConfig:
    mode: str = EngineSettings.mode  # rolling | framewise | teacher
    window: int = EngineSettings.window  # W: frames in the rolling window = denoising steps per frame
    sink: int = EngineSettings.sink  # S: first frames of a session kept in the cache forever (0: no sink)
    recent: int = EngineSettings.recent  # C: recent clean frames in the ring
    shift: float | None = None  # level shift (None = the checkpoint's schedule)
    teacher_steps: int = 16  # Euler steps per frame in teacher mode
    fuse_reencode: bool = True  # rolling: compute the emitted frame's clean keys/values in the next tick's pass
    compile: bool = False  # rolling + fused: torch.compile the fixed-shape tick at the first reset (not in a tick)
    background_compile: bool = False  # compile in a thread and tick eager until it is ready (no wait at reset)

    def __post_init__(self):
        if self.mode not in MODES:
            raise InputError(f"unknown engine mode {self.mode!r}; choose from {', '.join(MODES)} "
                             f"(no attention sink: sink=0)")
        if self.window < 1 or self.recent < 0 or self.sink < 0:
            raise InputError(f"need window >= 1, recent >= 0, sink >= 0; got window {self.window}, "
                             f"sink {self.sink}, recent {self.recent}")

    @property
    def rolling(self) -> bool:
        return self.mode == "rolling"

    @property
    def steps(self) -> int:
        """Network passes that finish one frame (the denoising steps a frame sees)."""
        return self.teacher_steps if self.mode == "teacher" else self.window

    @classmethod
    def for_model(cls, info: ModelInfo | None, **overrides) -> "EngineConfig":
        """The settings for the model ``info`` describes: those it was distilled with (a teacher: the defaults),
        then every override that is not None (``mode=None`` keeps the checkpoint's)."""
        settings = info.engine if info is not None and info.engine is not None else EngineSettings()
        base = {"mode": settings.mode, "window": settings.window, "sink": settings.sink, "recent": settings.recent}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown engine setting(s) {', '.join(unknown)}")
        return cls(**{**base, **{k: v for k, v in overrides.items() if v is not None}})
