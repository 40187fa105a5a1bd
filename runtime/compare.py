"""Compare mode: the real game and the world model side by side, fed the same inputs from the same start frame.

``CompareSource`` is a frame source like any other (``runtime.source.FrameSource``), so the play loop, recording
and replay need nothing special for it. Each tick it steps both and returns one frame: the real game on the left,
the world model on the right, a thin white separator between.

Latency: the world model shows the effect of an action ``latency_ticks`` steps later than the game (Rolling
Forcing: the frame that carries an action enters the window as noise and leaves it clean W ticks later). The dream
pane is what the model shows *now*, as a player would see it; it is not shifted to line up with the game, so a
paddle that starts moving on the left at tick t starts moving on the right at about tick t + ``latency_ticks``.
"""
from __future__ import annotations

import numpy as np

from games.data.errors import InputError
from games.data.video import hstack
from runtime.source import FrameSource

GAP = 2  # pixels of separator between the panes


class CompareSource(FrameSource):
    """Real game (left) | world model (right). ``game`` must have the session's frame size and controls."""

    def __init__(self, game, session):
        from worldmodel.checkpoint import check_action_space

        if (game.height, game.width) != tuple(session.frame_size):
            raise InputError(f"game {game.name} makes {game.width}x{game.height} frames, the world model "
                             f"{session.frame_size[1]}x{session.frame_size[0]}")
        check_action_space(session.info, game.action_space)
        self.game, self.session = game, session
        self.name = f"{game.name}: real | world model"
        self.height, self.width = game.height, 2 * game.width + GAP
        self.fps = game.fps
        self.action_space = game.action_space
        self.default_bindings = game.default_bindings

    @property
    def t(self) -> int:
        """The real game's tick (scripted agents read it to notice a reset)."""
        return self.game.t

    @property
    def latency_ticks(self) -> int:
        return self.session.latency_ticks

    def reset(self, seed: int, start_seed: int | None = None) -> np.ndarray:
        """Both start from the game's start screen of ``start_seed`` (default ``seed``); the model samples its
        noise from ``seed``. Returns [H, 2W + GAP, 3]."""
        real = self.game.reset(seed if start_seed is None else start_seed)
        return hstack(real, self.session.reset(real, seed=seed), gap=GAP)

    def step(self, action) -> np.ndarray:
        return hstack(self.game.step(action), self.session.step(action), gap=GAP)
