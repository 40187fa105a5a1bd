"""``rollingworld play ckpt=FILE``: play a world model in a window at a fixed tick.

Without ``ckpt`` it plays the model bundled for ``game`` (``assets/<game>.safetensors``, made by
``rollingworld bundle``). A session starts from the start frames stored in the checkpoint, else from its game's
start screen. ``compare=true`` puts the real game beside it (``runtime.compare``); ``record=FILE.mp4`` saves the
frames shown and a JSONL sidecar that ``rollingworld replay`` regenerates them from (``runtime.session_record``).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from games.data.errors import InputError
from runtime.compare import CompareSource
from runtime.config import EngineChoice
from runtime.source import FrameSource
from runtime.worlds import checkpoint_game, engine_config, load_session, stored_start

@dataclass
class PlayConfig(EngineChoice):
    game: Any = None  # configs/game/<name>.yaml: with ckpt None, play the world model bundled for it (game=maze)
    runtime: Any = None  # configs/runtime/default.yaml: the window, its tick, the controls
    ckpt: Optional[str] = None  # world model checkpoint; None = the bundled assets/<game>.safetensors
    compile: bool = True  # torch.compile the fixed-shape rolling tick at start-up: ~1.3x faster ticks; the first
    #                       start compiles for about a minute, later ones reuse the cache (~10 s). false: at once
    threads: int = 1  # torch threads (the other core runs the window and input)
    seed: int = 0
    frames: Optional[int] = None  # stop after this many ticks
    agent: Optional[str] = None  # random (or, with compare=true, heuristic): a scripted agent plays
    headless: bool = False  # render offscreen with EGL instead of a window
    video: Optional[str] = None  # also write the frames shown to this mp4
    compare: bool = False  # real game (left) | world model (right), the same inputs from the game's start screen
    record: Optional[str] = None  # FILE.mp4: save the frames shown, plus FILE.jsonl beside it for rollingworld replay


ASSETS = Path(__file__).resolve().parents[2] / "assets"  # the bundled models, beside the packages (not the cwd)


def bundled_checkpoint(game: str) -> Path:
    """``assets/<game>.safetensors``: the world model bundled for ``game``, or an InputError naming those there are."""
    path = ASSETS / f"{game}.safetensors"
    if not path.is_file():
        have = sorted(p.stem for p in ASSETS.glob("*.safetensors"))
        raise InputError(f"no world model is bundled for {game!r} (bundled: {', '.join(have) or 'none'}; "
                         f"in {ASSETS}): give ckpt=FILE")
    return path


class WorldSource(FrameSource):
    """A world model as a frame source for the play loop: ``reset(seed)`` starts from the start frames stored in
    the checkpoint, else from its game's start screen."""

    def __init__(self, session):
        self.session = session
        self.game_name = session.info.game or "world"
        self.name = f"{self.game_name} (world model)"
        self.height, self.width = session.frame_size
        self.fps = session.info.fps
        self.action_space = session.action_space
        self.default_bindings = {}
        self.game = None  # a world model alone: no real game steps beside it
        try:
            self._start_game = checkpoint_game(session)  # makes the start screens when the checkpoint stores none
            self.default_bindings = self._start_game.default_bindings
        except InputError:
            self._start_game = None
        self.t = 0  # ticks since the last reset

    @property
    def latency_ticks(self) -> int:
        return self.session.latency_ticks

    def reset(self, seed: int, start_seed: int | None = None) -> np.ndarray:
        """Start from start ``start_seed`` (default ``seed``), sampling noise from ``seed``: the checkpoint's stored
        start sequence ``start_seed % K``, else the game's start screen of ``start_seed``."""
        pick = seed if start_seed is None else start_seed
        start = stored_start(self.session, pick)
        if start is None:
            if self._start_game is None:
                raise InputError(f"the checkpoint's game {self.game_name!r} is not one of ours and it holds no start "
                                 "frames (rollingworld bundle stores them): use rollingworld dream start=IMAGE")
            start = self._start_game.reset(pick)
        self.t = 0
        cfg = self.session.cfg
        if cfg.compile and cfg.rolling and not self.session.compiled:
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
    from games.agents import RandomAgent, make_agent

    if not name:
        return None
    if source.game is not None:  # compare mode: any agent can read the real game's state
        return make_agent(name, source.game, seed)
    if name != "random":
        raise InputError("a world model alone can only be driven by agent=random (a heuristic needs the real game: "
                         "add compare=true)")
    return RandomAgent(source, seed)


def run(cfg) -> int:
    from runtime.commands.game import play_source

    if cfg.record and not cfg.record.endswith(".mp4"):
        raise InputError(f"record= takes an .mp4 path (the JSONL sidecar goes beside it), got {cfg.record}")
    ckpt = cfg.ckpt or bundled_checkpoint(cfg.game.name if cfg.game.name != "gym" else f"gym:{cfg.game.env_id}")
    source = build_source(ckpt, engine_config(cfg, ckpt), cfg.threads, cfg.compare)
    agent = _agent(cfg.agent, source, cfg.seed)
    recorder = None
    if cfg.record:
        import torch

        from runtime.session_record import SessionRecorder, session_header

        header = session_header(ckpt, source.session, cfg.seed, torch.get_num_threads(), cfg.compare, cfg.record)
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
