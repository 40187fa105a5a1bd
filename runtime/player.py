"""A play session: any frame source driven at a fixed tick by a player (or a scripted agent), shown on a display.

The frame source is a ``runtime.source.FrameSource``: a real game, a world model, both side by side, or any of
these being recorded. This module owns time, input and pixels, never maths.
Each tick: read the input held while the current frame was shown -> record (frame, action) -> step -> show.

The player's controls (``runtime.input.Controls``) act on the session, never on the source's frames: pause (the
window keeps ticking, the source does not step), reset, the HUD and help overlays (drawn by the display over the
picture), a screenshot of the clean frame, fullscreen, and the mouse grab for games that use the mouse.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from omegaconf import OmegaConf

from runtime.display import OffscreenDisplay, Overlay, Window
from runtime.hud import PlayMeter, TextPanel, format_hud, help_lines
from runtime.input import Controls, InputMapper, resolve_bindings
from runtime.loop import TickLoop, TickStats, seconds_since_process_start
from runtime.source import FrameSource

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
log = logging.getLogger("rollingworld.play")


@dataclass
class PlayResult:
    stats: TickStats
    frames: int  # frames shown, the start frame included
    last_frame: np.ndarray
    quit_by_user: bool  # window closed or Esc


class PlaySession:
    """Runs ``source`` at ``fps`` ticks per second until ``frames`` ticks, Esc, window close, Ctrl-C or SIGTERM.

    ``controls``: the play controls (None: Esc quits, nothing else); ``hud``: show the HUD from the start;
    ``screenshots``: folder for screenshots; ``on_reset(seed)``: called after the player reset the source.
    ``frames`` counts ticks, paused ones included.
    """

    def __init__(self, source: FrameSource, display, input_mapper: InputMapper | None = None, fps: float | None = None,
                 agent=None, on_frame: Callable[[np.ndarray, np.ndarray], None] | None = None,
                 title: str = "rollingworld", *, controls: Controls | None = None, hud: bool = False,
                 screenshots: str | os.PathLike = "screenshots", on_reset: Callable[[int], None] | None = None):
        self.source = source
        self.display = display
        self.input = input_mapper
        self.agent = agent  # if set, a scripted agent chooses the actions (keyboard input is still read)
        self.on_frame = on_frame  # called with (frame shown, action held while it was shown) every tick
        self.on_reset = on_reset
        self.loop = TickLoop(fps or source.fps)
        self.title = title
        self.controls = controls or Controls({"quit": ["escape"]})
        self.show_hud, self.show_help, self.paused = bool(hud), False, False
        self.screenshots = Path(screenshots)
        self.quit_by_user = False
        self.frame: np.ndarray | None = None
        self.action = source.action_space.noop()  # the action of the last step
        self.seed = self.start_seed = 0
        self.meter = PlayMeter(source.latency_ticks)
        size = display.size
        self._panel = TextPanel(size=max(14, min(24, size[1] // 24)))
        self._help_panel = TextPanel(size=max(14, min(24, size[1] // 24)))
        self._wants_grab = bool(source.action_space.mouse and agent is None and input_mapper is not None)
        self._grabbed = False
        self._overran_at = -1  # the tick after the last overrun
        self._overruns_unlogged, self._logged_at = 0, float("-inf")
        self._shots = 0
        self.first_frame_s: float | None = None  # seconds from the process's start to the first frame shown

    # -- the player's controls --

    def _control(self, control: str, event) -> None:
        import pygame

        if control == "quit":
            self.quit_by_user = True
            self.loop.stop()
        elif control == "pause":
            self.paused = not self.paused
            self._grab(not self.paused)
        elif control == "reset":
            self.reset(new_start=bool(event.mod & pygame.KMOD_SHIFT))
        elif control == "hud":
            self.show_hud = not self.show_hud
        elif control == "help":
            self.show_help = not self.show_help
        elif control == "screenshot":
            print(f"screenshot: {self.screenshot()}", flush=True)
        elif control == "fullscreen":
            self.display.toggle_fullscreen()

    def reset(self, new_start: bool = False) -> np.ndarray:
        """Restart from the same start with a new seed; ``new_start``: from a new start too.

        The source gets ``reset(seed + 1, start_seed=start)``: a world model samples new noise from the same start
        screen, a real game (no noise) replays the same start.
        """
        self.seed += 1
        self.start_seed += int(new_start)
        self.frame = self.source.reset(self.seed, start_seed=self.start_seed)
        self.meter.restart()
        self.action = self.source.action_space.noop()
        log.info("reset: seed %d, start %d", self.seed, self.start_seed)
        if self.on_reset is not None:
            self.on_reset(self.start_seed)
        return self.frame

    def screenshot(self) -> Path:
        """Write the current frame (no overlays) at the display's scale, nearest-neighbour, as a PNG."""
        from PIL import Image

        k = max(1, int(self.display.scale))
        image = np.repeat(np.repeat(self.frame, k, axis=0), k, axis=1)
        self.screenshots.mkdir(parents=True, exist_ok=True)
        name = self.source.name.split(" ")[0]
        while True:
            self._shots += 1
            path = self.screenshots / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{self._shots:03d}.png"
            if not path.exists():
                break
        Image.fromarray(image).save(path)
        return path

    def _grab(self, grab: bool) -> None:
        """Grab the mouse for games that use it (released while paused or unfocused)."""
        grab = grab and self._wants_grab
        if grab != self._grabbed:
            self.display.grab_mouse(grab)
            self._grabbed = grab

    # -- one tick --

    def _poll_events(self) -> None:
        import pygame

        if not pygame.display.get_init():
            return
        for event in pygame.event.get():
            if self._intercept(event):
                continue
            control = self.controls.match(event) if event.type == pygame.KEYDOWN else None
            if event.type == pygame.QUIT:
                self.quit_by_user = True
                self.loop.stop()
            elif control is not None:
                self._control(control, event)
            elif event.type == pygame.MOUSEBUTTONDOWN and self._wants_grab and not self._grabbed:
                self._grab(not self.paused)  # a click into the window takes the mouse back; it is not game input
            elif self.input is not None:
                if event.type == pygame.WINDOWFOCUSLOST:
                    self._grab(False)
                self.input.handle(event)

    def _intercept(self, event) -> bool:
        """Sees every event before the controls and the input do; True: the event is used up (the kiosk's hook)."""
        return False

    def _step(self, action: np.ndarray) -> np.ndarray:
        """Steps the source; the new frame, before it is shown (the kiosk's watchdog judges it here)."""
        return self.source.step(action)

    def hud_lines(self) -> list[str]:
        """The HUD's text now: fps, tick time, latency, the keys of the last step, overruns, pause."""
        held = self.source.action_space.decode(self.action)
        return format_hud(self.meter, self.loop.stats.tick_ms, self.loop.stats.overruns,
                         self._overran_at == self.loop.stats.ticks, held["keys"] + held["buttons"], self.paused)

    def _overlays(self) -> tuple[Overlay, ...]:
        overlays = []
        if self.show_hud:
            overlays.append(Overlay(self._panel.render(self.hud_lines())))
        elif self.paused:
            overlays.append(Overlay(self._panel.render(["PAUSED"])))
        if self.show_help:
            bindings = self.input.bindings if self.input is not None else {}
            lines = help_lines(self.source.action_space, bindings, self.controls)
            overlays.append(Overlay(self._help_panel.render(lines), "center"))
        return tuple(overlays)

    def _show(self) -> None:
        self.display.show(self.frame, self._overlays())

    def _tick(self, t: int) -> bool:
        self._poll_events()
        if self.loop.stopping:
            return False
        stepped = not self.paused
        if stepped:
            if self.agent is not None:
                action = self.agent.act()
                if self.input is not None:
                    self.input.action()  # drain the player's mouse motion so it does not pile up
            elif self.input is not None:
                action = self.input.action()
            else:
                action = self.source.action_space.noop()
            self.meter.polled(time.perf_counter())
            if self.on_frame is not None:
                self.on_frame(self.frame, action)
            self.frame = self._step(action)
            self.action = action
        elif self.input is not None:
            self.input.action()  # mouse motion made while paused must not jump the view on resume
        self._show()
        self.meter.shown(time.perf_counter(), stepped)
        if t % 30 == 29:
            ms = sorted(self.loop.stats.tick_ms)
            self.display.set_title(f"{self.title}  {1000.0 / max(ms[len(ms) // 2], 1e-3):.0f} fps capable, "
                                   f"{self.loop.stats.overruns} overruns" + ("  (paused)" if self.paused else ""))
        return True

    def _overrun(self, t: int, ms: float) -> None:
        """The loop keeps its cadence by itself; say so on the HUD (next tick) and in the log, once a second at most."""
        self._overran_at = t
        self._overruns_unlogged += 1
        now = time.perf_counter()
        if now - self._logged_at >= 1.0:
            log.info("%d tick(s) overran the %.1f ms period since the last report (the latest took %.1f ms); "
                     "the loop keeps its cadence", self._overruns_unlogged, self.loop.period * 1000.0, ms)
            self._overruns_unlogged, self._logged_at = 0, now

    def run(self, seed: int, frames: int | None = None) -> PlayResult:
        self.seed = self.start_seed = int(seed)
        self.frame = self.source.reset(seed)
        self.meter.restart()
        self._show()
        self.first_frame_s = seconds_since_process_start()
        self._grab(True)
        try:
            with self.loop.stop_on_signals():
                stats = self.loop.run(self._tick, frames=frames, on_overrun=self._overrun)
        finally:
            self._grab(False)
        return PlayResult(stats, stats.ticks + 1, self.frame, self.quit_by_user)


def write_stats(path, session: PlaySession, source) -> None:
    """The play-level measurement: ticks/s, overruns, tick work percentiles over the whole session, and the
    seconds from the process's start to the first frame, as JSON (``play stats=FILE``)."""
    import json

    figures = {"source": source.name, "fps_target": round(1.0 / session.loop.period, 2),
               "first_frame_s": None if session.first_frame_s is None else round(session.first_frame_s, 3),
               **session.loop.stats.figures()}
    engine = getattr(source, "session", None)
    if engine is not None:
        figures.update(compile=bool(engine.cfg.compile), compiled=engine.compiled,
                       compile_seconds=engine.compile_seconds)
    with open(path, "w") as f:
        json.dump(figures, f, indent=2)


def open_display(cfg, frame_wh: tuple[int, int], name: str):
    """The window (or, ``headless``, the EGL framebuffer) for frames of ``frame_wh`` = (W, H) with the settings of
    ``cfg``: opened before a world model loads, so the player sees it at once (``show_loading``)."""
    rt = cfg.runtime
    size = (frame_wh[0] * rt.scale, frame_wh[1] * rt.scale)
    if cfg.headless:
        return OffscreenDisplay(size, filter=rt.filter)
    return Window(size, title=f"rollingworld: {name}", filter=rt.filter, fullscreen=rt.fullscreen, vsync=rt.vsync)


def show_loading(display, frame_wh: tuple[int, int], lines: list[str]) -> None:
    """A dark frame with ``lines`` in the middle: what the window shows while a world model loads."""
    import pygame

    panel = TextPanel(size=max(14, min(24, display.size[1] // 24)))
    display.show(np.full((frame_wh[1], frame_wh[0], 3), 16, np.uint8), (Overlay(panel.render(lines), "center"),))
    if pygame.display.get_init():
        pygame.event.pump()  # the window manager sees a live window, not a hung one


def play_source(source: FrameSource, cfg, agent=None, display=None) -> int:
    """Play any frame source (a game through ``GameSource``, a world model through ``WorldSource``) with the
    settings of ``cfg`` (a ``GameCommandConfig``, or ``play``'s ``PlayConfig`` with ``record`` None), on
    ``display`` (None: one opened here)."""
    rt = cfg.runtime
    bindings = resolve_bindings(source.action_space, source.default_bindings,
                                OmegaConf.to_container(rt.bindings) if rt.bindings else None)
    controls = Controls(OmegaConf.to_container(rt.controls) if rt.controls else {}, bindings)
    if not log.handlers:  # overruns and resets are worth a line on stderr while playing
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("rollingworld: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    if display is None:
        display = open_display(cfg, (source.width, source.height), source.name)
    writer = episode = None
    if cfg.record:
        from games.data.writer import RecordingWriter

        writer = RecordingWriter(cfg.out, game=source.name, action_space=source.action_space, fps=source.fps,
                                 height=source.height, width=source.width, chunk_frames=cfg.chunk_frames)
        episode = writer.begin_episode(seed=cfg.seed, agent=cfg.agent or "human")
    video = None
    if cfg.video:
        from games.data.video import VideoWriter

        video = VideoWriter(cfg.video, fps=rt.fps or source.fps, scale=4)

    recorded = 0

    def on_frame(frame, action):
        nonlocal recorded
        if episode is not None:
            episode.append(frame, action)
            recorded += 1
        if video is not None:
            video.write(frame)

    def on_reset(seed):
        nonlocal episode
        if episode is not None:  # the player restarted: what follows is a new episode, not a jump in this one
            episode.close()
            episode = writer.begin_episode(seed=seed, agent=cfg.agent or "human")

    try:
        session = PlaySession(source, display, InputMapper(source.action_space, bindings), fps=rt.fps, agent=agent,
                              on_frame=on_frame, title=f"rollingworld: {source.name}", controls=controls,
                              hud=rt.hud, screenshots=rt.screenshots,
                              on_reset=on_reset)
        result = session.run(seed=cfg.seed, frames=cfg.frames)
        if video is not None:
            video.write(result.last_frame)
        if cfg.get("stats"):
            write_stats(cfg.stats, session, source)
    finally:
        if episode is not None:
            episode.close()
            writer.close()
        if video is not None:
            video.close()
        display.close()
    print(f"{source.name}: {result.stats.summary()}")
    if video is not None:
        print(f"wrote {video.frames} frames to {cfg.video}")
    if episode is not None:
        print(f"recorded {recorded} frames to {cfg.out}")
    return 0
