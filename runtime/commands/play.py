"""``rollingworld play ckpt=FILE``: play a world model in a window at a fixed tick.

``compare=true`` puts the real game beside it (``runtime.compare``); ``record=FILE.mp4`` saves the frames shown
and a JSONL sidecar that ``rollingworld replay`` regenerates them from (``runtime.session_record``).
"""
from __future__ import annotations

import os
import sys

import numpy as np

from games.errors import InputError
from runtime.compare import CompareSource


def load_session(ckpt, engine_cfg, threads: int):
    """The ``WorldSession`` of ``ckpt`` with torch on ``threads`` threads (0: torch's default)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # measured: spinning OpenMP threads collapse
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    from worldmodel.engine import WorldSession

    return WorldSession.from_checkpoint(ckpt, engine_cfg)


def checkpoint_game(session):
    """The real game the session's checkpoint was trained on, at the model's frame size (or an InputError)."""
    from games import make_game

    name = session.metadata["provenance"].get("game")
    h, w = session.frame_size
    try:
        return make_game(str(name), width=w, height=h)
    except InputError as e:
        raise InputError(f"cannot build the checkpoint's game {name!r}: {e}") from None


class WorldSource:
    """A world model as a frame source for the play loop: ``reset(seed)`` starts from the game's start screen."""

    def __init__(self, session):
        self.session = session
        meta = session.metadata
        self.game_name = meta["provenance"].get("game", "world")
        self.name = f"{self.game_name} (world model)"
        self.height, self.width = session.frame_size
        self.fps = int(meta.get("frame", {}).get("fps", 30))
        self.action_space = session.action_space
        self.default_bindings = {}
        try:
            self._game = checkpoint_game(session)
            self.default_bindings = self._game.default_bindings
        except InputError:
            self._game = None
        self.t = 0  # for scripted agents

    @property
    def latency_ticks(self) -> int:
        return self.session.latency_ticks

    def reset(self, seed: int, start_seed: int | None = None) -> np.ndarray:
        """Start from the game's start screen of ``start_seed`` (default ``seed``), sampling noise from ``seed``."""
        if self._game is None:
            raise InputError(f"the checkpoint's game {self.game_name!r} is not one of ours, so it has no start "
                             "screen: use rollingworld dream start=IMAGE")
        self.t = 0
        start = self._game.reset(seed if start_seed is None else start_seed)
        cfg = self.session.cfg
        if cfg.compile and cfg.mode.startswith("rolling") and not self.session.compiled:
            print("compiling the world model's tick (about a minute the first time, seconds once cached; "
                  "compile=false starts at once)", file=sys.stderr, flush=True)
        return self.session.reset(start, seed=seed)

    def step(self, action) -> np.ndarray:
        self.t += 1
        return self.session.step(action)


def build_source(ckpt, engine_cfg, threads: int, compare: bool):
    """The frame source ``play`` shows (and ``replay`` rebuilds): the world model, or real game | world model."""
    session = load_session(ckpt, engine_cfg, threads)
    if compare:
        return CompareSource(checkpoint_game(session), session)
    return WorldSource(session)


def _agent(name, source, seed: int):
    from games import make_agent
    from games.agents import RandomAgent

    if not name:
        return None
    if isinstance(source, CompareSource):  # any agent can read the real game's state
        return make_agent(name, source.game, seed)
    if name != "random":
        raise InputError("a world model alone can only be driven by agent=random (a heuristic needs the real game: "
                         "add compare=true)")
    return RandomAgent(source, seed)


def run(cfg) -> int:
    from runtime.commands.game import play_source
    from runtime.commands.world import _engine_config

    if cfg.record and not str(cfg.record).endswith(".mp4"):
        raise InputError(f"record= takes an .mp4 path (the JSONL sidecar goes beside it), got {cfg.record}")
    source = build_source(cfg.ckpt, _engine_config(cfg), int(cfg.threads), bool(cfg.compare))
    agent = _agent(cfg.agent, source, int(cfg.seed))
    recorder = None
    if cfg.record:
        import torch

        from runtime.session_record import SessionRecorder, session_header

        header = session_header(cfg.ckpt, source.session, int(cfg.seed), torch.get_num_threads(),
                                bool(cfg.compare), cfg.record)
        source = recorder = SessionRecorder(source, cfg.record, header)
    loop_cfg = cfg.copy()
    loop_cfg.record = None  # play_source's own ``record`` is the game command's dataset episode
    try:
        return play_source(source, loop_cfg, agent)
    finally:
        if recorder is not None:
            recorder.close()
            if recorder.video.frames:
                print(f"recorded {recorder.ticks} ticks to {cfg.record} and {recorder.path}")
