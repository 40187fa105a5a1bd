"""The one console command: help, unknown commands, bad overrides, installed use from any folder."""
import os
import shutil
import subprocess

import pytest

from runtime.cli import COMMANDS
from tests.conftest import assert_one_line_error


def test_help_lists_every_command_with_one_line(cli):
    r = cli("--help")
    assert r.returncode == 0
    for name in COMMANDS:
        assert any(line.strip().startswith(name + " ") for line in r.stdout.splitlines()), name


def test_command_help_prints_its_settings(cli):
    r = cli("record", "--help")
    assert r.returncode == 0
    assert "agent: auto" in r.stdout and "episodes:" in r.stdout


def test_unknown_command_is_one_line_error(cli):
    assert_one_line_error(cli("fly"), "unknown command", "fly")


def test_unknown_setting_is_one_line_error(cli):
    assert_one_line_error(cli("record", "out=x", "bogus=3"), "bogus")


def test_malformed_override_is_one_line_error(cli):
    assert_one_line_error(cli("record", "out=x", "episodes=="), "episodes")
    assert_one_line_error(cli("record", "--fast"), "key=value")


def test_missing_required_setting_is_named(cli):
    assert_one_line_error(cli("record", "game=pong"), "out=")


def test_unknown_game_lists_choices(cli, tmp_path):
    assert_one_line_error(cli("record", "game=tetris", f"out={tmp_path}/d"), "tetris", "pong", "maze")


def test_no_outputs_folder_is_written(cli, tmp_path):
    cli("record", "--help")
    cli("check", f"data={tmp_path}/missing")
    assert not (tmp_path / "outputs").exists() and not (tmp_path / ".hydra").exists()


@pytest.mark.skipif(not shutil.which("rollingworld"), reason="rollingworld is not installed")
def test_installed_console_script_finds_its_configs_from_any_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run(["rollingworld", "record", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "episodes:" in r.stdout


def test_rebinding_a_games_keys_from_the_command_line_as_the_readme_shows():
    """``runtime.bindings`` names the game's own action keys, which no schema lists: given whole or one key."""
    from runtime.cli import compose

    assert compose("play", ["runtime.bindings={UP:[k],DOWN:[j]}"]).runtime.bindings == {"UP": ["k"], "DOWN": ["j"]}
    assert compose("game", ["runtime.bindings.UP=k"]).runtime.bindings == {"UP": "k"}
    assert compose("play", []).runtime.bindings == {}
