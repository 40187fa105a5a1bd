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


def replayed_play(parts, n_frames: int, keep) -> tuple:
    """A recording as the real side of a session, for games no scripted agent plays: its ``parts`` (episodes or
    stretches of them: anything with ``length``, ``frames(a, b)`` and ``actions(a, b)``) one after another, from
    the start again when they run out, for ``n_frames`` steps after the first frame. Returns what
    ``scripted_play`` returns: (actions [n_frames, A] as recorded, kept {index: frame} for the indices in
    ``keep``). Where one part ends and the next begins the real picture jumps; Q scores blocks, not pairs of
    frames, and the model is driven by the same actions all the same."""
    parts = [p for p in parts if p.length > 0]
    if not parts:
        raise ValueError("replayed_play needs at least one non-empty part")
    ends = np.cumsum([p.length for p in parts])
    total = int(ends[-1])

    def locate(t: int) -> tuple:
        t %= total
        k = int(np.searchsorted(ends, t, side="right"))
        return parts[k], t - (int(ends[k - 1]) if k else 0)

    rows, t = [], 0
    while t < n_frames:  # whole parts' actions, in order, until the session is covered
        part, offset = locate(t)
        take = min(part.length - offset, n_frames - t)
        rows.append(part.actions(offset, offset + take))
        t += take
    kept = {}
    for i in sorted(keep):
        if 0 <= i <= n_frames:
            part, offset = locate(i)
            kept[i] = part.frames(offset, offset + 1)[0]
    return np.concatenate(rows).astype(np.float32), kept
