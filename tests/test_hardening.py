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


# ------------------------------------------------------------------------------------------------- settings

def test_settings_out_of_range_or_unknown_are_refused_before_work_starts(cli, data, teacher, tmp_path):
    train = ("train", f"data={data}", f"out={tmp_path}/run", "steps=1", "model=tiny")
    dream = ("dream", f"ckpt={teacher}", f"out={tmp_path}/x.mp4")
    cases = [
        ((*train, "threads=-3"), ("threads=-3", ">= 0")),
        ((*train, "batch=0"), ("batch=0", ">= 1")),
        ((*train, "lr=-1"), ("lr=-1", ">= 0")),
        ((*dream, "frames=-5"), ("frames=-5", ">= 1")),
        ((*dream, "frames=0"), ("frames=0", ">= 1")),
        (("bench", "threads=-3"), ("threads=-3",)),
        (("record", "game=pong", "episodes=0", f"out={tmp_path}/rec"), ("episodes=0",)),
        (("pipeline", "game=pong", "budget=smoke", f"out={tmp_path}/p", "budget.teacher.batch=0"),
         ("budget.teacher.batch=0",)),
        ((*dream, "frames=abc"), ("frames=abc",)),
        ((*dream, "+nonsense=1"), ("unknown setting", "nonsense", "--help")),
        ((*dream, "nonsense=1"), ("unknown setting", "nonsense", "--help")),
    ]
    for args, needles in cases:
        assert_one_line_error(cli(*args), *needles)
    assert not (tmp_path / "run").exists() and not (tmp_path / "x.mp4").exists() and not (tmp_path / "p").exists()


# ------------------------------------------------------------------------------------------- checkpoint metadata

def _edited(src, dest, edit):
    """A copy of the checkpoint ``src`` at ``dest`` with its metadata JSON changed by ``edit(meta)``."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as f:
        header = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(header["rollingworld"])
    edit(meta)
    header["rollingworld"] = json.dumps(meta)
    header.pop("data_sha256", None)  # an edit by hand does not update the checksum; the metadata is what is tested
    save_file(tensors, str(dest), metadata=header)
    return dest


def _set(path: str, value):
    def edit(meta):
        *parents, last = path.split(".")
        node = meta
        for p in parents:
            node = node.setdefault(p, {})
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return edit


DELETE = object()

METADATA_CASES = [  # (what is edited, its new value, words the error must hold)
    ("model.bogus", 1, ("bogus",)),
    ("model.dim", -64, ("model.dim",)),
    ("model.dim", 10 ** 7, ("model.dim",)),
    ("model.patch", 0, ("model.patch",)),
    ("model.heads", 3, ("heads", "dim")),
    ("model.dim", 128, ("does not match its weights",)),
    ("model.dim", DELETE, ("missing", "dim")),
    ("model.action_dim", "abc", ("model.action_dim",)),
    ("action_space.keys", ["UP", "DOWN", "LEFT", "RIGHT", "FIRE"], ("action_dim", "action space")),
    ("schedule.bogus", 1, ("schedule", "bogus")),
    ("schedule.shift", "x", ("schedule.shift",)),
    ("frame.fps", 0, ("frame.fps",)),
    ("frame.height", -1, ("frame.height",)),
    ("engine", {"window": "abc"}, ("engine.window",)),
    ("engine", {"mode": "warp"}, ("engine.mode",)),
    ("engine", {"wobble": 1}, ("wobble",)),
    ("kind", "oracle", ("kind",)),
    ("codec.type", "mystery", ("codec",)),
]


def _in_process(capsys, *args) -> subprocess.CompletedProcess:
    """``rollingworld ARGS`` in this process (no interpreter start-up), as a finished process."""
    from runtime.cli import main

    code = main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def test_a_checkpoint_with_bad_metadata_is_refused_in_one_line_before_any_model_is_built(cli, capsys, teacher,
                                                                                        tmp_path):
    for i, (field, value, needles) in enumerate(METADATA_CASES):
        bad = _edited(teacher, tmp_path / f"bad{i}.safetensors", _set(field, value))
        for args in (("check", f"ckpt={bad}"), ("dream", f"ckpt={bad}", "frames=3", f"out={tmp_path}/x.mp4")):
            assert_one_line_error(_in_process(capsys, *args), f"bad{i}.safetensors", *needles)
        if i % 6 == 0:  # and, now and then, from the console as a user runs it
            assert_one_line_error(cli("bench", f"ckpt={bad}", "frames=200", "compile=false", "progress=false"),
                                  f"bad{i}.safetensors", *needles)
    assert not (tmp_path / "x.mp4").exists()


def test_a_checkpoint_of_the_wrong_kind_is_explained(cli, data, teacher, tmp_path):
    r = cli("train-codec", f"data={data}", f"out={tmp_path}/codec", "steps=2", "progress=false")
    assert r.returncode == 0, r.stderr
    codec = tmp_path / "codec" / "codec.safetensors"
    assert_one_line_error(cli("dream", f"ckpt={codec}", "frames=3", f"out={tmp_path}/x.mp4"), "codec checkpoint",
                          "teacher or a student")
    student = _edited(teacher, tmp_path / "student.safetensors", _set("kind", "student"))
    assert_one_line_error(cli("distill", f"teacher={student}", f"data={data}", f"out={tmp_path}/d", "ode_steps=1"),
                          "student checkpoint", "from a teacher")
    assert not (tmp_path / "d").exists()


# --------------------------------------------------------------------------------------------------- imports

def test_an_import_says_what_does_not_fit(cli, data, tmp_path):
    import json

    r = cli("export", f"data={data}", f"out={tmp_path}/ep.mp4")
    assert r.returncode == 0, r.stderr
    header, *entries = [json.loads(line) for line in (tmp_path / "ep.jsonl").read_text().splitlines()]

    def log(name, rows):
        path = tmp_path / name
        path.write_text("".join(json.dumps(row) + "\n" for row in [header, *rows]))
        return path

    def imported(name, rows, *extra):
        return cli("import", f"video={tmp_path}/ep.mp4", f"actions={log(name, rows)}", f"out={tmp_path}/{name}.data",
                   "progress=false", *extra)

    misspelt = [{("key" if k == "keys" else k): v for k, v in e.items()} for e in entries]
    assert_one_line_error(imported("misspelt", misspelt), "misspelt", "unknown field", "'key'")
    quiet = imported("quiet", [{"frame": e["frame"]} for e in entries])
    assert quiet.returncode == 0 and "never holds a key" in quiet.stderr
    late = imported("late", [*entries, *({**e, "frame": e["frame"] + len(entries)} for e in entries)])
    assert late.returncode == 0 and f"{len(entries)} entries" in late.stderr
    assert "after the video's last frame" in late.stderr
    assert_one_line_error(imported("fps0", entries, "fps=0"), "fps=0", "> 0")
    assert_one_line_error(imported("w0", entries, "width=0"), "width=0", ">= 1")
    clean = imported("clean", entries)
    assert clean.returncode == 0 and clean.stderr.strip() == "", clean.stderr  # a sound import warns of nothing


def test_an_interrupted_import_run_again_finishes_its_own_episode(cli, tmp_path):
    import signal
    import sys
    import time

    from games.data.recording import Recording
    from games.record import record_dataset
    from games.registry import make_game
    from tests.conftest import ROOT

    record_dataset(tmp_path / "src", lambda: make_game("pong"), "random", 1, 1200, progress=False)
    assert cli("export", f"data={tmp_path}/src", f"out={tmp_path}/ep.mp4").returncode == 0
    args = ["import", f"video={tmp_path}/ep.mp4", f"actions={tmp_path}/ep.jsonl", "chunk_frames=32", "progress=false"]
    assert cli(*args, f"out={tmp_path}/whole").returncode == 0
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "runtime", *args, f"out={tmp_path}/cut"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    chunks = tmp_path / "cut" / "ep_000000"
    deadline = time.monotonic() + 120
    while not (chunks.is_dir() and len(list(chunks.glob("*.safetensors"))) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert cli("check", f"data={tmp_path}/cut").returncode != 0  # an incomplete episode
    r = cli(*args, f"out={tmp_path}/cut")  # the same command again
    assert r.returncode == 0, r.stderr
    assert cli("check", f"data={tmp_path}/cut").returncode == 0
    whole, cut = Recording(tmp_path / "whole"), Recording(tmp_path / "cut")
    assert len(cut.episodes) == 1 and cut[0].length == whole[0].length
    import numpy as np

    assert np.array_equal(cut[0].frames(0, cut[0].length), whole[0].frames(0, whole[0].length))
    assert np.array_equal(cut[0].actions(0, cut[0].length), whole[0].actions(0, whole[0].length))


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_no_half_file(cli, data, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(small)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs to mount a small tmpfs (root)")
    try:
        assert_one_line_error(cli("record", "game=pong", "episodes=3", "frames=400", f"out={small}/rec",
                                  "progress=false"), f"{small}/rec/ep_000000", "no space left")
        assert_one_line_error(cli("train", f"data={data}", f"out={small}/run", "steps=2", "progress=false"),
                              f"{small}/run", "no space left")
        assert not [p for p in small.rglob("*") if p.name.endswith(".partial")]
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_a_video_cut_short_is_imported_with_a_warning(cli, tmp_path):
    """An mp4 whose index sits at its start (faststart) still decodes when cut in half: the import takes what is
    there and says that the file is shorter than its header, and that the log's later entries went unused."""
    import json

    import av
    import numpy as np

    n = 120
    with av.open(str(tmp_path / "full.mp4"), "w", format="mp4", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(n):
            c.mux(s.encode(av.VideoFrame.from_ndarray(rng.integers(0, 255, (64, 64, 3), np.uint8), format="rgb24")))
        c.mux(s.encode())
    data = (tmp_path / "full.mp4").read_bytes()
    (tmp_path / "half.mp4").write_bytes(data[:len(data) // 2])
    (tmp_path / "half.jsonl").write_text("".join(json.dumps({"frame": i, "keys": ["UP"] if i % 20 else []}) + "\n"
                                                 for i in range(0, n, 10)))
    r = cli("import", f"video={tmp_path}/half.mp4", f"actions={tmp_path}/half.jsonl", f"out={tmp_path}/d",
            "keys=[UP]", "progress=false")
    assert r.returncode == 0, r.stderr
    assert f"its header says about {n}" in r.stderr and "were not used" in r.stderr
