"""Bad settings, bad output paths and bad checkpoint metadata: each a one-line error naming what is wrong and a
non-zero exit, before work starts where it can be, and nothing already written lost."""
import os
import shutil
import subprocess

import pytest

from tests.conftest import assert_one_line_error, tiny_checkpoint

NO_DISPLAY = {"DISPLAY": ""}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from games.record import record_dataset
    from games.registry import make_game

    out = tmp_path_factory.mktemp("data") / "pong"
    record_dataset(out, lambda: make_game("pong"), "random", 2, 40, progress=False)
    return out


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "teacher.safetensors")


# ------------------------------------------------------------------------------------------------ output paths

def test_output_paths_that_cannot_be_written_are_one_line_errors(cli, data, teacher, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    folder = tmp_path / "folder"
    folder.mkdir()
    cases = [
        (("dream", f"ckpt={teacher}", "frames=3", f"out={folder}"), (str(folder), "folder")),
        (("dream", f"ckpt={teacher}", "frames=3", f"out={tmp_path}/x.avi"), ("x.avi", ".mp4")),
        (("export", f"data={data}", f"out={folder}"), (str(folder), "folder")),
        (("export", f"data={data}", f"out={tmp_path}/exp"), ("exp", ".mp4")),
        (("train", f"data={data}", f"out={afile}", "steps=1", "model=tiny"), (str(afile),)),
        (("train-codec", f"data={data}", f"out={afile}", "steps=1"), (str(afile),)),
        (("record", "game=pong", "episodes=1", "frames=4", f"out={afile}/sub"), (str(afile),)),
        (("dream", f"ckpt={teacher}", "frames=3", f"out={afile}/x.mp4"), (str(afile),)),
    ]
    for args, needles in cases:
        assert_one_line_error(cli(*args), *needles)
    assert afile.read_text() == "keep me" and list(folder.iterdir()) == []  # nothing written over


@pytest.mark.skipif(not shutil.which("setpriv") and os.geteuid() == 0, reason="root ignores file modes")
def test_a_read_only_output_folder_is_a_one_line_error(cli, data, teacher, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    # root writes anywhere: drop the capabilities that let it, so that the folder's mode holds
    prefix = (["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--inh-caps=-all",
               "--ambient-caps=-all"] if os.geteuid() == 0 else [])
    from tests.conftest import ROOT

    env = dict(os.environ, PYTHONPATH=str(ROOT), PYGAME_HIDE_SUPPORT_PROMPT="1")
    try:
        for args in (("record", "game=pong", "episodes=1", "frames=4", f"out={ro}/sub"),
                     ("train", f"data={data}", f"out={ro}/run", "steps=1", "model=tiny"),
                     ("dream", f"ckpt={teacher}", "frames=3", f"out={ro}/x.mp4")):
            r = subprocess.run([*prefix, os.sys.executable, "-m", "runtime", *args], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=300)
            assert_one_line_error(r, str(ro), "permission denied")
    finally:
        ro.chmod(0o755)
