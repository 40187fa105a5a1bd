"""A real game played by a scripted agent, kept in memory: the real side of an evaluation session.

``rollingworld eval`` drives the world model with the actions of such a session and scores its frames against the
real ones (``worldmodel.eval.drift``); only the frames it asks for are kept, so that a ten-minute session does not
hold eighteen thousand frames.
"""
from __future__ import annotations

import numpy as np

from games.agents import make_agent
from games.registry import make_game


def scripted_play(game_name: str, agent: str, n_frames: int, seed: int, size: tuple[int, int], keep) -> tuple:
    """The real game played by the scripted ``agent`` for ``n_frames`` steps after its reset frame.

    Returns (actions [n_frames, A]: action t was held while frame t was shown and produced frame t + 1, as a
    recording stores them; kept {index: frame} for the indices in ``keep`` (frame 0 is the reset frame))."""
    h, w = size
    game = make_game(game_name, width=w, height=h)
    player = make_agent(agent, game, seed)
    kept = {}
    frame = game.reset(seed)
    actions = np.zeros((n_frames, game.action_space.size), np.float32)
    for t in range(n_frames + 1):
        if t in keep:
            kept[t] = frame
        if t == n_frames:
            break
        actions[t] = player.act()
        frame = game.step(actions[t])
    return actions, kept
