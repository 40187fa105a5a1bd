"""Rolling Forcing distillation: gradient windows, rollouts equal to the engine, DMD steps, resume, errors."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import assert_one_line_error, tiny_checkpoint
from worldmodel.engine.config import EngineConfig
from worldmodel.engine.session import WorldSession
from worldmodel.engine.rollout import Rollout, gradient_windows

TINY_TEACHER = ["model=tiny", "batch=2", "clip_len=8", "val_every=1000", "sample_every=1000", "threads=1",
                "progress=false"]
TINY_DISTILL = ["ode_pairs=4", "ode_batch=2", "batch=2", "rollout_frames=8", "critic_steps=1", "sample_every=1",
                "threads=1", "progress=false"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny teacher trained for a few steps on a small pong recording: (checkpoint, recording)."""
    from games.registry import make_game
    from games.record import record_dataset
    from tests.conftest import run_cli

    root = tmp_path_factory.mktemp("distill")
    record_dataset(root / "pong", lambda: make_game("pong"), "heuristic", 3, 60, progress=False)
    r = run_cli("train", f"data={root / 'pong'}", f"out={root / 'teacher'}", "steps=2", *TINY_TEACHER, cwd=root)
    assert r.returncode == 0, r.stderr
    return root / "teacher" / "teacher.safetensors", root / "pong"


@pytest.mark.parametrize("window", [1, 2, 3, 4, 5])
def test_gradient_windows_tile_the_rollout_once_for_every_offset(window):
    for n in range(1, 14):
        for offset in range(window):
            windows = gradient_windows(n, window, offset)
            covered = [j for _, first, end in windows for j in range(first, end)]
            assert sorted(covered) == list(range(n)), (n, window, offset)  # each frame exactly once
            for tick, first, end in windows:
                assert tick % window == offset and end - first <= window
                assert first >= tick - window + 1 and end - 1 <= tick  # frames in that tick's window
    with pytest.raises(ValueError):
        gradient_windows(8, 4, 4)


@pytest.mark.parametrize("window", [1, 3, 4])
def test_gradient_windows_after_a_prefix_cover_only_the_frames_after_it(window):
    """With a no-grad prefix of F frames, the windows tile frames F..n-1 exactly once, in ticks' own windows."""
    for n in range(2, 14):
        for first_frame in range(n):
            for offset in range(window):
                windows = gradient_windows(n, window, offset, first_frame)
                covered = [j for _, first, end in windows for j in range(first, end)]
                assert sorted(covered) == list(range(first_frame, n)), (n, first_frame, offset)
                for tick, first, end in windows:
                    assert first >= tick - window + 1 and end - 1 <= tick
    with pytest.raises(ValueError):
        gradient_windows(8, 4, 0, 8)


def _start_and_actions(session, n_actions, seed=0):
    rng = np.random.default_rng(seed)
    start = rng.integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    acts = (rng.random((n_actions, session.action_space.size)) < 0.5).astype(np.float32)
    return start, acts


@pytest.mark.parametrize("mode,sink", [("rolling", 1), ("rolling", 0), ("framewise", 1)])
def test_batch_one_rollout_reproduces_the_engine(tmp_path, mode, sink):
    """The student trains on exactly what it plays: same passes, same cache, same noise order as WorldSession."""
    session = WorldSession.from_checkpoint(tiny_checkpoint(tmp_path / "t.safetensors"),
                                           EngineConfig(mode=mode, sink=sink))
    start, acts = _start_and_actions(session, 10)
    session.reset(start, seed=5)
    played = np.stack([session.step(a) for a in acts])
    W = session.cfg.window
    warm = W - 1 if mode != "framewise" else 0  # a session's first W-1 frames hold no key
    noop = np.zeros((warm, acts.shape[1]), np.float32)
    tail = np.zeros((W, acts.shape[1]), np.float32)
    rollout = Rollout(session.denoiser, session.levels, mode, sink=sink, recent=4)
    with torch.no_grad():
        out = rollout.run(session.codec.encode(torch.from_numpy(start))[None],
                          torch.from_numpy(np.concatenate([noop, acts, tail]))[None], 10, torch.Generator().manual_seed(5))
    generated = session.codec.to_uint8(session.codec.decode(out.frames))[0].numpy()
    assert np.array_equal(generated, played)


@pytest.mark.parametrize("mode", ["rolling", "framewise"])
def test_gradient_reaches_the_student_only_through_the_selected_windows(tmp_path, mode):
    session = WorldSession.from_checkpoint(tiny_checkpoint(tmp_path / "t.safetensors"), EngineConfig(mode=mode))
    den = session.denoiser.train().requires_grad_(True)
    start, acts = _start_and_actions(session, 12)
    lat = session.codec.encode(torch.from_numpy(start))[None].repeat(2, 1, 1, 1, 1)
    actions = torch.from_numpy(acts)[None].repeat(2, 1, 1)
    calls = []  # (grad enabled, frames in the pass) for every forward
    hook = den.net.register_forward_hook(lambda m, args, out: calls.append((torch.is_grad_enabled(), args[0].shape[1])))
    rollout = Rollout(den, session.levels, mode, sink=1, recent=4)
    n, W, offset = 8, session.cfg.window, 2
    plain = rollout.run(lat, actions, n, torch.Generator().manual_seed(1))
    assert plain.outputs is None and not any(g for g, _ in calls)  # without an offset nothing carries gradient
    calls.clear()
    res = rollout.run(lat, actions, n, torch.Generator().manual_seed(1), grad_offset=offset)
    hook.remove()
    windows = gradient_windows(n, W, offset)
    with_grad = [i for i, (g, _) in enumerate(calls) if g]
    assert len(with_grad) == (len(windows) if mode == "rolling" else n)  # one pass per window / per frame
    assert torch.equal(res.frames, plain.frames)  # gradient changes nothing that is generated
    assert not res.frames.requires_grad and res.outputs.requires_grad and res.outputs.shape == res.frames.shape
    # each frame's output is its prediction at the level it held in its window
    expected = [rollout.levels[tick - j] for tick, first, end in windows for j in range(first, end)]
    assert res.levels.tolist() == pytest.approx(expected)
    res.outputs.square().mean().backward()
    grads = [p.grad for p in den.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def _params(state, prefix):
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def test_one_dmd_step_changes_student_and_critic_and_keeps_them_finite(teacher, tmp_path):
    from worldmodel.distill.distiller import DistillConfig, Distiller

    ckpt, data = teacher
    d = Distiller(DistillConfig(teacher=str(ckpt), data=str(data), out=str(tmp_path / "run"), dmd_steps=1,
                                batch=2, rollout_frames=8, critic_steps=1, threads=1, progress=False))
    before = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in
              (("student", d.student), ("critic", d.critic), ("teacher", d.teacher.net))}
    row = d.dmd_step()
    assert np.isfinite(row["dmd_loss"]) and np.isfinite(row["critic_loss"])
    for name, module in (("student", d.student), ("critic", d.critic)):
        after = module.state_dict()
        assert all(torch.isfinite(v).all() for v in after.values()), name
        assert any(not torch.equal(before[name][k], after[k]) for k in after), f"{name} did not change"
    assert all(torch.equal(before["teacher"][k], v) for k, v in d.teacher.net.state_dict().items())  # frozen


def test_the_critic_learns_the_in_window_predictions_that_dmd_scores(teacher, tmp_path):
    """DMD scores each frame's clean prediction inside its gradient window (from level 1.0, 0.9, 0.75 or 0.5); the
    critic must learn that distribution, not the emitted frames."""
    from worldmodel.distill.distiller import DistillConfig, Distiller
    from worldmodel.train.run import step_generators

    ckpt, data = teacher
    d = Distiller(DistillConfig(teacher=str(ckpt), data=str(data), out=str(tmp_path / "run"), dmd_steps=1,
                                batch=2, rollout_frames=8, critic_steps=1, threads=1, progress=False))
    _, (_, _, learned, _) = d.critic_rollout(0)
    # the same draws, made again: the rollout's in-window predictions and its emitted frames
    rng, g = step_generators(d.cfg.seed, d.rank, "critic", 0, 0, d.device)
    start, actions, mode, prefix = d._rollout_inputs(rng)
    offset = int(rng.integers(d.cfg.window))
    with torch.no_grad():
        result = Rollout(d.student_den, d.levels, mode, d.cfg.sink, d.cfg.recent).run(
            start, actions[:, d.cfg.start_frames:], d.cfg.rollout_frames, g, grad_offset=offset)
    W = d.cfg.window
    scored = torch.cat([result.outputs[:, i:i + W] for i in range(0, 8, W)])  # what student_step scores
    emitted = torch.cat([result.frames[:, i:i + W] for i in range(0, 8, W)])
    assert torch.equal(learned, scored)
    assert not torch.allclose(learned, emitted)  # predictions from high levels are not the finished frames


@pytest.mark.parametrize("mode", ["rolling", "framewise"])
def test_a_no_grad_prefix_leaves_the_frames_as_they_were_and_grades_only_what_follows(tmp_path, mode):
    """A rollout whose first 8 frames are a prefix without gradient emits the same frames as one without any
    gradient (same noise order), and returns predictions, with gradient, of the 4 frames after the prefix only."""
    session = WorldSession.from_checkpoint(tiny_checkpoint(tmp_path / "t.safetensors"), EngineConfig(mode=mode))
    den, levels = session.denoiser, session.levels
    den.net.requires_grad_(True)  # a session plays without gradient; a student trains with it
    net = den.net.cfg
    start = torch.randn(2, 2, net.channels, net.height, net.width, generator=torch.Generator().manual_seed(0))
    acts = (torch.rand(2, 15, net.action_dim, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    rollout = Rollout(den, levels, mode)
    with torch.no_grad():
        plain = rollout.run(start, acts, 12, torch.Generator().manual_seed(7))
    graded = rollout.run(start, acts, 12, torch.Generator().manual_seed(7), grad_offset=1, grad_from=8)
    torch.testing.assert_close(graded.frames, plain.frames)
    assert graded.outputs.shape[1] == 4 and graded.outputs.requires_grad and len(graded.levels) == 4


def test_rollouts_with_a_prefix_and_a_stale_sink_score_what_follows_the_prefix(teacher, tmp_path):
    """prefix_frames and stale_sink: each rollout draws a prefix of 0, W or 2W frames, its sink is a frame from
    earlier in the same episode, and the scorers get the graded frames after the frames just before them."""
    from worldmodel.distill.distiller import DistillConfig, Distiller
    from worldmodel.train.run import step_generators

    ckpt, data = teacher
    d = Distiller(DistillConfig(teacher=str(ckpt), data=str(data), out=str(tmp_path / "run"), dmd_steps=1,
                                batch=2, rollout_frames=4, prefix_frames=8, stale_sink=1.0, score_frames=4,
                                critic_steps=1, threads=1, progress=False))
    prefixes = set()
    for step in range(12):
        rng, _ = step_generators(0, 0, "student", step)
        prefixes.add(d._rollout_inputs(rng)[3])
    assert prefixes == {0, 4, 8}
    # a stale sink is a frame of the clip's own episode, from before the clip
    rng = np.random.default_rng(3)
    ids = d.clips.draw(np.random.default_rng(3), 2)
    x0, _ = d._batch(rng, 2, stale_sink=1.0)
    for b, i in enumerate(ids):
        e, start = d.clips.locate(i)
        earlier = d.teacher_model.codec.encode(torch.from_numpy(d.clips.episodes[e].frames(0, start + 1)))
        assert min((earlier - x0[b, 0]).abs().max().item() for earlier in earlier) < 1e-5
    rng, g = step_generators(0, 0, "student", 0)
    (ctx, ctx_act, blk, blk_act), stats = d._rollout(rng, g, with_grad=True)
    assert blk.shape[1] == 4 and blk.requires_grad and ctx.shape[1] == min(4 + stats["prefix"], d.clip_len - 4)
    loss, _ = d.student_step()
    assert torch.isfinite(loss)


def test_the_shipped_student_averages_dmd_steps_only(teacher, tmp_path):
    """The EMA starts afresh at the first DMD step: the ODE init's weights do not linger in what ships."""
    from worldmodel.distill.distiller import DistillConfig, Distiller

    ckpt, data = teacher
    d = Distiller(DistillConfig(teacher=str(ckpt), data=str(data), out=str(tmp_path / "run"), dmd_steps=1,
                                batch=2, rollout_frames=8, critic_steps=1, threads=1, progress=False))
    with torch.no_grad():
        for p in d.ema.net.parameters():  # an average of the ODE phase, far from the student
            p.add_(1.0)
    before = [p.detach().clone() for p in d.student.parameters()]
    d.dmd_step()
    after = list(d.student.parameters())
    # the first update of a fresh average: decay 0.1 between the student before and after its step
    for pe, b, a in zip(d.ema.net.parameters(), before, after):
        torch.testing.assert_close(pe, b + 0.9 * (a.detach() - b))


def test_every_draw_of_training_has_its_own_random_sources():
    """However many critic steps a student step has, no two draws share a seed: seeds packed as
    ``step * 1000 + sub`` made critic draw 1000 of DMD step 0 repeat draw 0 of step 1 once critic_steps >= 999."""
    from worldmodel.train.run import step_generators

    def sources(*key):
        rng, g = step_generators(0, *key)
        return int(rng.integers(2**63)), g.initial_seed()

    critic_steps = 1500
    keys = [(rank, "critic", step, sub) for rank in (0, 1) for step in range(2) for sub in range(critic_steps)]
    keys += [(rank, phase, step) for rank in (0, 1) for phase in ("student", "ode", "pairs", "teacher", "codec")
             for step in range(2)]
    drawn = [sources(*key) for key in keys]
    assert len({np_draw for np_draw, _ in drawn}) == len(keys)
    assert len({torch_seed for _, torch_seed in drawn}) == len(keys)
    assert sources(0, "critic", 1, 1000) == sources(0, "critic", 1, 1000)  # a pure function of its key: resume


def test_distill_writes_students_and_resume_equals_an_uninterrupted_run(cli, teacher, tmp_path):
    ckpt, data = teacher
    common = [f"teacher={ckpt}", f"data={data}", *TINY_DISTILL]
    r = cli("distill", *common, f"out={tmp_path}/full", "ode_steps=3", "dmd_steps=2")
    assert r.returncode == 0, r.stderr
    full = tmp_path / "full"
    for name in ("ode.safetensors", "student.safetensors", "state.safetensors", "loss.png", "metrics.jsonl",
                 "samples/step-000002.mp4", "samples.jsonl"):
        assert (full / name).exists(), name
    assert cli("distill", *common, f"out={tmp_path}/part", "ode_steps=2", "dmd_steps=0").returncode == 0
    r = cli("distill", *common, f"out={tmp_path}/part", "ode_steps=3", "dmd_steps=2", "resume=true")
    assert r.returncode == 0, r.stderr
    a, b = load_file(str(full / "student.safetensors")), load_file(str(tmp_path / "part" / "student.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the student plays in the engine with the window it was trained for
    session = WorldSession.from_checkpoint(full / "student.safetensors")
    assert session.info.kind == "student" and session.info.engine.window == 4
    session.reset(np.zeros((64, 64, 3), np.uint8))
    frame = session.step(np.zeros(session.action_space.size, np.float32))
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8


def test_distill_errors_are_one_line(cli, teacher, tmp_path):
    ckpt, data = teacher
    base = [f"teacher={ckpt}", f"data={data}", f"out={tmp_path}/r", *TINY_DISTILL]
    assert_one_line_error(cli("distill", *base), "ode_steps")
    assert_one_line_error(cli("distill", *base, "ode_steps=2", "ode_teacher_steps=6"), "multiple")
    assert_one_line_error(cli("distill", *base[1:], f"teacher={tmp_path}/none.safetensors", "dmd_steps=1"), "none")
    assert_one_line_error(cli("distill", *base, "dmd_steps=1", "prefix_frames=6"), "multiples")
    assert_one_line_error(cli("distill", *base, "dmd_steps=1", "score_frames=3"), "score_frames")
    assert_one_line_error(cli("distill", *base, "dmd_steps=1", "score_frames=8"), "shorter")
    maze = tmp_path / "maze"
    assert cli("record", "game=maze", "agent=random", "episodes=1", "frames=40", f"out={maze}",
               "progress=false").returncode == 0
    assert_one_line_error(cli("distill", f"teacher={ckpt}", f"data={maze}", f"out={tmp_path}/m", "dmd_steps=1",
                              *TINY_DISTILL), "UP, DOWN")


def test_two_process_torchrun_keeps_identical_students(teacher, tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    ckpt, data = teacher
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29519",
                        "-m", "runtime", "distill", f"teacher={ckpt}", f"data={data}", f"out={tmp_path}/ddp",
                        "ode_steps=2", "dmd_steps=1", *TINY_DISTILL],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[:3000] + "\n...\n" + r.stderr[-1500:]
    assert "ranks agree: 2 processes" in r.stdout and "2 process(es)" in r.stdout
    assert (tmp_path / "ddp" / "student.safetensors").exists()
