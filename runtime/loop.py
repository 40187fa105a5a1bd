"""The fixed-tick loop: time, and nothing else.

Deadlines are absolute (each one period after the last), so sleeping never accumulates drift. A tick that overruns
its period is counted and the schedule re-anchors at its end instead of bursting to catch up on missed ticks: the
player always sees the latest frame. Ctrl-C and SIGTERM ask the loop to stop at the end of the current tick, so whatever it was doing
(a recording, a video) is closed cleanly.
"""
from __future__ import annotations

import signal
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable


def seconds_since_process_start() -> float | None:
    """Wall seconds since this process started (Linux: /proc), interpreter start-up and imports included; None
    where /proc cannot tell."""
    import os

    try:
        with open("/proc/self/stat") as f:
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time in clock ticks
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


HIST_MS = 0.25  # width of a bin of the tick-time histogram (ms); the last bin holds everything over 1 s


@dataclass
class TickStats:
    ticks: int = 0
    overruns: int = 0  # ticks whose work took longer than the period
    tick_ms: deque = field(default_factory=lambda: deque(maxlen=120))  # work time of recent ticks
    # work time of every tick, as a histogram (constant memory however long a kiosk runs)
    hist: list = field(default_factory=lambda: [0] * (int(1000 / HIST_MS) + 1))
    start: float = 0.0
    end: float = 0.0

    def add(self, ms: float) -> None:
        self.tick_ms.append(ms)
        self.hist[min(int(ms / HIST_MS), len(self.hist) - 1)] += 1

    @property
    def fps(self) -> float:
        """Ticks per second over the whole run."""
        return self.ticks / max(self.end - self.start, 1e-9)

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile of every tick's work time (ms, to the histogram's bin: 0.25 ms)."""
        total = sum(self.hist)
        if not total:
            return 0.0
        need, seen = q / 100.0 * total, 0
        for i, n in enumerate(self.hist):
            seen += n
            if seen >= need:
                return (i + 1) * HIST_MS
        return len(self.hist) * HIST_MS

    def figures(self) -> dict:
        """What a play-level measurement reports (``play stats=FILE``)."""
        return {"ticks": self.ticks, "seconds": round(self.end - self.start, 3), "ticks_per_s": round(self.fps, 2),
                "overruns": self.overruns, "overrun_percent": round(100.0 * self.overruns / max(self.ticks, 1), 2),
                "tick_ms_p50": self.percentile(50), "tick_ms_p99": self.percentile(99),
                "tick_ms_max": self.percentile(100)}

    def summary(self) -> str:
        return (f"{self.ticks} ticks in {self.end - self.start:.1f} s ({self.fps:.1f}/s), "
                f"tick work p50 {self.percentile(50):.1f} ms, p99 {self.percentile(99):.1f} ms, "
                f"{self.overruns} overruns")


class TickLoop:
    """Calls ``tick(t)`` every ``1/fps`` seconds until it returns False, ``frames`` ticks ran, or stop()."""

    def __init__(self, fps: float, clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep):
        if not fps or fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.period = 1.0 / fps
        self.clock, self.sleep = clock, sleep
        self.stats = TickStats()
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, tick: Callable[[int], bool | None], frames: int | None = None,
            on_overrun: Callable[[int, float], None] | None = None) -> TickStats:
        stats = self.stats
        stats.start = start = self.clock()
        next_deadline = start + self.period
        t = 0
        while not self._stop.is_set() and (frames is None or t < frames):
            began = self.clock()
            keep_going = tick(t)
            now = self.clock()
            stats.add((now - began) * 1000.0)
            t += 1
            stats.ticks = t
            if keep_going is False:
                break
            if now > next_deadline:
                stats.overruns += 1
                if on_overrun is not None:
                    on_overrun(t, (now - began) * 1000.0)
                # late: start the next tick at once and re-anchor the schedule there, never burst to catch up
                next_deadline = now + self.period
            else:
                self.sleep(next_deadline - now)
                next_deadline += self.period
        stats.end = self.clock()
        return stats

    @contextmanager
    def stop_on_signals(self):
        """Ctrl-C and SIGTERM stop the loop after the current tick (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, lambda *_: self.stop())
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
