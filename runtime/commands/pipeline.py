"""``rollingworld pipeline game=NAME budget=NAME out=DIR``: record -> codec -> teacher -> distill -> eval.

The budget (``configs/budget/<name>.yaml``) holds the settings of every stage, one section per stage; any of
them can be given on the command line (``budget.teacher.steps=100``). Every stage's settings are checked before
the first stage starts, so a typo costs seconds, not the hour of training before it. The stages and their
folders are ``worldmodel.pipeline``'s; this module adds the one that needs a game: recording a scripted agent.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import OmegaConf

from games.errors import InputError
from runtime.commands.game import build_game
from runtime.commands.model import to_dataclass

# settings of a stage that the pipeline itself gives (its paths and the run-wide settings)
OWNED = {"data", "out", "teacher", "codec", "init", "threads", "device", "seed", "resume", "progress"}
CODECS = ("pixels", "conv_ae")


@dataclass
class RecordConfig:
    """The recording stage: a scripted agent plays the game (``games.record.record_dataset``)."""
    episodes: int = 20
    frames: int = 1000  # frames per episode
    agent: str = "heuristic"  # random | heuristic
    chunk_frames: int = 256  # frames per chunk file


def _section(budget: dict, stage: str, cls, given: dict, drop=()):
    """The dataclass ``cls`` of the budget's section ``stage`` plus the pipeline's own ``given`` settings."""
    values = {k: v for k, v in (budget.get(stage) or {}).items() if k not in drop}
    owned = sorted(OWNED & set(values))
    if owned:
        raise InputError(f"budget.{stage}: {', '.join(owned)} {'is' if len(owned) == 1 else 'are'} set by the "
                         f"pipeline, not the budget")
    try:
        return to_dataclass(cls, {**values, **given})
    except InputError as e:
        raise InputError(f"budget.{stage}: {e}") from None


def _record_stage(cfg, layout, settings: RecordConfig, skip: str):
    from games import make_agent
    from games.record import record_dataset
    from worldmodel.pipeline import Stage

    game_config = OmegaConf.to_container(cfg.game)

    def run(resume: bool) -> None:
        summary = record_dataset(layout.data, game_factory=lambda: build_game(cfg.game), agent_name=settings.agent,
                                 episodes=settings.episodes, frames=settings.frames, seed=int(cfg.seed),
                                 chunk_frames=settings.chunk_frames, progress=bool(cfg.progress),
                                 source={"game_config": game_config, "pipeline": str(layout.out)})
        print(summary.line())

    if not skip:  # a bad game or agent fails now, before any stage runs
        make_agent(settings.agent, build_game(cfg.game), int(cfg.seed))
    return Stage("record", {"game": game_config, **asdict(settings), "seed": int(cfg.seed)}, run, skip)


def _game_name(game_cfg) -> str:
    return f"gym:{game_cfg.env_id}" if game_cfg.name == "gym" else str(game_cfg.name)


def _action_space(cfg, layout, overrides):
    """The action space the teacher will be trained on: the given recording's, or the game's."""
    if not cfg.data:
        return build_game(cfg.game).action_space
    from games.recording import Recording

    rec = Recording(layout.data)
    if any(ov.split("=", 1)[0] == "game" for ov in overrides) and rec.game != _game_name(cfg.game):
        raise InputError(f"{cfg.data} is a recording of {rec.game}, not {_game_name(cfg.game)}: leave game= out "
                         f"with data=")
    return rec.action_space


def run(cfg, overrides=()) -> int:
    from worldmodel.checkpoint import check_action_space, load_checkpoint
    from worldmodel.distill import DistillConfig, check_config
    from worldmodel.pipeline import (EvalConfig, Layout, codec_stage, distill_stage, eval_stage, run_stages,
                                     teacher_stage)
    from worldmodel.train import TrainConfig
    from worldmodel.train_codec import CodecTrainConfig

    budget = OmegaConf.to_container(cfg.budget)
    layout = Layout.of(cfg.out, cfg.data)
    seed, threads, progress = int(cfg.seed), int(cfg.threads), bool(cfg.progress)
    run_wide = {"threads": threads, "seed": seed, "progress": progress}
    data = str(layout.data)
    init = str(Path(cfg.init).resolve()) if cfg.init else ""

    space = _action_space(cfg, layout, overrides)
    if init:  # a fine-tune: the checkpoint must know these controls (checked before recording anything)
        check_action_space(load_checkpoint(init, expect="teacher"), space)
    codec_type = (budget.get("codec") or {}).get("type", "pixels")
    if codec_type not in CODECS:
        raise InputError(f"budget.codec.type must be one of {', '.join(CODECS)}, got {codec_type!r}")
    codec_skip = ""
    if init:
        codec_skip = "init= brings its codec"
    elif codec_type == "pixels":
        codec_skip = "budget.codec.type=pixels: the teacher works on pixel patches"

    record = _section(budget, "record", RecordConfig, {})
    codec = _section(budget, "codec", CodecTrainConfig, {"data": data, "out": str(layout.folder("codec")),
                                                         **run_wide}, drop=("type",))
    teacher = _section(budget, "teacher", TrainConfig, {
        "data": data, "out": str(layout.folder("teacher")), "init": init,
        "codec": str(layout.codec) if not codec_skip else "pixels", "device": str(cfg.device), **run_wide})
    distill = _section(budget, "distill", DistillConfig, {
        "teacher": str(layout.teacher), "data": data, "out": str(layout.folder("distill")),
        "device": str(cfg.device), **run_wide})
    evaluation = _section(budget, "eval", EvalConfig, {})
    try:
        check_config(distill)
    except InputError as e:
        raise InputError(f"budget.distill: {e}") from None
    if teacher.clip_len <= distill.window:
        raise InputError(f"budget.teacher.clip_len ({teacher.clip_len}) must be larger than budget.distill.window "
                         f"({distill.window}): the student's window sees context frames the teacher was trained with")

    stages = [_record_stage(cfg, layout, record, skip=f"data= names the recording {data}" if cfg.data else ""),
              codec_stage(codec, skip=codec_skip), teacher_stage(teacher), distill_stage(distill),
              eval_stage(layout, evaluation, seed=seed, threads=threads)]
    print(f"pipeline {layout.out}: {_game_name(cfg.game) if not cfg.data else data}, budget "
          f"{OmegaConf.select(cfg, 'budget.name', default='?')}")
    if not run_stages(layout, stages):
        return 1
    shipped = [path for path in layout.students.values() if path.exists()][-1]  # after DMD, if it ran
    summary = layout.folder("eval") / "summary.md"
    print(f"student: {shipped}\nsummary: {summary}\n\n{summary.read_text()}", end="")
    return 0
