"""``rollingworld play ckpt=FILE``: play a world model in a window at a fixed tick.

Without ``ckpt`` it plays the model bundled for ``game`` (``assets/<game>.safetensors``, made by
``rollingworld bundle``). A session starts from the start frames stored in the checkpoint, else from its game's
start screen. ``compare=true`` puts the real game beside it (``runtime.compare``); ``record=FILE.mp4`` saves the
frames shown and a JSONL sidecar that ``rollingworld replay`` regenerates them from (``runtime.session_record``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from games.data.errors import InputError
from runtime.config import EngineChoice, RuntimeSettings
from runtime.worlds import build_source, bundled_checkpoint, engine_config


@dataclass
class PlayConfig(EngineChoice):
    game: Any = None  # configs/game/<name>.yaml: with ckpt None, play the world model bundled for it (game=maze)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)  # the window, its tick, the controls
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
    from runtime.player import play_source

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
