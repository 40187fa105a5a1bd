"""``rollingworld pipeline game=NAME budget=NAME out=DIR``: record -> codec -> teacher -> distill -> eval.

The budget (``configs/budget/<name>.yaml``) holds the settings of every stage, one section per stage; any of
them can be given on the command line (``budget.teacher.steps=100``). Every stage's settings are checked before
the first stage starts, so a typo costs seconds, not the hour of training before it. The stages and their
folders are ``runtime.pipeline``'s; this module adds the two that need the runtime: recording a scripted agent,
and ``rollingworld eval`` of the shipped student. The budget's ``eval`` section holds overrides of
``configs/eval.yaml`` (nested as there), so the stage makes the same report as
``rollingworld eval ckpt=OUT/distill/student.safetensors data=OUT/data out=OUT/eval`` with those settings.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import OmegaConf

from games.data.errors import InputError
from runtime.commands.game import build_game
from runtime.commands.model import to_dataclass

# settings of a stage that the pipeline itself gives (its paths and the run-wide settings)
OWNED = {"data", "out", "teacher", "codec", "init", "threads", "device", "seed", "resume", "progress"}
EVAL_OWNED = {"ckpt", "data", "out", "threads", "seed", "fresh", "progress"}  # the same for rollingworld eval
CODECS = ("pixels", "conv_ae")


@dataclass
class RecordConfig:
    """The recording stage: a scripted agent plays the game (``games.record.record_dataset``)."""
    episodes: int = 20
    frames: int = 1000  # frames per episode
    agent: str = "heuristic"  # random | heuristic
    chunk_frames: int = 256  # frames per chunk file


def _check_not_owned(stage: str, values: dict, owned_keys: set) -> None:
    owned = sorted(owned_keys & set(values))
    if owned:
        raise InputError(f"budget.{stage}: {', '.join(owned)} {'is' if len(owned) == 1 else 'are'} set by the "
                         f"pipeline, not the budget")


def _section(budget: dict, stage: str, cls, given: dict, drop=()):
    """The dataclass ``cls`` of the budget's section ``stage`` plus the pipeline's own ``given`` settings."""
    values = {k: v for k, v in (budget.get(stage) or {}).items() if k not in drop}
    _check_not_owned(stage, values, OWNED)
    try:
        return to_dataclass(cls, {**values, **given})
    except InputError as e:
        raise InputError(f"budget.{stage}: {e}") from None


def _record_stage(cfg, layout, settings: RecordConfig, skip: str):
    from games import make_agent
    from games.record import record_dataset
    from runtime.pipeline import Stage

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


# ------------------------------------------------------------------------------------------------- eval stage

def _flat(section: dict, prefix: str = "") -> dict:
    """Nested settings by dotted key: {"drift": {"minutes": 1}} -> {"drift.minutes": 1}."""
    flat = {}
    for key, value in section.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _literal(value) -> str:
    """``value`` as a hydra override writes it (strings quoted: a path may hold spaces, commas or ``=``)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(_literal, value)) + "]"
    if isinstance(value, str):
        return "'" + value.replace("'", "\\'") + "'"
    return "null" if value is None else str(value)


def _kind(value) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (list, tuple)) or OmegaConf.is_list(value):
        return "a list"
    if isinstance(value, dict) or OmegaConf.is_dict(value):
        return "a section"
    return "a string"


def _eval_config(cfg, budget: dict, layout, student: Path):
    """``rollingworld eval``'s composed config for ``student``: the budget's ``eval`` section and the pipeline's
    paths and run-wide settings as overrides of ``configs/eval.yaml``, checked as the other stages' settings are."""
    from runtime.cli import compose
    from runtime.commands.evaluate import SECTIONS
    from worldmodel.eval.evaluate import EVAL_MODES

    _check_not_owned("eval", budget.get("eval") or {}, EVAL_OWNED)
    values = _flat(budget.get("eval") or {})
    given = [f"ckpt={_literal(str(student))}", f"data={_literal(str(layout.data))}",
             f"out={_literal(str(layout.folder('eval')))}", f"seed={int(cfg.seed)}", f"threads={int(cfg.threads)}",
             f"progress={_literal(bool(cfg.progress))}", "fresh=false"]  # fresh=false: a rerun keeps finished parts
    defaults = compose("eval", given)
    absent = object()
    unknown = sorted(k for k in values if OmegaConf.select(defaults, k, default=absent) is absent)
    if unknown:
        raise InputError(f"budget.eval: unknown setting(s) {', '.join(unknown)} (the settings of configs/eval.yaml)")
    for key, value in values.items():
        want = _kind(OmegaConf.select(defaults, key))
        if _kind(value) != want:
            raise InputError(f"budget.eval.{key} must be {want}, got {value!r}")
    sections = values.get("sections", list(defaults.sections))
    if not sections or any(s not in SECTIONS for s in sections):
        raise InputError(f"budget.eval.sections must be a list from {', '.join(SECTIONS)}; got {sections}")
    if values.get("mode", "auto") not in EVAL_MODES:
        raise InputError(f"budget.eval.mode must be one of {', '.join(EVAL_MODES)}, got {values['mode']!r}")
    try:
        return compose("eval", given + [f"{k}={_literal(v)}" for k, v in values.items()])
    except InputError as e:
        raise InputError(f"budget.eval: {e}") from None


def _forget_stale_parts(folder: Path, student: Path, seed: int) -> None:
    """Before an interrupted evaluation in ``folder`` resumes: forget its finished sections when they are of an
    earlier student (the distill stage ran again since; ``rollingworld eval`` would keep them, as the path is the
    same) or of another seed, and the student's old path when the pipeline folder was moved."""
    parts = folder / "parts"
    header = parts / "header.json"
    if not header.exists():
        return
    old = json.loads(header.read_text())
    written = student.stat().st_mtime_ns
    for part in parts.glob("*.json"):
        if old.get("seed") != seed or part.stat().st_mtime_ns < written:
            part.unlink()
    if header.exists() and old.get("ckpt") != str(student):
        header.unlink()


def _eval_stage(layout, eval_cfg, student: Path):
    from runtime.pipeline import Stage

    def run(resume: bool) -> None:
        from runtime.commands.evaluate import run as evaluate

        if resume:
            _forget_stale_parts(layout.folder("eval"), student, int(eval_cfg.seed))
        try:
            evaluate(eval_cfg)
        except InputError as e:
            raise InputError(f"eval: {e}") from None

    return Stage("eval", OmegaConf.to_container(eval_cfg), run)


def _game_name(game_cfg) -> str:
    return f"gym:{game_cfg.env_id}" if game_cfg.name == "gym" else str(game_cfg.name)


def _action_space(cfg, layout, overrides):
    """The action space the teacher will be trained on: the given recording's, or the game's."""
    if not cfg.data:
        return build_game(cfg.game).action_space
    from games.data.recording import Recording

    rec = Recording(layout.data)
    if any(ov.split("=", 1)[0] == "game" for ov in overrides) and rec.game != _game_name(cfg.game):
        raise InputError(f"{cfg.data} is a recording of {rec.game}, not {_game_name(cfg.game)}: leave game= out "
                         f"with data=")
    return rec.action_space


def run(cfg, overrides=()) -> int:
    from worldmodel.checkpoint import check_action_space, load_checkpoint
    from worldmodel.distill.distiller import DistillConfig, check_config
    from worldmodel.eval.report import comparison_table
    from runtime.pipeline import Layout, codec_stage, distill_stage, run_stages, teacher_stage
    from worldmodel.train.teacher import TrainConfig
    from worldmodel.train.codec import CodecTrainConfig

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
    try:
        check_config(distill)
    except InputError as e:
        raise InputError(f"budget.distill: {e}") from None
    student = layout.shipped(distill.dmd_steps)
    evaluation = _eval_config(cfg, budget, layout, student)
    if teacher.clip_len <= distill.window:
        raise InputError(f"budget.teacher.clip_len ({teacher.clip_len}) must be larger than budget.distill.window "
                         f"({distill.window}): the student's window sees context frames the teacher was trained with")

    stages = [_record_stage(cfg, layout, record, skip=f"data= names the recording {data}" if cfg.data else ""),
              codec_stage(codec, skip=codec_skip), teacher_stage(teacher), distill_stage(distill),
              _eval_stage(layout, evaluation, student)]
    print(f"pipeline {layout.out}: {_game_name(cfg.game) if not cfg.data else data}, budget "
          f"{OmegaConf.select(cfg, 'budget.name', default='?')}")
    if not run_stages(layout, stages):
        return 1
    report = layout.folder("eval") / "report.md"
    table = comparison_table({student.stem: json.loads(report.with_suffix(".json").read_text())})
    print(f"student: {student}\nreport: {report}\n\n{table}")
    return 0
