"""``rollingworld replay session=FILE.jsonl``: regenerate a recorded session and check it frame for frame.

The sidecar's header (``runtime.session_record``) rebuilds the session exactly: the same checkpoint (verified by
its sha256), engine settings, torch threads and seed, the game's start screen, and the real game beside it if
compare mode was on. The recorded ticks and restarts are replayed in order; each regenerated frame's sha1 is
compared with the one recorded (the mp4 is lossy, the hashes are not), and ``out=FILE.mp4`` writes the regenerated
frames. Exit status 0 when every frame is identical, 1 at the first one that is not.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np
from omegaconf import MISSING

from games.data.errors import InputError
from runtime.config import RuntimeSettings
from runtime.session_record import VIDEO_SCALE, SessionLog, frame_sha1, read_session, verified_checkpoint


@dataclass
class ReplayConfig:
    """The settings of ``rollingworld replay``."""
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)  # the window (fps None: the recorded rate)
    session: str = MISSING  # the session's JSONL sidecar, or its mp4 (the sidecar is found beside it)
    ckpt: Optional[str] = None  # the checkpoint, if it moved since (default: the path the session names); same sha256
    check: bool = True  # compare regenerated frames with the recorded frame hashes; exit 1 at the first difference
    out: Optional[str] = None  # also write the regenerated frames to this mp4
    frames: Optional[int] = None  # stop after this many ticks (None = all recorded)
    headless: bool = False  # no window: regenerate as fast as possible, no display needed
    threads: Optional[int] = None  # torch threads (None = as recorded; other counts may change the frames)


class _Replay:
    """Replays a log on a rebuilt source, one frame a call, remembering the first frame that differs."""

    def __init__(self, source, log: SessionLog, ticks: int, check: bool, video=None):
        self.source, self.log, self.check, self.video = source, log, check, video
        self.events = log.events[:_events_for(log, ticks)]
        self.done = 0  # events replayed
        self.ticks = 0
        self.difference: tuple[str, str, str] | None = None  # (which frame, recorded sha1, replayed sha1)

    def _seen(self, frame: np.ndarray, restart: bool = False) -> np.ndarray:
        want = self.log.hashes[self.done]
        if self.check and self.difference is None and frame_sha1(frame) != want:
            which = f"the restart after tick {self.ticks}" if restart else f"tick {self.ticks}"
            self.difference = (which, want, frame_sha1(frame))
        if self.video is not None:
            self.video.write(frame)
        return frame

    def start(self) -> np.ndarray:
        return self._seen(self.source.reset(self.log.header["seed"]))

    def next(self) -> np.ndarray | None:
        """The frame of the next recorded tick or restart; None at the end."""
        if self.done == len(self.events):
            return None
        kind, arg = self.events[self.done]
        self.done += 1
        if kind == "reset":
            return self._seen(self.source.reset(**arg), restart=True)
        self.ticks += 1
        session = getattr(self.source, "session", None)
        if session is not None and self.ticks == self.log.compiled_at:
            session.hold_eager = False  # the recorded session switched to the compiled pass at this tick
        return self._seen(self.source.step(arg))


def _engine_of(recorded: dict) -> dict:
    """The engine settings a session header recorded; sessions recorded before the sink became a number of its own
    said "no sink" as the mode ``rolling_nosink``."""
    if recorded.get("mode") == "rolling_nosink":
        return {**recorded, "mode": "rolling", "sink": 0}
    return recorded


def _events_for(log: SessionLog, ticks: int | None) -> int:
    """How many events hold the first ``ticks`` ticks (None: all)."""
    if ticks is None:
        return len(log.events)
    n = 0
    for i, (kind, _) in enumerate(log.events):
        n += kind == "tick"
        if n > ticks:
            return i
    return len(log.events)


def _show(replay: _Replay, cfg, fps: float) -> None:
    """Show the replayed frames in a window at ``fps``, as the session was shown (Esc or closing it stops)."""
    import pygame

    from runtime.display import Window
    from runtime.loop import TickLoop

    rt, source = cfg.runtime, replay.source
    size = (source.width * rt.scale, source.height * rt.scale)
    window = Window(size, title=f"rollingworld replay: {source.name}", filter=rt.filter,
                    fullscreen=rt.fullscreen, vsync=rt.vsync)

    def tick(t: int) -> bool:
        for event in pygame.event.get():
            if event.type == pygame.QUIT or (event.type == pygame.KEYDOWN and event.key == pygame.K_ESCAPE):
                return False
        frame = replay.next()
        if frame is not None:
            window.show(frame)
        return frame is not None

    try:
        window.show(replay.start())
        loop = TickLoop(fps)
        with loop.stop_on_signals():
            loop.run(tick)
    finally:
        window.close()


def run(cfg) -> int:
    log = read_session(cfg.session)
    header = log.header
    ckpt = verified_checkpoint(log, cfg.ckpt)
    from runtime.worlds import build_source  # torch: only once the session is known to be sound
    from worldmodel.engine.config import EngineConfig

    try:
        engine = EngineConfig(**_engine_of(header["engine"]))
    except TypeError as e:
        raise InputError(f"{log.path}: line 1: bad engine settings: {e}") from None
    threads = cfg.threads if cfg.threads is not None else header["threads"]
    held = engine.compile and engine.background_compile  # recorded: eager until the tick marked "compiled"
    engine = replace(engine, background_compile=False)  # compile now, switch at the recorded tick
    source = build_source(ckpt, engine, threads, header["compare"])
    if held:
        source.session.hold_eager = True
    if source.action_space != log.action_space:
        raise InputError(f"{log.path} was recorded with other controls than {ckpt} has")
    video = None
    if cfg.out:
        from games.data.video import VideoWriter

        video = VideoWriter(cfg.out, fps=header["fps"], scale=VIDEO_SCALE)
    replay = _Replay(source, log, cfg.frames, cfg.check, video)
    try:
        if cfg.headless:
            replay.start()
            while replay.next() is not None:
                pass
        else:
            _show(replay, cfg, cfg.runtime.fps or header["fps"])
    finally:
        if video is not None:
            video.close(keep=True)
    if video is not None:
        print(f"wrote {video.frames} frames to {cfg.out}")
    if not cfg.check:
        return 0
    frames, resets = replay.done + 1, replay.done - replay.ticks
    if replay.difference is None:
        print(f"identical: {frames} frames (the start frame, {replay.ticks} ticks"
              + (f", {resets} restarts)" if resets else ")"))
        return 0
    which, want, got = replay.difference
    print(f"first difference at {which} (of {replay.ticks} ticks replayed): recorded frame sha1 {want[:12]}, "
          f"replayed {got[:12]}")
    return 1
