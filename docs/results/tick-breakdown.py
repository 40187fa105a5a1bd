"""Where a play tick's time goes: each part of one tick wrapped in a timer, the real play loop in a window.

    xvfb-run -a python docs/results/tick-breakdown.py pong      # or maze; prints p50/p99/mean of each part in ms

The figures are in docs/runtime.md ("Start-up and the tick under load"). The first 60 ticks are left out.
"""
import json
import sys
import time
from collections import defaultdict

import numpy as np

from runtime import cli, display, worlds
from runtime.player import PlaySession
from worldmodel.engine import session, window

times = defaultdict(list)


def timed(cls, name: str, what: str) -> None:
    fn = getattr(cls, name)

    def wrapper(*args, **kw):
        began = time.perf_counter()
        out = fn(*args, **kw)
        times[what].append((time.perf_counter() - began) * 1000)
        return out
    setattr(cls, name, wrapper)


timed(window.RollingWindow, "tick", "the model's pass (denoise, re-noise)")
timed(session.WorldSession, "_decode_uint8", "decode to uint8")
timed(worlds.WorldSource, "step", "source.step (pass, decode, to numpy)")
timed(display.Window, "show", "draw (upload, quad, overlay, flip)")
timed(PlaySession, "_poll_events", "input (pygame events)")
timed(PlaySession, "_tick", "the whole tick")
game = sys.argv[1] if len(sys.argv) > 1 else "pong"
if cli.main(["play", "agent=random", "frames=900", f"game={game}"]) != 0:
    sys.exit(1)
print(json.dumps({k: {"p50": round(float(np.percentile(v[60:], 50)), 2),
                      "p99": round(float(np.percentile(v[60:], 99)), 2),
                      "mean": round(float(np.mean(v[60:])), 2)} for k, v in times.items()}, indent=1))
