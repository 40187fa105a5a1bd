"""Shared fixtures: run the CLI as a user would, and a virtual X display for the window tests."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd=None, env=None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``rollingworld ARGS`` from this checkout, in a subprocess, from ``cwd`` (a temporary folder by default)."""
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), PYGAME_HIDE_SUPPORT_PROMPT="1")
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "runtime", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    """A clean failure: non-zero exit, no traceback, one line on stderr that mentions every needle."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]


@pytest.fixture
def cli(tmp_path):
    def call(*args, **kw):
        kw.setdefault("cwd", tmp_path)
        return run_cli(*args, **kw)
    return call


@pytest.fixture(scope="session")
def xdisplay():
    """A virtual X display (Xvfb) for tests that open real windows; sets DISPLAY for the test process."""
    if not shutil.which("Xvfb"):
        if os.environ.get("CI"):
            pytest.fail("Xvfb is not installed (setup.sh test installs it)")
        pytest.skip("Xvfb is not installed")
    # Xvfb picks a free display number itself and writes it to a pipe once it accepts connections
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(write_fd,))
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        number = pipe.readline().strip()
    if not number:
        proc.kill()
        pytest.fail("Xvfb did not start")
    display = f":{number}"
    old = os.environ.get("DISPLAY")
    os.environ["DISPLAY"] = display
    yield display
    proc.terminate()
    proc.wait(timeout=10)
    if old is None:
        os.environ.pop("DISPLAY", None)
    else:
        os.environ["DISPLAY"] = old


def tiny_checkpoint(path, game="pong", seed=0):
    """A real teacher checkpoint (the metadata ``Trainer.metadata`` writes) of a tiny DiT with random weights,
    perturbed so that the action conditioning changes the frames (zero-initialised gates would hide it)."""
    import torch

    from games.registry import make_game
    from worldmodel.checkpoint import save_checkpoint
    from worldmodel.nn.codec import make_codec
    from worldmodel.nn.flow import NoiseSchedule
    from worldmodel.nn.dit import make_model

    pong = make_game("pong")
    torch.manual_seed(seed)
    net = make_model("tiny", channels=3, height=64, width=64, patch=8, action_dim=pong.action_space.size)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    meta = {"kind": "teacher", "model": {"size": "tiny", **net.cfg.to_dict()},
            "action_space": pong.action_space.to_dict(), "codec": make_codec({"type": "pixels"}).config(),
            "schedule": NoiseSchedule().to_dict(), "step": 0, "frame": {"height": 64, "width": 64, "fps": pong.fps},
            "provenance": {"game": game}}
    save_checkpoint(path, {f"model.{k}": v for k, v in net.state_dict().items()}, meta)
    return path
