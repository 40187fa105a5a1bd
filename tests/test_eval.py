"""rollingworld eval: the metrics it reports, its sections end to end on a tiny checkpoint, resume, bad inputs."""
import json

import numpy as np
import pytest

from tests.conftest import assert_one_line_error, tiny_checkpoint
from worldmodel.eval.metrics import psnr_per_frame, ssim

TINY_EVAL = ["mode=rolling", "fidelity.starts=3", "fidelity.horizon=8", "fidelity.teacher_forced=4",
             "fidelity.batch=3", "drift.minutes=0.1", "drift.block_seconds=0.5", "drift.blocks=3",
             "drift.reference_frames=120", "drift.compile=false", "control.trials=4", "control.idm_steps=20",
             "control.idm_frames=256", "control.idm_starts=2", "control.idm_horizon=8", "speed.frames=200",
             "speed.compile=false", "progress=false"]


def test_ssim_is_one_for_equal_frames_and_follows_the_formula_with_the_data_range():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 16, 16, 3)).astype(np.uint8)
    np.testing.assert_allclose(ssim(a, a, data_range=255.0), 1.0, atol=1e-6)
    # two flat frames: no variance, so SSIM is the luminance term (2 m1 m2 + C1) / (m1^2 + m2^2 + C1)
    for L in (255.0, 1.0):
        m1, m2 = 100 / 255 * L, 120 / 255 * L
        x, y = np.full((1, 16, 16, 3), m1), np.full((1, 16, 16, 3), m2)
        c1 = (0.01 * L) ** 2
        np.testing.assert_allclose(ssim(x, y, data_range=L), (2 * m1 * m2 + c1) / (m1 ** 2 + m2 ** 2 + c1),
                                   rtol=1e-5)  # float32
    x, y = np.full((1, 16, 16, 3), 100.0), np.full((1, 16, 16, 3), 120.0)
    assert ssim(x, y, data_range=255.0)[0] < ssim(x, y, data_range=65535.0)[0] - 0.01  # the range is not guessed
    noisy = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    noisier = np.clip(a.astype(int) + rng.integers(-120, 121, a.shape), 0, 255).astype(np.uint8)
    assert (ssim(a, noisier, data_range=255.0) < ssim(a, noisy, data_range=255.0)).all()
    assert (ssim(a, noisy, data_range=255.0) < 0.99).all()
    np.testing.assert_allclose(psnr_per_frame(a, noisy, 255.0)[0],
                               10 * np.log10(255 ** 2 / np.mean((a[0].astype(float) - noisy[0]) ** 2)))


def test_ssim_matches_a_direct_computation_at_one_window():
    """The separable float32 form equals the textbook statistics of one 11x11 Gaussian-weighted window."""
    rng = np.random.default_rng(1)
    a, b = rng.random((1, 11, 11, 1)) * 255, rng.random((1, 11, 11, 1)) * 255
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    x, y = a[0, :, :, 0], b[0, :, :, 0]
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy, cxy = (w * x * x).sum() - mx ** 2, (w * y * y).sum() - my ** 2, (w * x * y).sum() - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    want = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    np.testing.assert_allclose(ssim(a, b, data_range=255.0)[0], want, rtol=1e-5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from games.registry import make_game
    from games.record import record_dataset

    root = tmp_path_factory.mktemp("eval")
    record_dataset(root / "pong", lambda: make_game("pong"), "heuristic", 3, 120, progress=False)
    return tiny_checkpoint(root / "tiny.safetensors"), root / "pong"


def test_eval_writes_every_section_and_resumes_after_the_finished_ones(cli, tiny, tmp_path):
    ckpt, data = tiny
    out = tmp_path / "ev"
    r = cli("eval", f"ckpt={ckpt}", f"data={data}", f"out={out}", *TINY_EVAL)
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    fid, drift, ctl, spd = (report[k] for k in ("fidelity", "drift", "control", "speed"))
    assert fid["horizons"] == list(range(1, 9)) and len(fid["psnr"]) == len(fid["ssim"]) == 8
    assert all(np.isfinite(fid["psnr"])) and all(-1 <= s <= 1 for s in fid["ssim"])
    # a random-weight model is far from the real game; repeating the last real frame is close at horizon 1
    assert fid["baselines"]["repeat_last"]["psnr"][0] > fid["psnr"][0] + 5
    assert fid["teacher_forced"]["starts"] == 4
    # state error by horizon: random weights show no game state; the real frames through the codec show it all
    st = fid["state"]
    assert list(st) == ["model", "real_through_codec", "shuffled", "repeat_last"] and len(st["model"]["correct"]) == 8
    assert np.mean(st["model"]["correct"]) < np.mean(st["real_through_codec"]["correct"]) - 0.5
    d = drift["drift"]
    assert drift["frames"] == 180 and len(drift["q"]["model"]) == 3
    # random weights leave the game at once; the real game never does
    assert drift["collapse"]["model"] == [1.0, 1.0, 1.0] and max(drift["collapse"]["real"]) <= 0.05
    # what the blocks show: the real game both paddles always; a random-weight model never
    assert drift["shown"]["real"]["paddles_seen"] == [1.0] * 3 and drift["shown"]["model"]["paddles_seen"] == [0.0] * 3
    assert d["model"]["first"] > 10 * d["real"]["first"]  # random frames are far from real ones; real ones are not
    assert ctl["real_game"]["accuracy"] == 1.0 and ctl["model"]["n"] == 4 and ctl["latency_ticks"] == 4
    assert spd["frames"] == 200 and spd["fps"] > 0 and spd["mode"] == "rolling"
    for png in ("fidelity.png", "fidelity-samples.png", "drift.png", "drift-frames.png", "drift-strip.png"):
        assert (out / png).stat().st_size > 1000
    with np.load(out / "parts" / "drift-frames.npz") as z:  # 180 frames at 30 fps: 0, 1 and 5 s, then the end
        assert z["snapshot_seconds"].tolist() == [0.0, 1.0, 5.0, 6.0] and z["snapshot_model"].shape[0] == 4
        assert np.array_equal(z["snapshot_model"][-1], z["model"][-1][-1])  # the end is the last block's last frame
    md = (out / "report.md").read_text()
    for needle in ("## Fidelity", "State error by horizon", "## Drift", "dDrift", "## Control", "## Speed",
                   "data range 255"):
        assert needle in md
    # the same command again keeps every finished section
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "parts").glob("*.json") if p.name != "header.json"}
    r = cli("eval", f"ckpt={ckpt}", f"data={data}", f"out={out}", *TINY_EVAL)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("finished earlier") == 4
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (out / "parts").glob("*.json") if p.name != "header.json"}
    # a section whose settings changed runs again; the others are kept
    r = cli("eval", f"ckpt={ckpt}", f"data={data}", f"out={out}", *TINY_EVAL, "control.trials=2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("finished earlier (kept") == 3 and "control: finished earlier with other settings" in r.stdout
    assert json.loads((out / "report.json").read_text())["control"]["model"]["n"] == 2
    # scoring Q against another reference re-scores the saved session instead of generating it again
    frames = (out / "parts" / "drift-frames.npz").stat().st_mtime_ns
    r = cli("eval", f"ckpt={ckpt}", f"data={data}", f"out={out}", *TINY_EVAL, "control.trials=2", "drift.reference=real")
    assert r.returncode == 0, r.stderr
    assert "drift: finished earlier with other settings" in r.stdout and "drift session" not in r.stderr
    assert (out / "parts" / "drift-frames.npz").stat().st_mtime_ns == frames
    assert json.loads((out / "report.json").read_text())["drift"]["reference"] == "real"


def test_snapshots_of_a_ten_minute_session_are_at_the_issues_times():
    from worldmodel.eval.drift import DriftPlan

    plan = DriftPlan.of(10, 30)
    assert plan.snapshots == ((0.0, 0), (1.0, 30), (5.0, 150), (30.0, 900), (60.0, 1800), (300.0, 9000),
                              (600.0, 17999))
    assert {plan.start_frames + i for _, i in plan.snapshots} <= plan.kept()


def test_comparison_table_reads_the_reports(tiny, tmp_path):
    from worldmodel.eval.report import comparison_table

    report = {"speed": {"fps": 50.0, "latency_ms": 70.0}, "fidelity": {"psnr": list(np.linspace(30, 20, 64))},
              "drift": {"drift": {"model": {"first": 2.0, "last": 2.5, "ddrift": 0.5}},
                        "q": {"model": [2.0, 3.5, 2.5]}},
              "control": {"model": {"accuracy": 0.9}}}
    table = comparison_table({"full": report, "empty": {}})
    assert "| full | 50.0 | 70 | 30.00 / " in table and "0.50 (2.00 -> 2.50) | 2.67 | 90.0% |" in table
    assert "| empty | n/a | n/a | n/a / n/a / n/a | n/a | n/a | n/a |" in table


@pytest.mark.parametrize("override, needles", [
    (["mode=fast"], ["unknown mode", "rolling"]),
    (["sections=[fidelity,beauty]"], ["sections"]),
    (["ckpt=/nonexistent.safetensors"], ["no checkpoint"]),
])
def test_bad_settings_are_one_line_errors(cli, tiny, tmp_path, override, needles):
    ckpt, data = tiny
    r = cli("eval", f"ckpt={ckpt}", f"data={data}", f"out={tmp_path / 'ev'}", *TINY_EVAL, *override)
    assert_one_line_error(r, *needles)


def test_data_of_another_game_is_a_one_line_error(cli, tiny, tmp_path):
    from games.registry import make_game
    from games.record import record_dataset

    ckpt, _ = tiny
    record_dataset(tmp_path / "maze", lambda: make_game("maze"), "random", 1, 20, progress=False)
    r = cli("eval", f"ckpt={ckpt}", f"data={tmp_path / 'maze'}", f"out={tmp_path / 'ev'}", *TINY_EVAL)
    assert_one_line_error(r, "action")  # eval checks the controls and frame size, not the game's name


def test_other_settings_in_a_used_folder_are_refused(cli, tiny, tmp_path):
    ckpt, data = tiny
    out = tmp_path / "ev"
    r = cli("eval", f"ckpt={ckpt}", f"data={data}", f"out={out}", *TINY_EVAL, "sections=[control]")
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert "control" in report and "fidelity" not in report
    # asking for one more section keeps the finished one in the report
    r = cli("eval", f"ckpt={ckpt}", f"data={data}", f"out={out}", *TINY_EVAL, "sections=[fidelity]")
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert "control" in report and "fidelity" in report and "control: finished earlier" not in r.stdout
    # fresh=true redoes what it is asked for and keeps the rest this model made
    r = cli("eval", f"ckpt={ckpt}", f"data={data}", f"out={out}", *TINY_EVAL, "sections=[control]", "fresh=true")
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert "control" in report and "fidelity" in report and "control: finished earlier" not in r.stdout
    r = cli("eval", f"ckpt={ckpt}", f"data={data}", f"out={out}", *TINY_EVAL, "sections=[control]", "mode=framewise")
    assert_one_line_error(r, "fresh=true")
    for other in ("window=2", "sink=0", "recent=2"):  # the layout it generated with is part of what was measured
        r = cli("eval", f"ckpt={ckpt}", f"data={data}", f"out={out}", *TINY_EVAL, "sections=[control]", other)
        assert_one_line_error(r, "fresh=true", other.split("=")[0])
    # a folder written before the no-sink mode became sink=0 still resumes
    header = json.loads((out / "parts" / "header.json").read_text())
    old = {k: v for k, v in header.items() if k not in ("window", "sink", "recent")}
    (out / "parts" / "header.json").write_text(json.dumps(old))
    r = cli("eval", f"ckpt={ckpt}", f"data={data}", f"out={out}", *TINY_EVAL, "sections=[control]")
    assert r.returncode == 0 and "control: finished earlier" in r.stdout, r.stderr
