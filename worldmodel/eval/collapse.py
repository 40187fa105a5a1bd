"""A collapse detector: which generated frames have left the game, read from their colours alone.

A world model that falls apart ends in frames no real frame looks like: smeared colours the game never draws, or
one flat colour over the whole screen (the maze's green field). Q (``quality``) can score such a field close to a
sharp real frame, so the detector counts frames instead, against what the game's own frames do:

- **off-palette pixels**: colours quantised to 16 levels a channel; a colour is in the palette when it covers at
  least ``min_share`` of the real pixels. A frame is off when more than ``max_off`` of its pixels are outside.
- **one colour everywhere**: a frame whose most common colour covers more of it than in any real frame (the
  largest share seen, plus ``margin``).

``collapsed(frames)`` is the share of frames that are either. On real frames it is 0 by construction of the second
test and near 0 for the first; it is reported per block of a long session beside the real game's own figure.
"""
from __future__ import annotations

import numpy as np

LEVELS = 16  # quantisation levels a channel: 4,096 colours


def _codes(frames: np.ndarray) -> np.ndarray:
    """Quantised colour code of every pixel: uint8 [N, H, W, 3] -> int [N, H*W]."""
    q = (np.asarray(frames, np.uint16) * LEVELS // 256).reshape(len(frames), -1, 3)
    return (q[..., 0] * LEVELS + q[..., 1]) * LEVELS + q[..., 2]


class CollapseDetector:
    """Fitted on real frames uint8 [N, H, W, 3] of a game (see the module docstring)."""

    def __init__(self, real_frames: np.ndarray, min_share: float = 1e-4, max_off: float = 0.1, margin: float = 0.02):
        codes = _codes(real_frames)
        counts = np.bincount(codes.ravel(), minlength=LEVELS ** 3)
        self.palette = counts >= min_share * codes.size  # [4096] colours the game draws
        self.max_off = max_off
        self.flat_limit = min(1.0, float(self._dominant(codes).max()) + margin)

    @staticmethod
    def _dominant(codes: np.ndarray) -> np.ndarray:
        """Share of each frame covered by its most common colour, [N]."""
        return np.array([np.bincount(c).max() / c.size for c in codes])

    def off_palette(self, frames: np.ndarray) -> np.ndarray:
        """Share of each frame's pixels whose colour the game never draws, [N]."""
        return (~self.palette[_codes(frames)]).mean(axis=1)

    def collapsed_frames(self, frames: np.ndarray) -> np.ndarray:
        """Which frames have left the game, bool [N]."""
        codes = _codes(frames)
        return ((~self.palette[codes]).mean(axis=1) > self.max_off) | (self._dominant(codes) > self.flat_limit)

    def collapsed(self, frames: np.ndarray) -> float:
        """The share of ``frames`` that have left the game."""
        return float(self.collapsed_frames(frames).mean()) if len(frames) else 0.0
