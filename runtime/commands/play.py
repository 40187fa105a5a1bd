"""``rollingworld play ckpt=FILE``: play a world model in a window at a fixed tick.

Without ``ckpt`` it plays the model bundled for ``game`` (``assets/<game>.safetensors``, made by
``rollingworld bundle``). A session starts from the start frames stored in the checkpoint, else from its game's
start screen. ``compare=true`` puts the real game beside it (``runtime.compare``); ``record=FILE.mp4`` saves the
frames shown and a JSONL sidecar that ``rollingworld replay`` regenerates them from (``runtime.session_record``).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from games.data.errors import InputError
from runtime.compare import CompareSource

ASSETS = Path(__file__).resolve().parents[2] / "assets"  # the bundled models, beside the packages (not the cwd)


def bundled_checkpoint(game: str) -> Path:
    """``assets/<game>.safetensors``: the world model bundled for ``game``, or an InputError naming those there are."""
    path = ASSETS / f"{game}.safetensors"
    if not path.is_file():
        have = sorted(p.stem for p in ASSETS.glob("*.safetensors"))
        raise InputError(f"no world model is bundled for {game!r} (bundled: {', '.join(have) or 'none'}; "
                         f"in {ASSETS}): give ckpt=FILE")
    return path


def load_session(ckpt, engine_cfg, threads: int):
    """The ``WorldSession`` of ``ckpt`` with torch on ``threads`` threads (0: torch's default)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # measured: spinning OpenMP threads collapse
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    from worldmodel.engine.session import WorldSession

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
    """A world model as a frame source for the play loop: ``reset(seed)`` starts from the start frames stored in
    the checkpoint, else from its game's start screen."""

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
        """Start from start ``start_seed`` (default ``seed``), sampling noise from ``seed``: the checkpoint's stored
        start sequence ``start_seed % K``, else the game's start screen of ``start_seed``."""
        from runtime.commands.world import stored_start

        pick = seed if start_seed is None else start_seed
        start = stored_start(self.session, pick)
        if start is None:
            if self._game is None:
                raise InputError(f"the checkpoint's game {self.game_name!r} is not one of ours and it holds no start "
                                 "frames (rollingworld bundle stores them): use rollingworld dream start=IMAGE")
            start = self._game.reset(pick)
        self.t = 0
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
    ckpt = cfg.ckpt or bundled_checkpoint(cfg.game.name if cfg.game.name != "gym" else f"gym:{cfg.game.env_id}")
    source = build_source(ckpt, _engine_config(cfg, ckpt), int(cfg.threads), bool(cfg.compare))
    agent = _agent(cfg.agent, source, int(cfg.seed))
    recorder = None
    if cfg.record:
        import torch

        from runtime.session_record import SessionRecorder, session_header

        header = session_header(ckpt, source.session, int(cfg.seed), torch.get_num_threads(),
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
