"""Speed of a world model's session: ``rollingworld bench``'s measurement, also the speed section of ``eval``.

The session ticks holding random keys after ten unmeasured ticks, optionally with other cores kept busy (a window
thread, another program); the figures are frames per second, tick percentiles, key-to-frame latency and memory.
"""
from __future__ import annotations

import os
import time

import numpy as np

from games.data.errors import InputError


class RandomPlayer:
    """Sticky random actions over an action space (the scripted ``random`` agent without a game)."""

    def __init__(self, space, seed: int):
        from games.agents import RandomAgent

        self.t = 0
        self.action_space = space
        self.agent = RandomAgent(self, seed)

    def act(self) -> np.ndarray:
        self.t += 1
        return self.agent.act()


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _spin() -> None:
    while True:
        pass


def _busy_cores(n: int) -> list:
    """``n`` processes that each keep one core busy: what a player's window thread or another program does."""
    import multiprocessing

    procs = [multiprocessing.get_context("spawn").Process(target=_spin, daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    return procs


def measure_speed(session, start: np.ndarray, frames: int, busy_cores: int = 0, progress: bool = True,
                  what: str = "") -> dict:
    """Tick the session ``frames`` times from ``start`` holding random keys (after 10 unmeasured ticks) with
    ``busy_cores`` other cores kept busy; the figures ``bench`` prints (start-up includes compiling the tick)."""
    import torch
    from tqdm import tqdm

    from worldmodel.nn.dit import count_params

    if frames < 200:
        raise InputError("bench needs frames >= 200")
    player = RandomPlayer(session.action_space, 0)
    t_start = time.perf_counter()
    session.reset(start, seed=0)  # includes compiling the tick with compile=true
    startup_s = time.perf_counter() - t_start
    busy = _busy_cores(busy_cores)
    try:
        for _ in range(10):  # warm-up ticks, not measured
            session.step(player.act())
        tick_ms, rss = np.zeros(frames), {}
        for i in tqdm(range(frames), unit="tick", disable=not progress, mininterval=2.0):
            t0 = time.perf_counter()
            session.step(player.act())
            tick_ms[i] = (time.perf_counter() - t0) * 1000
            if i + 1 in (100, frames):
                rss[i + 1] = _rss_mb()
    finally:
        for p in busy:
            p.terminate()
    fps_100 = 1000 / tick_ms[:100].mean()
    fps_end = 1000 / tick_ms[-100:].mean()
    p50 = float(np.percentile(tick_ms, 50))
    c = session.cfg
    return {
        "model": what, "parameters": count_params(session.net), "mode": c.mode, "window": c.window,
        "sink": c.sink, "recent": c.recent, "fuse_reencode": bool(c.fuse_reencode),
        "compile": bool(c.compile), "threads": torch.get_num_threads(),
        "busy_cores": int(busy_cores), "frames": frames,
        "startup_s": startup_s,
        "tokens_per_frame": session.net.cfg.tokens_per_frame,
        "fps": float(1000 / tick_ms.mean()), "tick_ms_p50": p50, "tick_ms_p99": float(np.percentile(tick_ms, 99)),
        "latency_ticks": session.latency_ticks, "latency_ms": session.latency_ticks * p50,
        "rss_mb_at_100": rss[100], f"rss_mb_at_{frames}": rss[frames], "fps_at_100": float(fps_100),
        f"fps_at_{frames}": float(fps_end), "fps_ratio_end_over_100": float(fps_end / fps_100),
        # the whole run in blocks of ticks: a slowdown shows as a trend, a noisy neighbour as one bad block
        "fps_by_block": [round(float(1000 / b.mean()), 2) for b in np.array_split(tick_ms, max(1, frames // 1000))],
    }
