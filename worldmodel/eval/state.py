"""State error by horizon: generated frames scored on the game state they show, read from their pixels.

PSNR rewards a sharp frame that shows the wrong thing and punishes a blurred one that shows the right thing. A state
reader (``games.readers``: the ball and score of pong, the wall heights of the maze) reads the real frame and the
generated one at each horizon; its ``compare`` gives errors (pixels) and verdicts (``correct``, ...), averaged here
over the starts. The reader is passed in, as ``fidelity``'s model is: anything with ``read(frame) -> state`` and
``compare(real_state, generated_state) -> {name: number or bool}``, the same names for every pair of frames.
"""
from __future__ import annotations

import numpy as np


def state_by_horizon(reader, frames: np.ndarray, real: np.ndarray) -> dict[str, list[float]]:
    """Mean over the starts of each field of ``reader.compare`` (a bool's mean is its share), per horizon 1..n, of
    frames uint8 [B, n, H, W, 3] against the real ones [B, n, H, W, 3]. Rounded to 4 digits: the report keeps it."""
    rows = [[reader.compare(reader.read(r), reader.read(f)) for r, f in zip(real_b, frames_b)]
            for real_b, frames_b in zip(real, frames)]  # [B][n] of {field: value}
    return {name: np.round(np.mean([[float(c[name]) for c in row] for row in rows], 0), 4).tolist()
            for name in rows[0][0]}


def shown_per_block(reader, blocks, every: int = 5) -> dict:
    """For each block of a long session (``blocks``: uint8 [blocks, frames, H, W, 3]), the share of its frames (every
    ``every``-th) for which each flag of ``reader.describe`` holds: {flag: [share per block]}. Over a long session
    the model's frames cannot be matched to the real game's one by one, but what they show can be counted."""
    shares: dict[str, list[float]] = {}
    for block in blocks:
        flags = [reader.describe(f) for f in block[::every]]
        for key in flags[0]:
            shares.setdefault(key, []).append(round(float(np.mean([f[key] for f in flags])), 4))
    return shares
