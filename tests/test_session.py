"""Compare mode, session recording and replay, through the CLI a user runs, on a tiny random teacher checkpoint."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from games.data.video import hstack
from games.registry import make_game
from runtime.session_record import frame_sha1, read_session
from tests.conftest import ROOT, assert_one_line_error, run_cli, tiny_checkpoint

NO_DISPLAY = {"DISPLAY": ""}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "teacher.safetensors")


@pytest.fixture(scope="module")
def recorded(ckpt, tmp_path_factory):
    """A headless session driven by the random agent for 20 ticks, recorded to s.mp4 + s.jsonl."""
    folder = tmp_path_factory.mktemp("session")
    r = run_cli("play", f"ckpt={ckpt}", "compile=false", "headless=true", "agent=random", "frames=20", "seed=3",
                f"record={folder}/s.mp4", cwd=folder, env=NO_DISPLAY)
    assert r.returncode == 0, r.stderr
    return folder / "s.jsonl"


def _count_frames(mp4):
    import av

    with av.open(str(mp4)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return len(frames), frames[0].shape


def _frames_in_process(ckpt, log, compare):
    """sha1 of the frames a plain WorldSession (and, for compare, the real game beside it) makes for the log."""
    from worldmodel.engine.config import EngineConfig
    from worldmodel.engine.session import WorldSession

    threads = torch.get_num_threads()
    torch.set_num_threads(log.header["threads"])  # the same reduction order as the recorded run
    try:
        session = WorldSession.from_checkpoint(ckpt, EngineConfig(**log.header["engine"]))
        game = make_game("pong")
        seed = log.header["seed"]
        real = game.reset(seed)
        dream = session.reset(real, seed=seed)
        frames = [(real, dream)] + [(game.step(a), session.step(a)) for a in log.actions]
    finally:
        torch.set_num_threads(threads)
    return [frame_sha1(hstack(r, d) if compare else d) for r, d in frames]


def test_compare_mode_shows_the_real_game_left_and_the_world_model_right(ckpt, cli, tmp_path):
    r = cli("play", f"ckpt={ckpt}", "compile=false", "compare=true", "headless=true", "agent=heuristic", "frames=12",
            f"record={tmp_path}/c.mp4", env=NO_DISPLAY)
    assert r.returncode == 0, r.stderr
    log = read_session(tmp_path / "c.mp4")
    assert log.header["compare"] and len(log.actions) == 12 and log.actions[:, :2].any()  # the agent pressed keys
    # every frame shown is real game | plain WorldSession under the same actions, from the game's start screen
    assert log.hashes == _frames_in_process(ckpt, log, compare=True)
    assert _count_frames(tmp_path / "c.mp4") == (13, (64 * 4, (64 + 2 + 64) * 4, 3))


def test_recorded_session_replays_to_identical_frames(recorded, ckpt, cli, tmp_path):
    log = read_session(recorded)
    assert len(log.actions) == 20 and len(log.hashes) == 21
    assert log.header["frame_sha1"] == frame_sha1(make_game("pong").reset(3))  # starts from the game's screen
    assert log.hashes == _frames_in_process(ckpt, log, compare=False)  # the hashes are of the frames shown
    assert _count_frames(recorded.with_suffix(".mp4"))[0] == 21
    r = cli("replay", str(recorded), "headless=true", f"out={tmp_path}/r.mp4", env=NO_DISPLAY)
    assert r.returncode == 0, r.stderr
    assert "identical: 21 frames" in r.stdout
    assert _count_frames(tmp_path / "r.mp4")[0] == 21
    r = cli("replay", f"session={recorded.with_suffix('.mp4')}", "headless=true", "frames=5", env=NO_DISPLAY)
    assert r.returncode == 0 and "identical: 6 frames" in r.stdout, r.stderr


def test_restarts_are_recorded_and_replayed(ckpt, cli, tmp_path):
    """The player's reset control restarts the source mid-session (``PlaySession.reset``): the recording goes on."""
    from runtime.worlds import build_source
    from runtime.session_record import SessionRecorder, session_header
    from worldmodel.engine.config import EngineConfig

    threads = torch.get_num_threads()
    try:
        source = build_source(ckpt, EngineConfig(), 1, compare=True)
        header = session_header(ckpt, source.session, 0, 1, True, tmp_path / "r.mp4")
        recorder = SessionRecorder(source, tmp_path / "r.mp4", header)
        try:
            recorder.reset(0)
            space = source.action_space
            for t in range(4):
                recorder.step(space.encode(["UP"]))
            restarted = recorder.reset(1, start_seed=0)  # same start screen, new sampling noise
            for t in range(3):
                recorder.step(space.encode(["DOWN"]))
        finally:
            recorder.close()
    finally:
        torch.set_num_threads(threads)
    log = read_session(tmp_path / "r.jsonl")
    assert [kind for kind, _ in log.events] == ["tick"] * 4 + ["reset"] + ["tick"] * 3
    assert log.hashes[5] == frame_sha1(restarted)
    r = cli("replay", f"session={tmp_path}/r.jsonl", "headless=true", env=NO_DISPLAY)
    assert r.returncode == 0, r.stderr
    assert "identical: 9 frames" in r.stdout and "1 restarts" in r.stdout


def test_replay_in_a_window_shows_the_session(recorded, cli, xdisplay):
    r = cli("replay", f"session={recorded}", "frames=6", env={"DISPLAY": xdisplay})
    assert r.returncode == 0, r.stderr
    assert "identical: 7 frames" in r.stdout


def test_a_tampered_action_is_reported_at_the_first_differing_tick(recorded, cli, tmp_path):
    lines = recorded.read_text().splitlines()
    tick = 8
    entry = json.loads(lines[tick])
    assert entry["tick"] == tick
    entry["action"][0] = 1.0 - entry["action"][0]  # UP pressed <-> released
    lines[tick] = json.dumps(entry)
    tampered = tmp_path / "t.jsonl"
    tampered.write_text("\n".join(lines) + "\n")
    r = cli("replay", f"session={tampered}", "headless=true", env=NO_DISPLAY)
    assert r.returncode == 1, r.stderr
    found = re.search(r"first difference at tick (\d+)", r.stdout)
    assert found, r.stdout
    # the action enters the rolling window at its tick; the frame it shows leaves latency_ticks (4) later
    assert tick <= int(found.group(1)) <= tick + 4


def test_an_interrupted_session_keeps_a_playable_mp4_and_every_tick(ckpt, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), DISPLAY="")
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "play", f"ckpt={ckpt}", "compile=false", "headless=true",
                             "agent=random", f"record={tmp_path}/i.mp4"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sidecar = tmp_path / "i.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not sidecar.exists() or len(sidecar.read_text().splitlines()) < 6):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    log = read_session(sidecar)
    assert len(log.actions) >= 5
    assert _count_frames(tmp_path / "i.mp4")[0] == len(log.hashes)  # the mp4 was finished, frame for line


def test_bad_sessions_and_checkpoints_are_one_line_errors(recorded, ckpt, cli, tmp_path):
    assert_one_line_error(cli("replay", f"session={tmp_path}/none.mp4"), "none.jsonl", "not found")
    lines = recorded.read_text().splitlines()
    (tmp_path / "cut.jsonl").write_text(lines[0][:200])
    assert_one_line_error(cli("replay", f"session={tmp_path}/cut.jsonl"), "cut.jsonl", "line 1")
    short = {**json.loads(lines[3]), "action": [1.0, 0.0]}  # pong's actions have 4 entries
    (tmp_path / "bad.jsonl").write_text("\n".join(lines[:3] + [json.dumps(short)]) + "\n")
    assert_one_line_error(cli("replay", f"session={tmp_path}/bad.jsonl"), "line 4", "action")
    # the checkpoint at the recorded path was replaced by another one
    other = tiny_checkpoint(tmp_path / "other.safetensors", seed=1)
    header = json.loads(lines[0])
    header["checkpoint"]["path"] = str(other)
    (tmp_path / "moved.jsonl").write_text("\n".join([json.dumps(header)] + lines[1:]) + "\n")
    assert_one_line_error(cli("replay", f"session={tmp_path}/moved.jsonl"), "other.safetensors", "not the one")
    assert_one_line_error(cli("replay", f"session={recorded}", f"ckpt={other}"), "not the one")
    # a checkpoint whose game cannot be built has nothing to compare with
    tetris = tiny_checkpoint(tmp_path / "tetris.safetensors", game="tetris")
    assert_one_line_error(cli("play", f"ckpt={tetris}", "compare=true", "headless=true", "frames=2", env=NO_DISPLAY),
                          "tetris")


def test_posted_keys_and_mouse_enter_the_newest_window_frame_and_the_screen_shows_the_dream(ckpt, xdisplay):
    """play ckpt=: a key and a mouse motion posted to pygame's queue become the action of the newest (pure
    noise) frame of the rolling window, and the window shows exactly the session's frame, scaled."""
    import numpy as np
    import pygame

    from runtime.worlds import WorldSource
    from runtime.worlds import load_session
    from runtime.display import Window
    from runtime.input import InputMapper, resolve_bindings
    from runtime.player import PlaySession
    from worldmodel.engine.config import EngineConfig

    source = WorldSource(load_session(ckpt, EngineConfig(), 1))
    space = source.action_space
    newest, step = [], source.session.step

    def recording_step(action):
        frame = step(action)
        newest.append(source.session.window.frames[-1]["action"][0].numpy().copy())  # after the step: the frame just entered
        return frame

    source.session.step = recording_step
    window = Window((256, 256), capture=True)
    try:
        mapper = InputMapper(space, resolve_bindings(space, source.default_bindings))
        play = PlaySession(source, window, mapper, fps=100)
        pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_UP, mod=0, unicode="", scancode=0))
        pygame.event.post(pygame.event.Event(pygame.MOUSEMOTION, pos=(10, 10), rel=(0, 6), buttons=(0, 0, 0)))
        result = play.run(seed=0, frames=3)
        np.testing.assert_array_equal(newest[0], space.encode(["UP"], dy=6))  # tick 1: key held + the motion
        np.testing.assert_array_equal(newest[1], space.encode(["UP"]))  # held key stays, motion was one tick's
        np.testing.assert_array_equal(window.read_screen(), np.repeat(np.repeat(result.last_frame, 4, 0), 4, 1))
    finally:
        window.close()


def test_play_and_kiosk_bad_checkpoint_or_game_are_one_line_errors(cli, tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a checkpoint" * 8)
    assert_one_line_error(cli("play", f"ckpt={garbage}", "headless=true", "frames=2", env=NO_DISPLAY),
                          "garbage.safetensors", "not a safetensors file")
    assert_one_line_error(cli("play", f"ckpt={tmp_path}/missing.safetensors", "headless=true", env=NO_DISPLAY),
                          "missing.safetensors")
    assert_one_line_error(cli("kiosk", f"ckpt={garbage}", "headless=true", "frames=2", env=NO_DISPLAY),
                          "not a safetensors file")
    assert_one_line_error(cli("kiosk", "game=tetris", "headless=true", "frames=2", env=NO_DISPLAY), "tetris", "pong")
    assert_one_line_error(cli("game", "game=tetris", "headless=true", "frames=2", env=NO_DISPLAY), "tetris", "pong")


def test_a_session_that_switched_to_the_compiled_tick_replays_with_the_switch_at_the_same_tick(ckpt, tmp_path,
                                                                                                 monkeypatch):
    """Compiled and eager ticks differ (here on purpose, by a visible amount; in life by rounding): the sidecar marks
    the first compiled tick and replay switches there, so every frame matches."""
    import threading

    from runtime.commands import replay
    from runtime.session_record import SessionRecorder, session_header
    from runtime.worlds import build_source
    from worldmodel.engine.config import EngineConfig

    release = threading.Event()

    def compile_off_by_a_little(fn, **_):
        assert release.wait(30)

        def compiled(*args, **kw):
            out = fn(*args, **kw)
            if isinstance(out, tuple):  # the denoiser's pass: (clean prediction, keys/values)
                return (out[0] + 0.05, out[1])
            return out if not out.is_floating_point() else out + 0.05
        return compiled

    monkeypatch.setattr(torch, "compile", compile_off_by_a_little)
    engine = EngineConfig(compile=True, background_compile=True)
    source = build_source(ckpt, engine, 1, False)
    video = tmp_path / "s.mp4"
    recorder = SessionRecorder(source, video, session_header(ckpt, source.session, 2, 1, False, video))
    try:
        recorder.reset(2)
        for t in range(8):
            if t == 3:
                release.set()
                source.session._compiler.join(30)
            recorder.step(source.action_space.encode(["UP"] if t % 2 else []))
    finally:
        recorder.close()
    log = read_session(tmp_path / "s.jsonl")
    assert log.compiled_at == 4
    assert replay.run(replay.ReplayConfig(session=str(tmp_path / "s.jsonl"), headless=True)) == 0

    lines = (tmp_path / "s.jsonl").read_text().splitlines()
    unmarked = tmp_path / "unmarked.jsonl"  # the same session without its marker: replay compiles from tick 1
    unmarked.write_text("\n".join(line.replace(', "compiled": true', "") for line in lines) + "\n")
    assert read_session(unmarked).compiled_at is None
    assert replay.run(replay.ReplayConfig(session=str(unmarked), headless=True)) == 1


def test_quitting_while_the_tick_still_compiles_exits_cleanly(ckpt, cli):
    """The background compile is still running when the player quits: the process ends with the session's exit
    code, not with torch aborting in the interpreter's teardown."""
    r = cli("play", f"ckpt={ckpt}", "compile=true", "headless=true", "agent=random", "frames=3", "runtime.fps=100",
            env=NO_DISPLAY)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "3 ticks" in r.stdout and "terminate called" not in r.stderr and "compiling the tick meanwhile" in r.stderr
