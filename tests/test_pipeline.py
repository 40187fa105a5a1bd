"""``rollingworld pipeline``: every stage end to end on the smoke budget, skipping, resuming, fine-tuning, errors."""
import contextlib
import io
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from runtime.cli import main
from tests.conftest import assert_one_line_error

STAGES = ("record", "codec", "teacher", "distill", "eval")
SECTIONS = ("fidelity", "drift", "control", "speed")  # of rollingworld eval's report
SMOKE = ["game=pong", "budget=smoke", "threads=1", "progress=false"]


def pipeline(capsys, *args) -> tuple[int, str]:
    """``rollingworld pipeline ARGS`` in this process: (exit code, stdout)."""
    code = main(["pipeline", *args])
    return code, capsys.readouterr().out


def lines_of(out: str, stage: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(f"stage {stage}:")]


def report_of(out) -> dict:
    return json.loads((out / "eval" / "report.json").read_text())


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One complete smoke pipeline: (its folder, its stdout)."""
    out = tmp_path_factory.mktemp("pipeline") / "pong"
    buf = io.StringIO()  # capsys is per test; a module fixture captures by hand
    with contextlib.redirect_stdout(buf):
        code = main(["pipeline", *SMOKE, f"out={out}"])
    assert code == 0, buf.getvalue()
    return out, buf.getvalue()


def test_smoke_pipeline_runs_every_stage_and_the_student_plays(smoke):
    from games.data.recording import Recording
    from worldmodel.engine.session import WorldSession

    out, stdout = smoke
    for stage in STAGES:
        assert any(line.startswith(f"stage {stage}: done in") for line in lines_of(stdout, stage)), stdout
        folder = out / ("data" if stage == "record" else stage)
        assert (folder.parent / f"{folder.name}.complete").exists(), stage
    for name in ("codec/codec.safetensors", "teacher/teacher.safetensors", "distill/ode.safetensors",
                 "distill/student.safetensors", "eval/report.md", "eval/report.json", "eval/fidelity.png"):
        assert (out / name).exists(), name
    # the eval stage is rollingworld eval of the shipped student with the budget's eval settings
    report = report_of(out)
    assert report["header"]["ckpt"] == str(out / "distill" / "student.safetensors")
    assert report["header"]["mode"] == "rolling" and report["header"]["threads"] == 1
    assert report["fidelity"]["starts"] == 2 and len(report["fidelity"]["psnr"]) == 8
    codec = report["fidelity"]["baselines"]["codec"]["psnr"]  # the real frames through the codec: the ceiling
    assert len(codec) == 8 and np.isfinite(codec).all() and codec != report["fidelity"]["psnr"]
    assert report["drift"]["minutes"] == 0.1 and report["control"]["model"]["n"] == 4
    assert report["speed"]["frames"] == 200 and not report["speed"]["compile"]
    md = (out / "eval" / "report.md").read_text()
    assert all(f"## {title}" in md for title in ("Fidelity", "Drift", "Control", "Speed")) and "codec PSNR" in md
    assert f"report: {out / 'eval' / 'report.md'}" in stdout and "\n| student | " in stdout  # its table row

    session = WorldSession.from_checkpoint(out / "distill" / "student.safetensors")
    assert session.info.kind == "student" and session.info.raw["codec"]["type"] == "conv_ae"
    session.reset(Recording(out / "data")[0].frames(0, 4), seed=0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        frame = session.step((rng.random(session.action_space.size) < 0.5).astype(np.float32))
        assert frame.dtype == np.uint8 and frame.shape == (64, 64, 3)


def test_rerun_of_a_complete_pipeline_skips_every_stage(smoke, capsys):
    out, _ = smoke
    checkpoints = [out / "teacher" / "teacher.safetensors", out / "distill" / "student.safetensors",
                   out / "eval" / "report.json"]
    before = [p.stat().st_mtime_ns for p in checkpoints]
    code, stdout = pipeline(capsys, *SMOKE, f"out={out}")
    assert code == 0
    for stage in STAGES:
        assert lines_of(stdout, stage) == [f"stage {stage}: already complete, skipped"], stdout
    assert [p.stat().st_mtime_ns for p in checkpoints] == before


def test_a_pipeline_stopped_after_the_teacher_runs_only_the_missing_stages(smoke, capsys, tmp_path):
    out = tmp_path / "moved"  # a copy elsewhere: its markers still match (paths inside out are relative)
    shutil.copytree(smoke[0], out)
    for stage in ("distill", "eval"):
        shutil.rmtree(out / stage)
        (out / f"{stage}.complete").unlink()
    teacher = (out / "teacher" / "teacher.safetensors").read_bytes()
    # a bad distillation setting is refused before any stage runs
    code = main(["pipeline", *SMOKE, f"out={out}", "budget.distill.rollout_frames=6"])
    assert code == 2 and "rollout_frames" in capsys.readouterr().err
    code, stdout = pipeline(capsys, *SMOKE, f"out={out}")
    assert code == 0, stdout
    for stage in ("record", "codec", "teacher"):
        assert lines_of(stdout, stage) == [f"stage {stage}: already complete, skipped"], stdout
    for stage in ("distill", "eval"):
        assert lines_of(stdout, stage)[0] == f"stage {stage}: starting in {out / stage}"
        assert lines_of(stdout, stage)[-1].startswith(f"stage {stage}: done in")
    assert (out / "teacher" / "teacher.safetensors").read_bytes() == teacher
    assert set(SECTIONS) <= set(report_of(out))

    # an evaluation stopped after its drift section continues with the sections it had not finished
    (out / "eval.complete").unlink()
    for section in ("control", "speed"):
        (out / "eval" / "parts" / f"{section}.json").unlink()
    code, stdout = pipeline(capsys, *SMOKE, f"out={out}")
    assert code == 0, stdout
    assert lines_of(stdout, "eval")[0] == f"stage eval: resuming in {out / 'eval'}"
    assert "fidelity: finished earlier (kept" in stdout and "drift: finished earlier (kept" in stdout
    assert stdout.count("finished earlier") == 2 and set(SECTIONS) <= set(report_of(out))

    # a stage whose folder exists but is not complete is resumed where it stands (resume=true); the student was
    # written again, so the sections evaluated before are of an earlier student and are not kept
    student = load_file(str(out / "distill" / "student.safetensors"))
    (out / "distill.complete").unlink()
    (out / "eval.complete").unlink()
    code, stdout = pipeline(capsys, *SMOKE, f"out={out}", "budget.eval.sections=[fidelity]")
    assert code == 0
    assert lines_of(stdout, "distill")[0] == f"stage distill: resuming in {out / 'distill'}"
    assert lines_of(stdout, "eval")[-1].startswith("stage eval: done in")
    assert "finished earlier" not in stdout and "fidelity" in report_of(out)
    resumed = load_file(str(out / "distill" / "student.safetensors"))
    assert all(torch.equal(student[k], resumed[k]) for k in student)  # its saved state had done every step


def test_fine_tune_from_a_recording_and_a_teacher(smoke, capsys, tmp_path):
    from worldmodel.checkpoint import load_checkpoint

    data, init = smoke[0] / "data", smoke[0] / "teacher" / "teacher.safetensors"
    # no DMD steps: the ODE-init student ships and is evaluated
    short = ["budget.teacher.steps=2", "budget.distill.ode_steps=2", "budget.distill.dmd_steps=0",
             "budget.eval.sections=[fidelity]", "budget.eval.fidelity.horizon=4"]
    code, stdout = pipeline(capsys, "budget=smoke", "threads=1", "progress=false", f"data={data}", f"init={init}",
                            f"out={tmp_path}/tuned", *short)
    assert code == 0, stdout
    ode = tmp_path / "tuned" / "distill" / "ode.safetensors"
    assert f"student: {ode}" in stdout and not (ode.parent / "student.safetensors").exists()
    report = report_of(tmp_path / "tuned")
    assert report["header"]["ckpt"] == str(ode) and report["fidelity"]["horizons"] == [1, 2, 3, 4]
    assert not set(SECTIONS[1:]) & set(report)
    assert lines_of(stdout, "record") == [f"stage record: skipped (data= names the recording {data})"]
    assert lines_of(stdout, "codec") == ["stage codec: skipped (init= brings its codec)"]
    assert not (tmp_path / "tuned" / "data").exists() and not (tmp_path / "tuned" / "codec").exists()
    meta = load_checkpoint(tmp_path / "tuned" / "teacher" / "teacher.safetensors").metadata
    assert meta["provenance"]["init"]["path"] == str(init.resolve())
    assert meta["codec"] == load_checkpoint(init).metadata["codec"]


def test_one_long_episode_trains_and_is_scored_on_stretches_it_never_saw(capsys, tmp_path):
    from games.data.recording import Recording
    from worldmodel.checkpoint import load_checkpoint
    from worldmodel.train.data import held_out_split

    out = tmp_path / "one"
    code, stdout = pipeline(capsys, *SMOKE, f"out={out}", "budget.record.episodes=1", "budget.record.frames=400",
                            "budget.eval.sections=[fidelity]")
    assert code == 0, stdout
    student = load_checkpoint(out / "distill" / "student.safetensors")
    train, held = held_out_split(Recording(out / "data"), student.metadata)
    assert len(held) == 1 and held[0].length == 128 and all(s.index == 0 for s in train)
    assert report_of(out)["fidelity"]["episodes"] == [held[0].name] == [f"ep_000000[{held[0].start}:{held[0].stop}]"]
    teacher = json.loads((out / "teacher" / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(teacher["val_loss"])  # validated on the held-out stretch
    codec = load_checkpoint(out / "codec" / "codec.safetensors").metadata["provenance"]["held_out"]
    assert np.isfinite(codec["psnr"])


def test_a_non_square_recording_goes_through_every_stage_and_plays_at_its_shape(capsys, tmp_path):
    from worldmodel.checkpoint import load_checkpoint
    from worldmodel.engine.session import WorldSession

    out = tmp_path / "wide"
    code, stdout = pipeline(capsys, *SMOKE, f"out={out}", "game.width=128", "game.height=96")
    assert code == 0, stdout
    student = load_checkpoint(out / "distill" / "student.safetensors")
    assert student.info.frame_size == (96, 128)
    report = report_of(out)
    assert set(SECTIONS) <= set(report) and np.isfinite(report["fidelity"]["psnr"]).all()
    assert main(["bundle", f"ckpt={out / 'distill' / 'student.safetensors'}", f"data={out / 'data'}",
                 f"out={tmp_path / 'wide.safetensors'}", "starts=2"]) == 0
    session = WorldSession.from_checkpoint(tmp_path / "wide.safetensors")
    session.reset(load_checkpoint(tmp_path / "wide.safetensors").tensors["start.frames"][0].numpy(), seed=0)
    for _ in range(5):
        assert session.step(np.zeros(session.action_space.size, np.float32)).shape == (96, 128, 3)


def test_a_game_nobody_here_wrote_is_evaluated_from_its_recording(capsys, tmp_path):
    """A Gymnasium game from a plugin package, no scripted agent and no probe: drift is driven by the recording's
    own actions and control is read by the inverse-dynamics network; every section of the eval finishes."""
    out = tmp_path / "dial"
    code, stdout = pipeline(capsys, "game=gym:tests.plugin_envs:RollingPlugin/Dial-v0", "budget=smoke", "threads=1",
                            "progress=false", f"out={out}", "budget.record.episodes=1", "budget.record.frames=400")
    assert code == 0, stdout
    report = report_of(out)
    assert set(SECTIONS) <= set(report) and not any("skipped" in report[s] for s in SECTIONS)
    assert report["drift"]["agent"] == "recording" and len(report["drift"]["q"]["model"]) == 3
    control = report["control"]
    assert "no control probe" in control["probe"]
    assert control["inverse"]["model"]["n"] == 2 * 7  # windows need the frame after: 7 of the 8 frames of a start
    assert {"real", "model", "chance"} <= set(control["inverse"])
    md = (out / "eval" / "report.md").read_text()
    assert "inverse-dynamics network" in md and "(ceiling)" in md and "the recording's own actions" in md


def test_bad_budget_game_or_setting_is_one_line_error(capsys, tmp_path):
    cases = [(["budget=huge"], ("budget/huge", "smoke")),
             (["game=tetris"], ("tetris", "pong")),
             (["budget.teacher.steps=abc"], ("budget.teacher", "steps")),
             (["+budget.teacher.stepz=3"], ("budget.teacher", "stepz")),
             (["+budget.distill.out=elsewhere"], ("budget.distill", "out", "pipeline")),
             (["budget.codec.type=vae"], ("budget.codec.type", "vae")),
             (["budget.teacher.clip_len=4"], ("clip_len", "window")),
             (["budget.distill.score_frames=8", "budget.distill.rollout_frames=8", "budget.teacher.clip_len=8"],
              ("clip_len", "score_frames")),
             (["budget.eval.drift.minutes=abc"], ("budget.eval.drift.minutes", "float")),
             (["+budget.eval.drift.minutez=1"], ("budget.eval", "drift.minutez")),
             (["+budget.eval.ckpt=other.safetensors"], ("budget.eval", "ckpt", "pipeline")),
             (["budget.eval.sections=[fidelity,beauty]"], ("budget.eval.sections", "speed")),
             ([f"data={tmp_path}/none"], ("none",))]
    for extra, needles in cases:
        code = main(["pipeline", "budget=smoke", f"out={tmp_path}/p", *extra])
        captured = capsys.readouterr()
        assert code == 2, (extra, captured.err)
        assert_one_line_error(SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err), *needles)
    assert not (tmp_path / "p").exists()  # every setting is checked before the first stage writes anything
