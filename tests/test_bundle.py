"""Bundled models: ``rollingworld bundle`` (half-precision weights plus the recording's start frames), sessions that
start from stored start frames, engine settings from the checkpoint, and ``play`` with no ckpt on assets/."""
import hashlib
import json
import shutil
import subprocess

import numpy as np
import pytest
import torch

from games.data.errors import InputError
from tests.conftest import ROOT, assert_one_line_error, run_cli, tiny_checkpoint

ENGINE = {"window": 3, "sink": 0, "recent": 2}  # not the defaults (4, 1, 4): they must come from the checkpoint
START_FRAMES = 3  # as if distilled with 3 start frames (the default is 4)


def tiny_student(path, game="pong"):
    """A student checkpoint laid out as ``distill`` writes it (``model.``, ``codec.``, ``engine`` and ``distill``
    metadata): a tiny DiT over a conv-AE codec, random weights perturbed so that every part matters."""
    from games.registry import make_game
    from worldmodel.checkpoint import save_checkpoint
    from worldmodel.nn.codec import make_codec
    from worldmodel.nn.flow import NoiseSchedule
    from worldmodel.nn.dit import make_model

    pong = make_game("pong")
    torch.manual_seed(0)
    codec = make_codec({"type": "conv_ae", "down": 4, "latent_channels": 4})
    net = make_model("tiny", channels=4, height=16, width=16, patch=4, action_dim=pong.action_space.size)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    meta = {"kind": "student", "model": {"size": "tiny", **net.cfg.to_dict()},
            "action_space": pong.action_space.to_dict(), "codec": codec.config(),
            "schedule": NoiseSchedule().to_dict(), "step": 0, "frame": {"height": 64, "width": 64, "fps": pong.fps},
            "provenance": {"game": game}, "engine": ENGINE, "distill": {"config": {"start_frames": START_FRAMES}}}
    tensors = {f"model.{k}": v for k, v in net.state_dict().items()}
    tensors.update({f"codec.{k}": v for k, v in codec.state_dict().items()})
    save_checkpoint(path, tensors, meta)
    return path


def main(capsys, *args) -> subprocess.CompletedProcess:
    """``rollingworld ARGS`` in this process (faster than a subprocess), as a finished process."""
    from runtime.cli import main as cli_main

    code = cli_main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A tiny student, a 3-episode pong recording and the student bundled from them with starts=2."""
    from games.registry import make_game
    from games.record import record_dataset

    root = tmp_path_factory.mktemp("bundle")
    record_dataset(root / "pong", lambda: make_game("pong"), "heuristic", 3, 12, progress=False)
    source = tiny_student(root / "student.safetensors")
    r = run_cli("bundle", f"ckpt={source}", f"data={root / 'pong'}", f"out={root / 'assets' / 'pong.safetensors'}",
                "starts=2", cwd=root)
    assert r.returncode == 0, r.stderr
    return {"root": root, "source": source, "data": root / "pong", "bundled": root / "assets" / "pong.safetensors",
            "stdout": r.stdout}


def test_bundle_halves_the_weights_and_stores_the_recordings_start_frames(made):
    from games.data.recording import Recording
    from worldmodel.checkpoint import load_checkpoint

    source, bundled = load_checkpoint(made["source"]), load_checkpoint(made["bundled"])
    size, source_size = made["bundled"].stat().st_size, made["source"].stat().st_size
    assert f"{size / 1e6:.2f} MB" in made["stdout"] and "2 starts of 3 frames" in made["stdout"]
    assert {t.dtype for k, t in bundled.tensors.items() if k.startswith("model.")} == {torch.float16}
    assert {t.dtype for k, t in bundled.tensors.items() if k.startswith("codec.")} == {torch.float32}
    model_bytes = sum(t.numel() * 2 for k, t in source.tensors.items() if k.startswith("model."))  # fp32 -> fp16
    start = bundled.tensors["start.frames"]
    assert size < source_size - model_bytes + start.numel() + 8192  # the weights halved; the rest as it was
    rec = Recording(made["data"])
    assert start.dtype == torch.uint8 and tuple(start.shape) == (2, START_FRAMES, 64, 64, 3)
    for k in range(2):  # the first frames of different episodes, exactly
        assert np.array_equal(start[k].numpy(), rec[k].frames(0, START_FRAMES))
    info = bundled.metadata["bundle"]
    assert info["dtype"] == "float16" and info["start_episodes"] == [0, 1] and info["game"] == "pong"
    assert info["source_sha256"] == hashlib.sha256(made["source"].read_bytes()).hexdigest()
    # the source's metadata, with the building machine's folders cut to names
    from runtime.commands.bundle import without_machine_paths
    assert {k: v for k, v in bundled.metadata.items() if k != "bundle"} == without_machine_paths(source.metadata)
    assert str(made["root"]) not in json.dumps(bundled.metadata) and info["data"] == "pong"


def test_the_bundled_model_plays_like_its_float32_source(made):
    """fp16 rounding only. Measured: mean |difference| of 24 generated uint8 frames 0.014 grey levels (max 1),
    against 40 between two noise seeds of the float32 model."""
    from worldmodel.engine.config import EngineConfig
    from worldmodel.engine.session import WorldSession

    torch.set_num_threads(1)
    cfg = EngineConfig(**ENGINE)
    source, bundled = (WorldSession.from_checkpoint(made[k], cfg) for k in ("source", "bundled"))
    assert source.start_frames is None and bundled.start_frames.shape == (2, START_FRAMES, 64, 64, 3)
    actions = (np.random.default_rng(0).random((24, bundled.action_space.size)) < 0.5).astype(np.float32)

    def play(session, seed):
        session.reset(bundled.start_frames[1], seed=seed)
        return np.stack([session.step(a) for a in actions]).astype(np.int16)

    fp32, fp16, other_seed = play(source, 0), play(bundled, 0), play(source, 1)
    rounding, seeds = np.abs(fp16 - fp32).mean(), np.abs(other_seed - fp32).mean()
    assert seeds > 10 and rounding < 0.25, (rounding, seeds)


def test_sessions_start_from_the_stored_frames_also_for_a_game_not_ours(made, tmp_path):
    from runtime.worlds import WorldSource
    from runtime.worlds import start_frames
    from worldmodel.checkpoint import load_checkpoint, save_checkpoint
    from worldmodel.engine.config import EngineConfig
    from worldmodel.engine.session import WorldSession

    ckpt = load_checkpoint(made["bundled"])
    stored = ckpt.tensors["start.frames"].numpy()
    meta = {**ckpt.metadata, "provenance": {**ckpt.metadata["provenance"], "game": "mygame"}}
    foreign = save_checkpoint(tmp_path / "mine.safetensors", ckpt.tensors, meta)
    session = WorldSession.from_checkpoint(foreign, EngineConfig(**ENGINE))
    source = WorldSource(session)
    assert np.array_equal(source.reset(0), stored[0][-1])
    assert np.array_equal(source.reset(0, start_seed=3), stored[1][-1])  # start seed % K picks the sequence
    assert np.array_equal(start_frames(session, "game", 5), stored[1])  # dream and bench: all S frames
    unbundled = save_checkpoint(tmp_path / "bare.safetensors",
                                {k: v for k, v in ckpt.tensors.items() if not k.startswith("start.")}, meta)
    with pytest.raises(InputError, match="no start frames"):
        WorldSource(WorldSession.from_checkpoint(unbundled, EngineConfig(**ENGINE))).reset(0)


def test_engine_settings_come_from_the_checkpoint_unless_given(made, tmp_path):
    from runtime.cli import compose
    from runtime.worlds import engine_config

    def engine(command, ckpt, *overrides):
        out = ["out=x.mp4"] if command == "dream" else []
        cfg = engine_config(compose(command, [f"ckpt={ckpt}", *overrides, *out]))
        return {"window": cfg.window, "sink": cfg.sink, "recent": cfg.recent}

    teacher = tiny_checkpoint(tmp_path / "teacher.safetensors")  # no engine metadata: the defaults
    for command in ("play", "bench", "dream", "kiosk"):
        assert engine(command, made["bundled"]) == ENGINE
        assert engine(command, made["bundled"], "sink=1", "window=2") == {**ENGINE, "sink": 1, "window": 2}
        assert engine(command, teacher) == {"window": 4, "sink": 1, "recent": 4}


def test_bench_runs_the_bundled_model_with_its_settings(made, cli, tmp_path):
    r = cli("bench", f"ckpt={made['bundled']}", "frames=200", "threads=1", "compile=false", "progress=false",
            f"json={tmp_path}/b.json")
    assert r.returncode == 0, r.stderr
    figures = json.loads((tmp_path / "b.json").read_text())
    assert {k: figures[k] for k in ENGINE} == ENGINE and figures["latency_ticks"] == ENGINE["window"]
    assert figures["fps"] > 0 and figures["frames"] == 200


def test_play_without_ckpt_plays_the_bundled_model_of_its_game(made, tmp_path, monkeypatch, capsys):
    import runtime.worlds as play

    assets = tmp_path / "assets"
    assets.mkdir()
    shutil.copy(made["bundled"], assets / "pong.safetensors")
    monkeypatch.setattr(play, "ASSETS", assets)
    assert play.bundled_checkpoint("pong") == assets / "pong.safetensors"
    monkeypatch.chdir(tmp_path / "assets")  # the path is the package's, not the working folder's
    r = main(capsys, "play", "headless=true", "frames=3", "agent=random", "compile=false", "runtime.fps=100",
             f"video={tmp_path}/play.mp4")
    assert r.returncode == 0, r.stderr
    assert "3 ticks" in r.stdout and (tmp_path / "play.mp4").exists()
    assert_one_line_error(main(capsys, "play", "game=maze", "headless=true", "frames=3"),
                          "no world model is bundled for 'maze'", "bundled: pong", "ckpt=")


def test_bad_inputs_are_one_line_errors(made, tmp_path, capsys):
    from games.registry import make_game
    from games.record import record_dataset

    record_dataset(tmp_path / "maze", lambda: make_game("maze"), "random", 1, 4, progress=False)
    record_dataset(tmp_path / "small", lambda: make_game("pong", width=32, height=32), "random", 1, 4,
                   progress=False)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    out = tmp_path / "out.safetensors"
    src, data = f"ckpt={made['source']}", f"data={made['data']}"
    cases = [
        (("ckpt=missing.safetensors", data), ("missing.safetensors", "does not exist")),
        ((f"ckpt={tmp_path / 'notes.txt'}", data), ("notes.txt", "not a safetensors file")),
        ((src, f"data={tmp_path / 'nothing'}"), ("nothing",)),
        ((src, f"data={tmp_path / 'maze'}"), ("maze", "pong")),
        ((src, f"data={tmp_path / 'small'}"), ("32x32", "64x64")),
        ((src, data, "max_mb=0.1"), ("max_mb=0.1", "MB")),
        ((src, data, "dtype=int8"), ("dtype", "float16")),
        ((src, data, "start_frames=20"), ("20 frames",)),
    ]
    for args, needles in cases:
        assert_one_line_error(main(capsys, "bundle", *args, f"out={out}"), *needles)
        assert not out.exists(), args
    r = run_cli("bundle", f"data={made['data']}", f"out={out}", cwd=tmp_path)  # and from the console script
    assert_one_line_error(r, "ckpt=")


# -------------------------------------------------------------------- the models shipped in assets/ (real ones)

@pytest.fixture(params=["pong", "maze"])
def shipped(request):
    path = ROOT / "assets" / f"{request.param}.safetensors"
    if not path.exists():
        pytest.skip(f"assets/{request.param}.safetensors is not bundled yet (rollingworld bundle makes it)")
    return request.param, path


def test_play_with_no_ckpt_opens_a_window_on_the_shipped_model(shipped, cli, xdisplay):
    game, _ = shipped
    r = cli("play", *([] if game == "pong" else [f"game={game}"]), "frames=5", "agent=random", "compile=false",
            env={"DISPLAY": xdisplay})
    assert r.returncode == 0, r.stderr
    assert f"{game} (world model): 5 ticks" in r.stdout


def test_bench_with_no_ckpt_reports_the_figures_of_the_shipped_model(shipped, cli, tmp_path):
    game, path = shipped  # what play runs, not random weights of some other size
    r = cli("bench", *([] if game == "pong" else [f"game={game}"]), "frames=200", "compile=false", "threads=1",
            "progress=false", f"json={tmp_path}/b.json")
    assert r.returncode == 0, r.stderr
    figures = json.loads((tmp_path / "b.json").read_text())
    assert figures["model"] == str(path.resolve())
    assert figures["frames"] == 200 and figures["fps"] > 0 and figures["tick_ms_p99"] > 0
    assert figures["rss_mb_at_200"] > 0 and "fps" in r.stdout


def test_one_long_recording_gives_starts_spread_through_it(tmp_path):
    from games.data.recording import Recording
    from games.record import record_dataset
    from games.registry import make_game
    from runtime.commands.bundle import start_frames

    record_dataset(tmp_path / "one", lambda: make_game("pong"), "heuristic", 1, 100, progress=False)
    rec = Recording(tmp_path / "one")
    frames, episodes, offsets = start_frames(rec, 4, 4)
    assert episodes == [0, 0, 0, 0] and offsets == [0, 24, 48, 72]  # evenly over the 96 places a start may take
    for k, o in enumerate(offsets):
        assert np.array_equal(frames[k], rec[0].frames(o, o + 4))
    assert start_frames(rec, 200, 4)[0].shape[0] == 97  # never the same start twice
