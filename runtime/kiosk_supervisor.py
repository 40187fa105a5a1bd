"""The kiosk's supervisor: runs ``KioskSession`` after ``KioskSession`` on one display and keeps the kiosk alive.

When anything in the loop raises, ``Kiosk`` logs the fault, shows a notice over the last frame while it waits
(exponential backoff), rebuilds the frame source and carries on; past ``max_restarts_per_hour`` faults it gives up
(exit code 1), and a loop that stops ticking for ``stall_seconds`` ends the process (exit code 3) so that a
service manager can start it again. Only the exit keys or SIGTERM/SIGINT end it.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Callable

import numpy as np

from games.data.errors import InputError
from runtime.display import Overlay, fit_viewport
from runtime.hud import Banner
from runtime.kiosk import GAVE_UP, STALLED, ExitKeys, KioskConfig, KioskLog, KioskSession, one_line

log = logging.getLogger("rollingworld.kiosk")

class Kiosk:
    """Runs kiosk sessions on one display, one after another, and restarts them when anything in the loop fails.

    ``start(last_input)`` builds a frame source and a ``KioskSession`` on it (the first call's InputError, a bad
    setting, ends the kiosk at once); ``on_stall`` is what a stalled loop does (default: end the process).
    """

    def __init__(self, start: Callable[[float | None], KioskSession], display, config: KioskConfig, events: KioskLog,
                 on_stall: Callable[[], None] | None = None):
        self.start, self.display, self.config, self.events = start, display, config, events
        self.on_stall = on_stall or (lambda: os._exit(STALLED))
        self.exit_keys = ExitKeys(config.exit_keys)
        self.session: KioskSession | None = None
        self.faults: deque[float] = deque()  # times of the faults in the last hour
        self.restarts = self.ticks = 0
        self.exit_reason: str | None = None
        self._last_frame = np.zeros((64, 64, 3), np.uint8)
        self._notice: Banner | None = None
        self._done = threading.Event()

    def run(self, seed: int, frames: int | None = None) -> int:
        """Runs until exit_keys, SIGTERM/SIGINT, ``frames`` ticks in all (0), or too many faults (1)."""
        last_input, seed = None, int(seed)
        threading.Thread(target=self._watch_stalls, daemon=True).start()
        with self._stop_on_signals():
            try:
                while self.exit_reason is None and (frames is None or self.ticks < frames):
                    try:
                        self.session = self.start(last_input)
                        if self.exit_reason is None:  # no signal while it was built
                            result = self.session.run(seed, None if frames is None else frames - self.ticks)
                            self.ticks += result.stats.ticks
                            self.exit_reason = self.session.exit_reason
                        continue
                    except Exception as e:  # anything the frame source (or the display) raised
                        first = not (self.ticks or self.restarts or self.session and self.session.loop.stats.ticks)
                        if isinstance(e, InputError) and first:  # a bad setting: retrying will not help
                            raise
                        self._fault(e)
                    if self.session is not None:  # the next session goes on from where this one failed
                        last_input, seed = self.session.last_input, self.session.seed + 1
                        self._last_frame = self.session.frame if self.session.frame is not None else self._last_frame
                        self.session = None
                    if len(self.faults) > self.config.max_restarts_per_hour:
                        self.exit_reason = "gave-up"
                    elif self._back_off():
                        self.restarts += 1
                        self.events.event("restart", n=self.restarts, faults_last_hour=len(self.faults))
            except BaseException as e:
                self.events.event("exit", reason="error", error=one_line(e))
                raise
            finally:
                self._done.set()
        self.exit_reason = self.exit_reason or "frames"
        code = GAVE_UP if self.exit_reason == "gave-up" else 0
        self.events.event("exit", reason=self.exit_reason, code=code, ticks=self.ticks, restarts=self.restarts)
        return code

    def _fault(self, error: Exception) -> None:
        now = time.monotonic()
        self.faults.append(now)
        while self.faults and self.faults[0] < now - 3600.0:
            self.faults.popleft()
        if self.session is not None:
            self.ticks += self.session.loop.stats.ticks
        self.events.event("fault", error=one_line(error), tick=self.ticks)
        log.error("kiosk: the loop failed, restarting", exc_info=error)

    def _back_off(self) -> bool:
        """Shows the last frame under a notice while waiting before a restart; False if told to exit meanwhile."""
        import pygame

        wait = min(self.config.backoff_seconds * 2 ** (len(self.faults) - 1), self.config.backoff_max_seconds)
        if self._notice is None:
            h, w = self._last_frame.shape[:2]
            size = tuple(self.display.size)
            self._notice = Banner("ONE MOMENT PLEASE", fit_viewport((w, h), size)[2], blink_s=0)
        notice = Overlay(self._notice.image(0.0, 0.0), "center")
        end = time.monotonic() + wait
        while self.exit_reason is None:
            try:
                for event in pygame.event.get() if pygame.display.get_init() else ():
                    if event.type == pygame.KEYDOWN and self.exit_keys.match(event):
                        self.exit_reason = "exit-keys"
                self.display.show(self._last_frame, (notice,))
            except Exception:  # a broken display: the next session fails on it too, and that is a fault
                pass
            left = end - time.monotonic()
            if left <= 0:
                return True
            time.sleep(min(0.1, left))
        return False

    def _watch_stalls(self) -> None:
        """Ends the process (``on_stall``) when a running session has not started a tick for ``stall_seconds``."""
        limit = self.config.stall_seconds
        while limit and not self._done.wait(min(1.0, limit / 4)):
            session = self.session
            stalled = time.monotonic() - session.ticked_at if session is not None else 0.0
            if stalled > limit:
                self.events.event("stall", seconds=f"{stalled:.1f}", tick=self.ticks + session.loop.stats.ticks)
                self.on_stall()
                return

    @contextmanager
    def _stop_on_signals(self):
        """SIGTERM and SIGINT end the kiosk cleanly, also between sessions (a running session's loop stops itself)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def stop(*_):
            self.exit_reason = "signal"
            if self.session is not None:
                self.session.loop.stop()

        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, stop)
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
