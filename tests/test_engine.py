"""The streaming engine: the cached rolling step is exact, the sink is re-indexed, memory is constant."""
import numpy as np
import pytest
import torch

from games.data.actions import ActionSpace
from games.data.errors import InputError
from worldmodel.nn.codec import make_codec
from worldmodel.engine.config import MODES, EngineConfig
from worldmodel.engine.session import WorldSession
from worldmodel.nn.flow import Denoiser, NoiseSchedule
from worldmodel.nn.dit import make_model

SPACE = ActionSpace(keys=("UP", "DOWN"))


def _session(mode="rolling", **kw):
    torch.manual_seed(0)
    net = make_model("tiny", action_dim=SPACE.size, patch=8, channels=3, height=32, width=32)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    den = Denoiser(net, NoiseSchedule())
    return WorldSession(den, make_codec({"type": "pixels"}), SPACE, EngineConfig(mode=mode, **kw), (32, 32))


def _start(n=1):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)


class Recorder:
    """Remembers every clean latent and action a session's window re-encodes into its cache, in order."""

    def __init__(self, session):
        self.latents, self.actions = [], []
        original = session.window.push_clean

        def push_clean(latent, actions):
            self.latents.append(latent)
            self.actions.append(actions)
            original(latent, actions)
        session.window.push_clean = push_clean


def test_cached_rolling_step_equals_recomputing_without_cache():
    s = _session(sink=1, recent=8, fuse_reencode=False)
    start = _start(2)
    s.reset(start, seed=1)
    rec = Recorder(s)  # after the reset: the warm-up re-encodes nothing (no frame leaves the window before tick 1)
    for t in range(3):
        s.step(SPACE.encode(["UP"] if t % 2 else []))
    # the next tick's window, as the engine would denoise it
    frames = s.window.frames
    x = torch.cat([f["x"] for f in frames], 1)
    sigma = torch.tensor([[s.levels[f["level"]] for f in frames]])
    actions = torch.stack([f["action"] for f in frames], 1)
    with torch.no_grad():
        cached = s._pass(x, sigma, actions)
        # the same attention from scratch: start frames and emitted frames as clean inputs, then the window
        codec_start = s.codec.encode(torch.from_numpy(start))[None]
        ctx = torch.cat([codec_start] + rec.latents, 1)
        ctx_actions = torch.cat([torch.zeros(1, 2, SPACE.size)] + rec.actions, 1)
        n, W = ctx.shape[1], x.shape[1]
        mask = torch.ones(n + W, n + W, dtype=torch.bool)
        mask[:n, :n] = torch.ones(n, n, dtype=torch.bool).tril()
        mask[:n, n:] = False
        full = s.denoiser(torch.cat([ctx, x], 1), torch.cat([torch.zeros(1, n), sigma], 1),
                          torch.cat([ctx_actions, actions], 1), frame_mask=mask)
    torch.testing.assert_close(cached, full[:, n:], rtol=1e-4, atol=1e-4)


def test_sink_sits_just_before_the_recent_frames_at_tick_10_and_10000():
    s = _session(sink=1, recent=3)
    s.reset(_start(1), seed=0)
    for tick in range(1, 10_001):
        if tick in (10, 10_000):
            slots, pos, n = s.cache.layout()
            assert slots[0] == 0 and pos[0] == 0  # the sink, at position 0
            assert pos.tolist() == list(range(4))  # recent frames right after it, positions never grow
            ages = s.cache.frame_age[slots[1:]].tolist()
            assert ages == sorted(ages) and s.cache.frame_age[0] == 0  # oldest recent first; sink is frame 0
            assert s.cache.n_frames == 4
        s.cache.push([(torch.zeros(1, 2, 4 * 16, 32), torch.zeros(1, 2, 4 * 16, 32))] * 2,
                     torch.zeros(1, 1, 3, 32, 32))


def test_memory_and_shapes_stay_constant_over_many_ticks():
    s = _session(sink=1, recent=2)
    s.reset(_start(1), seed=0)
    for _ in range(5):
        s.step(SPACE.noop())
    nbytes, n = s.cache.nbytes(), s.cache.n_frames
    for t in range(40):
        frame = s.step(SPACE.encode(["DOWN"]))
    assert s.cache.nbytes() == nbytes and s.cache.n_frames == n == 3
    assert len(s.window.frames) == s.cfg.window - 1
    assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_runs_and_is_deterministic(mode):
    outs = []
    for _ in range(2):
        s = _session(mode, teacher_steps=3)
        s.reset(_start(1), seed=7)
        outs.append(np.stack([s.step(SPACE.encode(["UP"])) for _ in range(3)]))
    np.testing.assert_array_equal(outs[0], outs[1])
    s = _session(mode, teacher_steps=3)
    s.reset(_start(1), seed=8)
    assert not np.array_equal(outs[0], np.stack([s.step(SPACE.encode(["UP"])) for _ in range(3)]))


def test_bad_start_frames_and_actions_are_clear_errors():
    s = _session()
    with pytest.raises(InputError, match="32x32"):
        s.reset(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(InputError, match="RGB"):
        s.reset(np.zeros((32, 32, 4), np.uint8))
    with pytest.raises(InputError, match="RGB"):
        s.reset(np.zeros((32, 32, 3), np.float32))
    s.reset(_start(1))
    with pytest.raises(InputError, match="action"):
        s.step(np.zeros(5, np.float32))


def test_dream_and_bench_commands(cli, tmp_path):
    from games.registry import make_game
    from games.record import record_dataset

    record_dataset(tmp_path / "pong", lambda: make_game("pong"), "random", 2, 30, progress=False)
    r = cli("train", f"data={tmp_path}/pong", f"out={tmp_path}/run", "model=tiny", "steps=1", "batch=2",
            "clip_len=4", "threads=1", "progress=false")
    assert r.returncode == 0, r.stderr
    ckpt = tmp_path / "run" / "teacher.safetensors"
    for mode in ("rolling", "framewise"):
        r = cli("dream", f"ckpt={ckpt}", "frames=6", f"out={tmp_path}/{mode}.mp4", f"mode={mode}", "threads=1")
        assert r.returncode == 0, r.stderr
        import av

        with av.open(str(tmp_path / f"{mode}.mp4")) as c:
            assert sum(1 for _ in c.decode(video=0)) == 7
    r = cli("bench", f"ckpt={ckpt}", "frames=200", "threads=1", "compile=false", "busy_cores=1", f"json={tmp_path}/b.json")
    assert r.returncode == 0, r.stderr
    import json

    figures = json.loads((tmp_path / "b.json").read_text())
    assert figures["frames"] == 200 and figures["fps"] > 0 and figures["latency_ticks"] == 4
    assert "rss_mb_at_200" in figures and figures["fps_ratio_end_over_100"] > 0
    assert figures["busy_cores"] == 1 and figures["startup_s"] > 0 and len(figures["fps_by_block"]) == 1
    r = cli("bench", "codec=conv_ae", "model=tiny", "width=128", "height=96", "frames=200", "threads=1",
            "compile=false", "progress=false", "device=auto", f"json={tmp_path}/wide.json")  # random weights, 4:3
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "wide.json").read_text())["tokens_per_frame"] == (96 // 16) * (128 // 16)
    r = cli("play", f"ckpt={ckpt}", "compile=false", "headless=true", "frames=3", "agent=random", "runtime.fps=100",
            f"video={tmp_path}/play.mp4", env={"DISPLAY": ""})
    assert r.returncode == 0, r.stderr
    assert "3 ticks" in r.stdout
    bad = cli("dream", f"ckpt={ckpt}", "frames=3", f"out={tmp_path}/x.mp4", "start=nothing.png")
    assert bad.returncode != 0 and "nothing.png" in bad.stderr and "Traceback" not in bad.stderr


def test_fusing_the_clean_reencode_into_the_next_pass_changes_nothing():
    frames = {}
    for fuse in (False, True):
        s = _session(sink=1, recent=2, fuse_reencode=fuse)
        s.reset(_start(1), seed=3)
        frames[fuse] = np.stack([s.step(SPACE.encode(["UP"] if t % 3 else [])) for t in range(12)])
    assert np.abs(frames[True].astype(int) - frames[False].astype(int)).max() <= 1  # fp32 rounding only


@pytest.mark.slow
def test_compiled_tick_matches_eager_and_compiles_at_reset():
    frames = {}
    for compiled in (False, True):
        s = _session(sink=1, recent=2, compile=compiled)
        s.reset(_start(1), seed=5)
        assert (s._tick_net is not None) == compiled  # compiled during reset, before any tick
        frames[compiled] = np.stack([s.step(SPACE.encode(["UP"] if t % 3 else [])) for t in range(10)])
    assert np.abs(frames[True].astype(int) - frames[False].astype(int)).max() <= 1


class GatedCompiler:
    """Stands in for ``torch.compile``: returns the function itself, wrapped to count calls, but only once
    ``release`` is set, so a test holds the background compile for as long as it wants."""

    def __init__(self):
        self.release, self.calls = __import__("threading").Event(), 0

    def __call__(self, fn, **_):
        assert self.release.wait(30), "the test never released the compiler"

        def compiled(*args, **kw):
            self.calls += 1
            return fn(*args, **kw)
        return compiled


def test_background_compile_plays_eager_at_once_then_switches_between_ticks(monkeypatch):
    compiler = GatedCompiler()
    monkeypatch.setattr(torch, "compile", compiler)
    keys = [SPACE.encode(["UP"] if t % 3 else []) for t in range(14)]
    eager = _session(sink=1, recent=2)
    eager.reset(_start(1), seed=5)
    want = np.stack([eager.step(a) for a in keys])

    s = _session(sink=1, recent=2, compile=True, background_compile=True)
    s.reset(_start(1), seed=5)  # returns while the compiler is held: nothing waits for it
    assert s.compiling and not s.compiled
    got = [s.step(a) for a in keys[:5]]
    assert compiler.calls == 0 and not s.compiled  # ticks ran eager meanwhile
    compiler.release.set()
    s._compiler.join(30)  # compiled and warmed on a cache of its own ...
    warm_calls = compiler.calls
    assert warm_calls > 0 and not s.compiled  # ... and taken into use only at the next tick's start
    got += [s.step(a) for a in keys[5:]]
    assert s.compiled and compiler.calls > warm_calls and s.compile_error is None
    np.testing.assert_array_equal(np.stack(got), want)  # the warm-up touched nothing of the session's state


def test_a_failed_background_compile_leaves_the_session_eager(monkeypatch):
    def broken(fn, **_):
        raise RuntimeError("no C++ compiler here\nmore lines")
    monkeypatch.setattr(torch, "compile", broken)
    s = _session(sink=1, recent=2, compile=True, background_compile=True)
    s.reset(_start(1), seed=0)
    assert not s.wait_compiled(30)
    assert s.compile_error == "RuntimeError: no C++ compiler here"
    assert s.step(SPACE.encode(["UP"])).shape == (32, 32, 3)


def test_hold_eager_keeps_a_compiled_session_eager_until_released(monkeypatch):
    compiler = GatedCompiler()
    compiler.release.set()
    monkeypatch.setattr(torch, "compile", compiler)
    s = _session(sink=1, recent=2, compile=True)  # compiled at reset, as replay does
    s.hold_eager = True
    s.reset(_start(1), seed=0)
    calls = compiler.calls
    s.step(SPACE.encode([]))
    assert not s.compiled and compiler.calls == calls
    s.hold_eager = False
    s.step(SPACE.encode([]))
    assert s.compiled and compiler.calls > calls


@pytest.mark.slow
def test_background_compile_with_torch_compile_switches_and_matches_eager():
    keys = [SPACE.encode(["UP"] if t % 3 else []) for t in range(8)]
    eager = _session(sink=1, recent=2)
    eager.reset(_start(1), seed=5)
    want = np.stack([eager.step(a) for a in keys])
    s = _session(sink=1, recent=2, compile=True, background_compile=True)
    s.reset(_start(1), seed=5)
    got = [s.step(keys[0])]
    assert s.wait_compiled(600), s.compile_error
    got += [s.step(a) for a in keys[1:]]
    assert np.abs(np.stack(got).astype(int) - want.astype(int)).max() <= 1  # fp32 rounding only


def test_the_engine_never_reaches_cuda_by_accident(cli, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from tests.conftest import assert_one_line_error

    for command in (("bench", "model=tiny", "frames=200"), ("play", "headless=true", "frames=3")):
        assert_one_line_error(cli(*command, "device=cuda", env={"DISPLAY": ""}), "device=cuda", "no CUDA device",
                              "device=cpu")
    assert_one_line_error(cli("bench", "model=tiny", "device=gpu"), "cpu, cuda or auto")


@pytest.mark.cuda
def test_a_session_on_cuda_makes_the_frames_it_makes_on_the_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    keys = [SPACE.encode(["UP"] if t % 3 else []) for t in range(8)]
    frames = {}
    for device in ("cpu", "cuda"):
        s = _session(sink=1, recent=2)
        s.denoiser.to(device)
        s.codec.to(device)
        s.device = torch.device(device)
        s.reset(_start(1), seed=5)
        frames[device] = np.stack([s.step(a) for a in keys]).astype(int)
    assert np.abs(frames["cuda"] - frames["cpu"]).mean() < 1.0  # other kernels, other rounding; the same world
