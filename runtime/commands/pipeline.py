"""``rollingworld pipeline game=NAME budget=NAME out=DIR``: record -> codec -> teacher -> distill -> eval.

The budget (``configs/budget/<name>.yaml``, typed by ``Budget``) holds the settings of every stage, one section
per stage, whose defaults are the stage's own dataclass's: a budget file gives only what differs. Any of them can
be given on the command line (``budget.teacher.steps=100``). Hydra checks their types as it composes, and the
stages' checks run before the first stage starts, so a typo costs seconds, not the hour of training before it. The
stages and their folders are ``runtime.pipeline``'s; this module adds the two that need the runtime: recording a
scripted agent, and ``rollingworld eval`` of the shipped student. The budget's ``eval`` section is typed by
``EvalSettings`` (``runtime.evaluation``), so the stage makes the same report as
``rollingworld eval ckpt=OUT/distill/student.safetensors data=OUT/data out=OUT/eval`` with those settings.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, make_dataclass, replace
from pathlib import Path
from typing import Any, get_type_hints

from omegaconf import OmegaConf

from games.data.errors import InputError
from runtime.config import RecordingPlan, build_game
from runtime.evaluation import EvalConfig, EvalSettings, check_settings
from worldmodel.distill.distiller import DistillConfig
from worldmodel.train.codec import CodecTrainConfig
from worldmodel.train.teacher import TrainConfig

# settings of a stage that the pipeline itself gives (its paths and the run-wide settings)
OWNED = {"data", "out", "teacher", "codec", "init", "threads", "device", "seed", "resume", "progress"}
EVAL_OWNED = {"ckpt", "data", "out", "threads", "seed", "fresh", "progress"}  # the same for rollingworld eval
CODECS = ("pixels", "conv_ae")


@dataclass
class CodecChoice:
    """The codec stage's own setting, beside ``CodecTrainConfig``'s."""
    type: str = "pixels"  # conv_ae: train the autoencoder (the codec stage) | pixels: pixel patches, no codec stage


def _budget_section(cls, name: str, *bases):
    """A dataclass of the settings a budget gives the stage that runs ``cls``: all of ``cls``'s, with their types
    and defaults, but those the pipeline owns."""
    types = get_type_hints(cls)
    return make_dataclass(name, [(f.name, types[f.name], field(default=f.default, default_factory=f.default_factory))
                                 for f in fields(cls) if f.name not in OWNED], bases=bases)


CodecBudget = _budget_section(CodecTrainConfig, "CodecBudget", CodecChoice)
TeacherBudget = _budget_section(TrainConfig, "TeacherBudget")
DistillBudget = _budget_section(DistillConfig, "DistillBudget")


@dataclass
class Budget:
    """``configs/budget/<name>.yaml``: how much each stage does; what a budget file leaves out is the default of
    the stage's dataclass."""
    name: str = ""
    record: RecordingPlan = field(default_factory=RecordingPlan)
    codec: CodecBudget = field(default_factory=CodecBudget)
    teacher: TeacherBudget = field(default_factory=TeacherBudget)
    distill: DistillBudget = field(default_factory=DistillBudget)
    eval: EvalSettings = field(default_factory=EvalSettings)  # rollingworld eval of the shipped student


@dataclass
class PipelineConfig:
    game: Any = None  # configs/game/<name>.yaml (game=pong): the game recorded
    budget: Budget = field(default_factory=Budget)  # configs/budget/<name>.yaml (budget=cpu)
    out: str = "???"  # pipeline folder: data/ codec/ teacher/ distill/ eval/
    data: str = ""  # an existing recording to train on instead of recording one (the game is the recording's)
    init: str = ""  # fine-tune: the teacher starts from this teacher checkpoint (and its codec; no codec stage)
    threads: int = 0  # torch threads of every stage (0 = torch's default)
    device: str = "auto"  # auto | cpu | cuda, for the teacher and the distillation
    seed: int = 0  # of every stage (recording: episode i plays seed + i)
    progress: bool = True


def _check_not_owned(stage: str, keys, owned_keys: set) -> None:
    owned = sorted(owned_keys & set(keys))
    if owned:
        raise InputError(f"budget.{stage}: {', '.join(owned)} {'is' if len(owned) == 1 else 'are'} set by the "
                         f"pipeline, not the budget")


def _section(cfg, stage: str, cls, given: dict, drop=()):
    """The dataclass ``cls`` of the budget's section ``stage`` plus the pipeline's own ``given`` settings. The
    section was typed as hydra composed it; a key beyond its fields came from ``+budget.<stage>.<key>=``."""
    section = cfg.budget[stage]
    values = OmegaConf.to_container(section)
    extra = set(values) - {f.name for f in fields(OmegaConf.get_type(section))}
    _check_not_owned(stage, extra, OWNED)
    if extra:
        raise InputError(f"budget.{stage}: unknown setting(s) {', '.join(sorted(extra))}")
    try:
        return cls(**{k: v for k, v in values.items() if k not in drop}, **given)
    except InputError as e:  # the dataclass's own checks (TrainConfig: the model size)
        raise InputError(f"budget.{stage}: {e}") from None


def _record_stage(cfg, layout, settings: RecordingPlan, skip: str):
    from games.agents import agent_name, make_agent
    from games.record import record_dataset
    from runtime.pipeline import Stage

    game_config = OmegaConf.to_container(cfg.game)
    if not skip:  # a bad game or agent fails now, before any stage runs; auto becomes the agent it names
        game = build_game(cfg.game)
        settings = replace(settings, agent=agent_name(settings.agent, game))
        make_agent(settings.agent, game, cfg.seed)

    def run(resume: bool) -> None:
        summary = record_dataset(layout.data, game_factory=lambda: build_game(cfg.game), agent_name=settings.agent,
                                 episodes=settings.episodes, frames=settings.frames, seed=cfg.seed,
                                 chunk_frames=settings.chunk_frames, progress=cfg.progress,
                                 source={"game_config": game_config, "pipeline": str(layout.out)})
        print(summary.line())

    return Stage("record", {"game": game_config, **asdict(settings), "seed": cfg.seed}, run, skip)


# ------------------------------------------------------------------------------------------------- eval stage

def _unknown(values: dict, cls, prefix: str = "") -> list[str]:
    """Keys of the nested ``values`` that the dataclass ``cls`` has no field for (given with ``+budget...=``)."""
    import dataclasses

    known = {f.name: f for f in fields(cls)}
    out = []
    for key, value in values.items():
        if key not in known:
            out.append(prefix + key)
        elif isinstance(value, dict) and dataclasses.is_dataclass(known[key].default_factory()):
            out += _unknown(value, type(known[key].default_factory()), f"{prefix}{key}.")
    return out


def _eval_config(cfg, layout, student: Path):
    """``rollingworld eval``'s config for ``student``: the budget's ``eval`` section and the pipeline's paths and
    run-wide settings, checked as the other stages' settings are."""
    values = OmegaConf.to_container(cfg.budget.eval)
    _check_not_owned("eval", values, EVAL_OWNED)
    unknown = _unknown(values, EvalSettings)
    if unknown:
        raise InputError(f"budget.eval: unknown setting(s) {', '.join(unknown)} (the settings of rollingworld eval)")
    given = {"ckpt": str(student), "data": str(layout.data), "out": str(layout.folder("eval")), "seed": cfg.seed,
             "threads": cfg.threads, "progress": cfg.progress, "fresh": False}  # fresh: a rerun keeps finished parts
    eval_cfg = OmegaConf.merge(OmegaConf.structured(EvalConfig), values, given)
    check_settings(eval_cfg, "budget.eval.")
    return eval_cfg


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
        from runtime.evaluation import evaluate

        if resume:
            _forget_stale_parts(layout.folder("eval"), student, eval_cfg.seed)
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
    from worldmodel.distill.distiller import check_config
    from worldmodel.eval.report import comparison_table
    from runtime.pipeline import Layout, codec_stage, distill_stage, run_stages, teacher_stage

    layout = Layout.of(cfg.out, cfg.data)
    run_wide = {"threads": cfg.threads, "seed": cfg.seed, "progress": cfg.progress}
    data = str(layout.data)
    init = str(Path(cfg.init).resolve()) if cfg.init else ""

    space = _action_space(cfg, layout, overrides)
    if init:  # a fine-tune: the checkpoint must know these controls (checked before recording anything)
        check_action_space(load_checkpoint(init, expect="teacher"), space)
    codec_type = cfg.budget.codec.type
    if codec_type not in CODECS:
        raise InputError(f"budget.codec.type must be one of {', '.join(CODECS)}, got {codec_type!r}")
    codec_skip = ""
    if init:
        codec_skip = "init= brings its codec"
    elif codec_type == "pixels":
        codec_skip = "budget.codec.type=pixels: the teacher works on pixel patches"

    record = _section(cfg, "record", RecordingPlan, {})
    codec = _section(cfg, "codec", CodecTrainConfig, {"data": data, "out": str(layout.folder("codec")),
                                                      **run_wide}, drop=("type",))
    teacher = _section(cfg, "teacher", TrainConfig, {
        "data": data, "out": str(layout.folder("teacher")), "init": init,
        "codec": str(layout.codec) if not codec_skip else "pixels", "device": cfg.device, **run_wide})
    distill = _section(cfg, "distill", DistillConfig, {
        "teacher": str(layout.teacher), "data": data, "out": str(layout.folder("distill")),
        "device": cfg.device, **run_wide})
    try:
        check_config(distill)
    except InputError as e:
        raise InputError(f"budget.distill: {e}") from None
    student = layout.shipped(distill.dmd_steps)
    evaluation = _eval_config(cfg, layout, student)
    scored = distill.score_frames or distill.window
    if teacher.clip_len <= scored:
        raise InputError(f"budget.teacher.clip_len ({teacher.clip_len}) must be larger than the frames the "
                         f"distillation scores together ({scored}: budget.distill.score_frames, else window): the "
                         f"teacher scores them after context frames, as it was trained")

    stages = [_record_stage(cfg, layout, record, skip=f"data= names the recording {data}" if cfg.data else ""),
              codec_stage(codec, skip=codec_skip), teacher_stage(teacher), distill_stage(distill),
              _eval_stage(layout, evaluation, student)]
    print(f"pipeline {layout.out}: {_game_name(cfg.game) if not cfg.data else data}, budget "
          f"{cfg.budget.name or '?'}")
    if not run_stages(layout, stages):
        return 1
    report = layout.folder("eval") / "report.md"
    table = comparison_table({student.stem: json.loads(report.with_suffix(".json").read_text())})
    print(f"student: {student}\nreport: {report}\n\n{table}")
    return 0
