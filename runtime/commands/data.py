"""Data commands: ``record``, ``check``, ``import``, ``export``."""
from __future__ import annotations

import sys

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import OmegaConf

from games.data.actions import ActionSpace
from games.data.errors import InputError
from runtime.config import RecordingPlan, build_game


@dataclass
class RecordConfig(RecordingPlan):
    game: Any = None  # configs/game/<name>.yaml (game=pong)
    out: str = "???"  # dataset folder
    seed: int = 0  # episode i uses seed + i
    progress: bool = True


@dataclass
class CheckConfig:
    data: Optional[str] = None  # a dataset to verify
    ckpt: Optional[str] = None  # a checkpoint to describe


@dataclass
class ImportConfig:
    video: str = "???"  # the video (mp4)
    actions: str = "???"  # its per-frame action log (JSONL)
    out: str = "???"  # the dataset: a new one, or an existing one the episode is added to
    width: Optional[int] = None  # frame size; None = the existing dataset's, else 64
    height: Optional[int] = None
    fps: Optional[float] = None  # output rate; None = the video's rate
    name: Optional[str] = None  # game name stored in the dataset; None = the dataset's, else imported
    keys: Any = None  # action keys in vector order, e.g. [W,A,S,D] (or one key); None = inferred from the log
    mouse: Optional[bool] = None  # None = inferred from the log
    mouse_scale: float = 20.0  # pixels of motion in one tick that count as full deflection
    chunk_frames: int = 256
    progress: bool = True


@dataclass
class ExportConfig:
    data: str = "???"  # the dataset
    out: str = "???"  # mp4; the action log goes beside it as JSONL
    episode: Any = 0  # index or folder name
    scale: int = 4  # integer upscaling (nearest) so small frames are watchable


def record(cfg) -> int:
    from games.record import record_dataset

    from games.agents import agent_name, make_agent

    game = build_game(cfg.game)
    agent = agent_name(cfg.agent, game)  # auto: the game's heuristic agent where it has one, else random
    make_agent(agent, game, cfg.seed)  # fail on a bad game or agent before writing
    summary = record_dataset(cfg.out, game_factory=lambda: build_game(cfg.game), agent_name=agent,
                             episodes=cfg.episodes, frames=cfg.frames, seed=cfg.seed,
                             chunk_frames=cfg.chunk_frames, progress=cfg.progress,
                             source={"game_config": OmegaConf.to_container(cfg.game)})
    print(summary.line())
    return 0


def check(cfg) -> int:
    if cfg.ckpt:
        from worldmodel.checkpoint import describe_checkpoint

        for line in describe_checkpoint(cfg.ckpt):
            print(line)
        if not cfg.data:
            return 0
    if not cfg.data:
        raise InputError("say what to check: data=DIR or ckpt=FILE")
    from games.record import check_dataset

    report = check_dataset(cfg.data)
    for line in report.lines():
        print(line)
    return 1 if report.damaged else 0


def import_(cfg) -> int:
    from games.data.video import import_video

    space = None
    if cfg["keys"] is not None:
        keys = [cfg["keys"]] if isinstance(cfg["keys"], str) else list(cfg["keys"])
        space = ActionSpace(keys=tuple(keys), mouse=bool(cfg.mouse), mouse_scale=cfg.mouse_scale)
    elif cfg.mouse is not None:
        raise InputError("mouse= needs keys= too (or leave both to be inferred from the log)")
    summary = import_video(cfg.video, cfg.actions, cfg.out, width=cfg.width, height=cfg.height, fps=cfg.fps,
                           action_space=space, game=cfg.name, chunk_frames=cfg.chunk_frames,
                           progress=cfg.progress)
    print(f"{summary.root}: episode {summary.episode}, {summary.frames} frames at {summary.fps:g} fps "
          f"(from {summary.source_frames} video frames at {summary.source_fps:g} fps)")
    for warning in summary.warnings:
        print(f"rollingworld import: warning: {warning}", file=sys.stderr)
    return 0


def export(cfg) -> int:
    from games.data.video import export_mp4

    out = export_mp4(cfg.data, cfg.out, episode=cfg.episode, scale=cfg.scale)
    print(f"wrote {out}")
    return 0
