"""The data commands as a designer uses them: record, kill -9, check, resume, export, import, bad input."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from games.data.recording import Recording
from tests.conftest import ROOT, assert_one_line_error


def test_record_killed_then_checked_then_resumed(cli, tmp_path):
    out = tmp_path / "maze"
    args = ["record", "game=maze", "agent=heuristic", "episodes=2", "frames=600", f"out={out}", "chunk_frames=32",
            "progress=false"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYGAME_HIDE_SUPPORT_PROMPT="1")
    proc = subprocess.Popen([sys.executable, "-m", "runtime", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(list((out / "ep_000000").glob("*.safetensors"))) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    chunks_before = {p.name: p.read_bytes() for p in (out / "ep_000000").glob("*.safetensors")}

    r = cli("check", f"data={out}")
    assert r.returncode != 0 and "incomplete episode" in r.stdout, r.stdout
    n_frames = int(r.stdout.split(" episodes, ")[1].split(" frames")[0])
    assert n_frames >= 3 * 32 and n_frames < 1200

    r = cli(*args)  # the same command resumes
    assert r.returncode == 0, r.stderr
    assert "1 resumed" in r.stdout
    for name, data in chunks_before.items():  # earlier chunks are never rewritten
        assert (out / "ep_000000" / name).read_bytes() == data
    r = cli("check", f"data={out}")
    assert r.returncode == 0 and r.stdout.startswith("2 episodes, 1200 frames, 1200 actions"), r.stdout


def test_corrupt_chunk_is_named_by_check(cli, tmp_path):
    out = tmp_path / "pong"
    assert cli("record", "game=pong", "episodes=1", "frames=64", f"out={out}", "chunk_frames=16",
               "progress=false").returncode == 0
    victim = out / "ep_000000" / "00000016.safetensors"
    victim.write_bytes(victim.read_bytes()[:100])
    r = cli("check", f"data={out}")
    assert r.returncode != 0
    assert "00000016.safetensors" in r.stdout and "DAMAGED" in r.stdout


def test_missing_manifest_is_one_line_error(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli("check", f"data={tmp_path}/empty"), "manifest")
    assert_one_line_error(cli("export", f"data={tmp_path}/empty", f"out={tmp_path}/x.mp4"), "manifest")


def test_wrong_resolution_is_one_line_error(cli, tmp_path):
    out = tmp_path / "pong"
    assert cli("record", "game=pong", "episodes=1", "frames=8", f"out={out}", "progress=false").returncode == 0
    assert_one_line_error(cli("record", "game=pong", "game.width=96", "episodes=2", "frames=8", f"out={out}",
                              "progress=false"), "96")
    assert_one_line_error(cli("record", "game=pong", "game.width=4", "episodes=1", "frames=8",
                              f"out={tmp_path}/tiny"), "resolution")


def test_unknown_game_and_agent_are_one_line_errors(cli, tmp_path):
    assert_one_line_error(cli("game", "game=gym:NoSuchEnv-v9", "headless=true", "frames=1"), "NoSuchEnv")
    assert_one_line_error(cli("record", "game=pong", "agent=genius", f"out={tmp_path}/x"), "genius")


def test_export_then_import_gives_back_actions_and_frames(cli, tmp_path):
    out = tmp_path / "pong"
    assert cli("record", "game=pong", "episodes=1", "frames=90", f"out={out}", "progress=false").returncode == 0
    assert cli("export", f"data={out}", f"out={tmp_path}/ep.mp4").returncode == 0
    r = cli("import", f"video={tmp_path}/ep.mp4", f"actions={tmp_path}/ep.jsonl", f"out={tmp_path}/back",
            "progress=false")
    assert r.returncode == 0, r.stderr
    a, b = Recording(out)[0], Recording(tmp_path / "back")[0]
    assert b.length == a.length == 90
    np.testing.assert_array_equal(a.actions(), b.actions())
    mse = np.mean((a.frames().astype(np.float64) - b.frames().astype(np.float64)) ** 2)
    assert 10 * np.log10(255.0 ** 2 / mse) > 30


def test_malformed_action_log_line_is_one_line_error(cli, tmp_path):
    out = tmp_path / "pong"
    assert cli("record", "game=pong", "episodes=1", "frames=30", f"out={out}", "progress=false").returncode == 0
    assert cli("export", f"data={out}", f"out={tmp_path}/ep.mp4").returncode == 0
    lines = (tmp_path / "ep.jsonl").read_text().splitlines()
    lines[5] = json.dumps({"frame": 4, "keys": "UP"})  # keys must be a list
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    r = cli("import", f"video={tmp_path}/ep.mp4", f"actions={tmp_path}/bad.jsonl", f"out={tmp_path}/x")
    assert_one_line_error(r, "bad.jsonl:6")
