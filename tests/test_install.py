"""Installing as a newcomer does: the README's set-up in a fresh clone (a project venv where the system Python is
externally managed), and ``pip install`` of the package, which must carry the bundled models."""
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

NO_DISPLAY = {"DISPLAY": ""}


def _fresh_clone(dest):
    if (ROOT / ".git").exists():
        subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
        for name in ("assets",):  # a commit in progress may hold newer bundled models than HEAD
            shutil.copytree(ROOT / name, dest / name, dirs_exist_ok=True)
    else:
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(".venv", "*.egg-info", "__pycache__"))
    return dest


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONPATH")}
    return {**env, "PYGAME_HIDE_SUPPORT_PROMPT": "1", **extra}


@pytest.fixture
def shipped_pong():
    if not (ROOT / "assets" / "pong.safetensors").exists():
        pytest.skip("assets/pong.safetensors is not bundled")


def test_pip_install_outside_the_checkout_plays_the_bundled_model(shipped_pong, tmp_path):
    src = _fresh_clone(tmp_path / "src")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(tmp_path / "venv")], check=True)
    py = tmp_path / "venv" / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(src)], capture_output=True,
                       text=True, env=_env())
    assert r.returncode == 0, r.stderr[-2000:]
    shutil.rmtree(src)  # nothing of the checkout is left to find
    where = subprocess.run([str(py), "-c", "import runtime; print(runtime.__file__)"], capture_output=True, text=True,
                           cwd=tmp_path, env=_env())
    assert str(tmp_path / "venv") in where.stdout, where
    r = subprocess.run([str(tmp_path / "venv" / "bin" / "rollingworld"), "play", "headless=true", "frames=3",
                        "agent=random"], capture_output=True, text=True, cwd=tmp_path, env=_env(**NO_DISPLAY))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "pong (world model): 3 ticks" in r.stdout


def test_setup_makes_a_project_venv_and_the_launcher_runs_in_it(shipped_pong, tmp_path):
    """The externally-managed case (forced with ROLLINGWORLD_VENV=1; the venv sees the machine's packages so that
    torch is not installed again), then the README's command through ``./rollingworld``."""
    src = _fresh_clone(tmp_path / "src")
    env = _env(ROLLINGWORLD_VENV="1", ROLLINGWORLD_VENV_OPTIONS="--system-site-packages", PYTHON=sys.executable)
    r = subprocess.run(["./setup.sh"], cwd=src, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "making a project venv in .venv" in r.stderr and (src / ".venv" / "bin" / "python").exists()
    where = subprocess.run([str(src / ".venv" / "bin" / "python"), "-m", "pip", "show", "-f", "rollingworld"],
                           capture_output=True, text=True, env=_env())
    assert "Editable project location: " + str(src) in where.stdout, where.stdout[-1500:]
    r = subprocess.run(["./rollingworld", "play", "headless=true", "frames=3", "agent=random"], cwd=src,
                       capture_output=True, text=True, env=_env(**NO_DISPLAY, PYTHON="/nonexistent/python"))
    assert r.returncode == 0, r.stderr[-2000:]  # PYTHON is not used: the launcher found .venv
    assert "pong (world model): 3 ticks" in r.stdout
