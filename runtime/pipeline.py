"""The whole path from gameplay to a shipped student in one resumable run (``rollingworld pipeline``).

The data flow of ``docs/architecture.md`` as stages, each in its own folder under ``out``:

=========  =========  =======================================================================================
stage      folder     what it writes
=========  =========  =======================================================================================
record     data/      the recording (``games.record``; skipped when ``data=DIR`` names an existing one)
codec      codec/     ``codec.safetensors`` (``train_codec``; skipped for pixel patches and with ``init=``)
teacher    teacher/   ``teacher.safetensors`` (``train``; ``init=`` fine-tunes a teacher instead)
distill    distill/   ``ode.safetensors`` and ``student.safetensors`` (``distill``: ODE init, then DMD)
eval       eval/      ``report.md``, ``report.json``, plots: the shipped student evaluated (``rollingworld eval``)
=========  =========  =======================================================================================

A stage is **complete** when ``out/<folder>.complete`` exists (beside its folder, not in it: a recording holds
only its own files): written atomically once the stage returned having
reached the end of its steps, it holds the stage's settings and seconds. Running the same command again skips
complete stages and continues an incomplete one (``resume=true``, or the recorder's own resume), so a killed
pipeline loses only what its running stage had not yet checkpointed. This module runs stages and knows the model
stages; the two that need the runtime are made by ``runtime.commands.pipeline``: recording (a game and an agent)
and the evaluation (``rollingworld eval``, whose control probes and bench run the engine as ``play`` does).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from games.data.layout import atomic_write
from worldmodel.checkpoint import load_checkpoint

STAGES = ("record", "codec", "teacher", "distill", "eval")
FOLDERS = {"record": "data", "codec": "codec", "teacher": "teacher", "distill": "distill", "eval": "eval"}
MARKER = ".complete"  # out/<folder>.complete
# settings that do not change what a stage computes (so a rerun with other values is still the same stage)
INCIDENTAL = {"resume", "progress", "threads", "device"}


@dataclass
class Layout:
    """Where the stages of the pipeline in ``out`` read and write."""
    out: Path
    data: Path  # the recording: out/data, or the existing one given with data=

    @classmethod
    def of(cls, out, data: str = "") -> "Layout":
        out = Path(out).resolve()
        return cls(out, Path(data).resolve() if data else out / FOLDERS["record"])

    def folder(self, stage: str) -> Path:
        return self.out / FOLDERS[stage]

    @property
    def codec(self) -> Path:
        return self.folder("codec") / "codec.safetensors"

    @property
    def teacher(self) -> Path:
        return self.folder("teacher") / "teacher.safetensors"

    @property
    def students(self) -> dict[str, Path]:
        """The distilled checkpoints: the student after ODE init, and after DMD."""
        return {"ode": self.folder("distill") / "ode.safetensors",
                "student": self.folder("distill") / "student.safetensors"}

    def shipped(self, dmd_steps: int) -> Path:
        """The student that ships and is evaluated: after DMD, or after ODE init when the budget has no DMD."""
        return self.students["student" if dmd_steps else "ode"]


@dataclass
class Stage:
    name: str  # one of STAGES
    settings: dict  # what the stage runs with: saved in its marker, compared on a rerun
    run: Callable[[bool], str | None]  # run(resume) -> None once the stage reached its end, else why it stopped
    skip: str = ""  # why the stage does not run at all, e.g. "data= names a recording"


# ---------------------------------------------------------------------------------------------------- markers

def _portable(value, out: Path):
    """``value`` with paths inside ``out`` written relative to it ("$out/teacher/..."), so that a marker still
    matches after the pipeline folder is moved."""
    if isinstance(value, dict):
        return {k: _portable(v, out) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_portable(v, out) for v in value]
    if isinstance(value, str) and (value == str(out) or value.startswith(f"{out}/")):
        return "$out" + value[len(str(out)):]
    return value


def marker_path(folder: Path) -> Path:
    return folder.parent / (folder.name + MARKER)


def read_marker(folder: Path) -> dict | None:
    """The marker of a complete stage, or None when the stage is not complete."""
    path = marker_path(folder)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # written atomically, so unreadable means edited by hand: still complete


def write_marker(folder: Path, stage: str, settings: dict, seconds: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    body = {"stage": stage, "settings": settings, "seconds": round(seconds, 1),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write(marker_path(folder), (json.dumps(body, indent=2) + "\n").encode())


def _changed(old: dict, new: dict) -> list[str]:
    keys = (set(old) | set(new)) - INCIDENTAL
    return sorted(k for k in keys if old.get(k) != new.get(k))


# ----------------------------------------------------------------------------------------------------- runner

def run_stages(layout: Layout, stages: list[Stage], log=print) -> bool:
    """Run ``stages`` in order, skipping complete ones; True when all of them are complete at the end.

    An incomplete stage whose folder exists is resumed. A stage that stops before its end (a time limit) ends
    the run: the next invocation continues it."""
    ran = []  # stages run now: a complete stage after one of them was computed from the old output
    for stage in stages:
        folder = layout.folder(stage.name)
        if stage.skip:
            log(f"stage {stage.name}: skipped ({stage.skip})")
            continue
        settings = _portable(json.loads(json.dumps(stage.settings)), layout.out)
        marker = read_marker(folder)
        if marker is not None:
            notes = []
            changed = _changed(marker.get("settings", settings), settings)
            if changed:
                notes.append(f"it ran with other {', '.join(changed)}")
            if ran:
                notes.append(f"{', '.join(ran)} ran again since")
            hint = f" ({'; '.join(notes)}: delete {folder} to redo it)" if notes else ""
            log(f"stage {stage.name}: already complete, skipped{hint}")
            continue
        resume = folder.exists()
        log(f"stage {stage.name}: {'resuming' if resume else 'starting'} in {folder}")
        t0 = time.monotonic()
        stopped = stage.run(resume)
        seconds = time.monotonic() - t0
        if stopped:
            log(f"stage {stage.name}: stopped after {seconds:.0f} s ({stopped}); run the same command again "
                f"to continue")
            return False
        write_marker(folder, stage.name, settings, seconds)
        ran.append(stage.name)
        log(f"stage {stage.name}: done in {seconds:.0f} s")
    return True


# ------------------------------------------------------------------------------------------------ model stages

def _short_of(path: Path, done: int, want: int, what: str) -> str | None:
    return None if done >= want else f"{path} has {done} of {want} {what}"


def codec_stage(cfg, skip: str = "") -> Stage:
    """Train the conv autoencoder (``cfg``: a ``worldmodel.train.codec.CodecTrainConfig``)."""
    def run(resume: bool) -> str | None:
        from worldmodel.train.codec import train_codec

        train_codec(replace(cfg, resume=resume))
        path = Path(cfg.out) / "codec.safetensors"
        meta = load_checkpoint(path).metadata
        if meta.get("provenance", {}).get("target_reached"):  # stopped early: its held-out PSNR is the target's
            return None
        return _short_of(path, meta["step"], cfg.steps, "steps")

    return Stage("codec", asdict(cfg), run, skip)


def teacher_stage(cfg) -> Stage:
    """Train (or, with ``cfg.init``, fine-tune) the teacher (``cfg``: a ``worldmodel.train.teacher.TrainConfig``)."""
    def run(resume: bool) -> str | None:
        from worldmodel.train.teacher import train

        path = train(replace(cfg, resume=resume))
        return _short_of(path, load_checkpoint(path).metadata["step"], cfg.steps, "steps")

    return Stage("teacher", asdict(cfg), run)


def distill_stage(cfg) -> Stage:
    """ODE init and Rolling Forcing DMD of the teacher (``cfg``: a ``worldmodel.distill.distiller.DistillConfig``)."""
    def run(resume: bool) -> str | None:
        from worldmodel.distill.distiller import distill

        path = distill(replace(cfg, resume=resume))
        done = load_checkpoint(path).info.distill
        if cfg.dmd_steps:
            return _short_of(path, int(done.get("dmd_steps", 0)), cfg.dmd_steps, "DMD steps")
        return _short_of(path, int(done.get("ode_steps", 0)), cfg.ode_steps, "ODE steps")

    return Stage("distill", asdict(cfg), run)

