"""A play session: any frame source driven at a fixed tick by a player (or a scripted agent), shown on a display.

The frame source is anything with ``reset(seed) -> frame``, ``step(action) -> frame``, an ``action_space``
and a ``fps``: the real games now, the world model later. This module owns time, input and pixels, never maths.
Each tick: read the input held while the current frame was shown -> record (frame, action) -> step -> show.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from runtime.input import InputMapper
from runtime.loop import TickLoop, TickStats

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
log = logging.getLogger("rollingworld.play")


@dataclass
class PlayResult:
    stats: TickStats
    frames: int  # frames shown, the start frame included
    last_frame: np.ndarray
    quit_by_user: bool  # window closed or Esc


class PlaySession:
    """Runs ``source`` at ``fps`` ticks per second until ``frames`` ticks, Esc, window close, Ctrl-C or SIGTERM."""

    def __init__(self, source, display, input_mapper: InputMapper | None = None, fps: float | None = None,
                 agent=None, on_frame: Callable[[np.ndarray, np.ndarray], None] | None = None,
                 title: str = "rollingworld"):
        self.source = source
        self.display = display
        self.input = input_mapper
        self.agent = agent  # if set, a scripted agent chooses the actions (keyboard input is still read)
        self.on_frame = on_frame  # called with (frame shown, action held while it was shown) every tick
        self.loop = TickLoop(fps or source.fps)
        self.title = title
        self.quit_by_user = False
        self.frame: np.ndarray | None = None

    def _poll_events(self) -> None:
        import pygame

        if not pygame.display.get_init():
            return
        for event in pygame.event.get():
            if event.type == pygame.QUIT or (event.type == pygame.KEYDOWN and event.key == pygame.K_ESCAPE):
                self.quit_by_user = True
                self.loop.stop()
            elif self.input is not None:
                self.input.handle(event)

    def _tick(self, t: int) -> bool:
        self._poll_events()
        if self.loop.stopping:
            return False
        if self.agent is not None:
            action = self.agent.act()
            if self.input is not None:
                self.input.action()  # drain the player's mouse motion so it does not pile up
        elif self.input is not None:
            action = self.input.action()
        else:
            action = self.source.action_space.noop()
        if self.on_frame is not None:
            self.on_frame(self.frame, action)
        self.frame = self.source.step(action)
        self.display.show(self.frame)
        if t % 30 == 29:
            ms = sorted(self.loop.stats.tick_ms)
            self.display.set_title(f"{self.title}  {1000.0 / max(ms[len(ms) // 2], 1e-3):.0f} fps capable, "
                                   f"{self.loop.stats.overruns} overruns")
        return True

    def run(self, seed: int, frames: int | None = None) -> PlayResult:
        self.frame = self.source.reset(seed)
        self.display.show(self.frame)

        def overrun(t: int, ms: float) -> None:
            log.debug("tick %d overran its period: %.1f ms", t, ms)

        with self.loop.stop_on_signals():
            stats = self.loop.run(self._tick, frames=frames, on_overrun=overrun)
        return PlayResult(stats, stats.ticks + 1, self.frame, self.quit_by_user)
