"""``rollingworld play ckpt=FILE``: play a world model in a window at a fixed tick.

Without ``ckpt`` it plays the model bundled for ``game`` (``assets/<game>.safetensors``, made by
``rollingworld bundle``). A session starts from the start frames stored in the checkpoint, else from its game's
start screen. ``compare=true`` puts the real game beside it (``runtime.compare``); ``record=FILE.mp4`` saves the
frames shown and a JSONL sidecar that ``rollingworld replay`` regenerates them from (``runtime.session_record``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from games.data.errors import InputError
from runtime.config import EngineChoice, RuntimeSettings
from runtime.worlds import build_source, bundled_checkpoint, engine_config, game_name


@dataclass
class PlayConfig(EngineChoice):
    game: Any = None  # configs/game/<name>.yaml: with ckpt None, play the world model bundled for it (game=maze)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)  # the window, its tick, the controls
    ckpt: Optional[str] = None  # world model checkpoint; None = the bundled assets/<game>.safetensors
    compile: bool = False  # true: torch.compile the tick in the background while playing eager, then switch to it.
    #                        Off by default: on a 2-core CPU the bundled models' eager tick holds 30/s with a core
    #                        busy, and compiling costs seconds of late ticks for an ~11 % faster tick (docs/engine.md)
    threads: int = 1  # torch threads (the other core runs the window and input)
    seed: int = 0
    frames: Optional[int] = None  # stop after this many ticks
    agent: Optional[str] = None  # random (or, with compare=true, heuristic): a scripted agent plays
    headless: bool = False  # render offscreen with EGL instead of a window
    video: Optional[str] = None  # also write the frames shown to this mp4
    compare: bool = False  # real game (left) | world model (right), the same inputs from the game's start screen
    record: Optional[str] = None  # FILE.mp4: save the frames shown, plus FILE.jsonl beside it for rollingworld replay
    stats: Optional[str] = None  # FILE.json: the play-level measurement (ticks/s, overruns, tick p50/p99, first frame)


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
    from runtime.compare import GAP
    from runtime.player import open_display, play_source, show_loading
    from worldmodel.checkpoint import read_model_info

    if cfg.record and not cfg.record.endswith(".mp4"):
        raise InputError(f"record= takes an .mp4 path (the JSONL sidecar goes beside it), got {cfg.record}")
    ckpt = cfg.ckpt or bundled_checkpoint(game_name(cfg.game))
    info = read_model_info(ckpt)  # the header only: the window opens before the weights load
    h, w = info.frame_size
    frame_wh = (2 * w + GAP, h) if cfg.compare else (w, h)
    display = open_display(cfg, frame_wh, f"{info.game} (world model)")
    recorder = None
    try:
        show_loading(display, frame_wh, [f"loading {Path(ckpt).name}", f"{info.game}, {w}x{h}"])
        engine = engine_config(cfg, ckpt, background_compile=True, info=info)
        source = build_source(ckpt, engine, cfg.threads, cfg.compare, cfg.device)
        show_loading(display, frame_wh, [f"loaded {Path(ckpt).name}", "starting the world"])
        agent = _agent(cfg.agent, source, cfg.seed)
        if cfg.record:
            import torch

            from runtime.session_record import SessionRecorder, session_header

            header = session_header(ckpt, source.session, cfg.seed, torch.get_num_threads(), cfg.compare,
                                    cfg.record)
            source = recorder = SessionRecorder(source, cfg.record, header)
    except BaseException:
        display.close()
        raise
    loop_cfg = cfg.copy()
    loop_cfg.record = None  # play_source's own ``record`` is the game command's dataset episode
    try:
        return play_source(source, loop_cfg, agent, display=display)
    finally:
        if recorder is not None:
            recorder.close()
            if recorder.video.frames:
                print(f"recorded {recorder.ticks} ticks to {cfg.record} and {recorder.path}")
