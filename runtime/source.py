"""The seam between the play loop and what makes its frames: the ``FrameSource`` protocol.

The player (``runtime.player``), the kiosk, the ``game`` and ``play`` commands, session recording and replay drive
any frame source through these members and nothing else. The sources: a real game (``GameSource``, below), a world
model (``runtime.worlds.WorldSource``), both side by side (``runtime.compare.CompareSource``), and any of
these while it is recorded (``runtime.session_record.SessionRecorder``). Each declares the protocol as its base.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from games.base import Game
from games.data.actions import ActionSpace


class FrameSource(Protocol):
    """Deterministic uint8 [H, W, 3] frames, one per tick, each the result of the action held during the tick."""

    name: str  # what the window title shows; its first word names screenshots
    width: int  # frame width in pixels
    height: int  # frame height in pixels
    fps: float  # the source's own tick rate
    action_space: ActionSpace  # the actions ``step`` takes
    default_bindings: dict[str, tuple[str, ...]]  # action key name -> pygame key names (resolved by runtime.input)
    latency_ticks: int  # ticks from an action to the first frame that shows it (1: the next frame)
    game: Game | None  # the real game stepped in lockstep, whose state scripted agents read (None: a model alone)
    t: int  # ticks since the last reset (scripted agents read it to notice a reset)

    def reset(self, seed: int, start_seed: int | None = None) -> np.ndarray:
        """Start from start ``start_seed`` (default ``seed``), sampling any noise from ``seed``; the first frame."""

    def step(self, action: np.ndarray) -> np.ndarray:
        """Advance one tick holding ``action`` (a vector of ``action_space``); the next frame."""


class GameSource(FrameSource):
    """A real game as a frame source. A game has no sampling noise: its seed *is* its start, so a restart from
    the same start replays ``game.reset(start)``."""

    def __init__(self, game: Game):
        self.game = game
        self.name, self.width, self.height, self.fps = game.name, game.width, game.height, game.fps
        self.action_space, self.default_bindings = game.action_space, game.default_bindings
        self.latency_ticks = 1  # a game shows an action's effect on the very next frame

    @property
    def t(self) -> int:
        return self.game.t

    def reset(self, seed: int, start_seed: int | None = None) -> np.ndarray:
        return self.game.reset(seed if start_seed is None else start_seed)

    def step(self, action: np.ndarray) -> np.ndarray:
        return self.game.step(action)
