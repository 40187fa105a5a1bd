"""Designers' recordings: export an episode to mp4 + action log, import it back, resample, and reject bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("av")

from games.data.action_log import read_action_log, write_action_log  # noqa: E402
from games.data.actions import ActionSpace  # noqa: E402
from games.data.errors import InputError  # noqa: E402
from games.data.recording import Recording  # noqa: E402
from games.data.writer import RecordingWriter  # noqa: E402
from games.data.video import export_mp4, hstack, import_video, write_mp4  # noqa: E402

FPS = 30
N = 40
SPACE = ActionSpace(keys=("W", "A", "S", "D", "SPACE"), mouse=True, buttons=("LEFT",))  # not sorted on purpose


def synthetic_episode(n: int = N, size: int = 64, seed: int = 0):
    """Bold coloured squares moving over a dark background, and random actions (keys, mouse, button)."""
    rng = np.random.default_rng(seed)
    frames = np.full((n, size, size, 3), 20, np.uint8)
    for t in range(n):
        frames[t, (2 * t) % 48:(2 * t) % 48 + 16, 8:24] = (230, 40, 40)  # red square moving down
        frames[t, 40:56, (3 * t) % 48:(3 * t) % 48 + 16] = (40, 200, 60)  # green square moving right
        frames[t, 8:20, 40:52] = (40, 60, 220) if t % 10 < 5 else (240, 220, 40)  # blinking square
    actions = np.zeros((n, SPACE.size), np.float32)
    actions[:, :5] = rng.random((n, 5)) < 0.4
    actions[:, 5:7] = rng.uniform(-1, 1, (n, 2)).astype(np.float32)  # mouse dx, dy in [-1, 1] units
    actions[:, 7] = rng.random(n) < 0.3
    return frames, actions


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("rec") / "data"
    frames, actions = synthetic_episode()
    with RecordingWriter(root, "squares", SPACE, FPS, 64, 64, chunk_frames=16) as w:
        with w.begin_episode(seed=0, agent="synthetic") as ep:
            for f, a in zip(frames, actions):
                ep.append(f, a)
    return root, frames, actions


@pytest.fixture(scope="module")
def exported(dataset, tmp_path_factory):
    root, _, _ = dataset
    out = tmp_path_factory.mktemp("video") / "episode.mp4"
    export_mp4(root, out, episode=0, scale=4)
    return out, out.with_suffix(".jsonl")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def test_export_writes_video_and_log(exported):
    video, log = exported
    assert video.stat().st_size > 1000
    assert not list(video.parent.glob("*.partial*"))
    parsed = read_action_log(log)
    assert parsed.action_space == SPACE  # the header line keeps key order, mouse scale and unpressed keys
    assert len(parsed.entries) == N


def test_round_trip_same_rate(dataset, exported, tmp_path):
    _, frames, actions = dataset
    video, log = exported
    summary = import_video(video, log, tmp_path / "imported", progress=False)
    rec = Recording(tmp_path / "imported")
    assert (rec.fps, rec.height, rec.width, rec.action_space) == (FPS, 64, 64, SPACE)
    ep = rec.episodes[0]
    assert summary.frames == ep.length == N and summary.source_frames == N and summary.before_log == 0
    np.testing.assert_array_equal(ep.actions(0, N), actions)  # identical, mouse included
    got = ep.frames(0, N)
    per_frame = [psnr(g, f) for g, f in zip(got, frames)]
    print(f"round-trip PSNR: mean {np.mean(per_frame):.1f} dB, min {np.min(per_frame):.1f} dB")
    assert np.mean(per_frame) > 30 and np.min(per_frame) > 25


def test_half_rate_resampling(dataset, exported, tmp_path):
    _, frames, actions = dataset
    video, log = exported
    summary = import_video(video, log, tmp_path / "half", fps=FPS / 2, progress=False)
    ep = Recording(tmp_path / "half").episodes[0]
    assert ep.length == summary.frames == N // 2 and summary.source_frames == N
    got = ep.actions(0, ep.length)
    # Tick k is source frame 2k: its keys and button; mouse motion of frames 2k and 2k+1 summed (then clipped).
    np.testing.assert_array_equal(got[:, :5], actions[::2, :5])
    np.testing.assert_array_equal(got[:, 7], actions[::2, 7])
    summed = np.clip(actions[0::2, 5:7] + actions[1::2, 5:7], -1, 1)
    np.testing.assert_allclose(got[:, 5:7], summed, atol=1e-6)
    assert np.mean([psnr(g, f) for g, f in zip(ep.frames(0, ep.length), frames[::2])]) > 30


def test_import_appends_episode_and_rejects_other_controls(dataset, exported, tmp_path):
    video, log = exported
    out = tmp_path / "data"
    import_video(video, log, out, progress=False)
    import_video(video, log, out, progress=False)  # settings come from the existing dataset
    assert [e.length for e in Recording(out).episodes] == [N, N]
    other = ActionSpace(keys=("UP", "DOWN"))
    with pytest.raises(InputError, match="action space"):
        import_video(video, log, out, action_space=other, progress=False)
    assert len(Recording(out).episodes) == 2


def test_time_clock_log_and_inferred_controls(exported, tmp_path):
    video, _ = exported
    log = tmp_path / "t.jsonl"
    # W held from 0.5 s, released at 1.0 s; 5 px right at 0.2 s; Q never seen before 1.0 s.
    lines = [{"t": 0.5, "keys": ["W"]}, {"t": 0.2 + 0.5, "mouse": [5, 0]}, {"t": 1.0, "keys": ["Q"]}]
    log.write_text("\n".join(json.dumps(x) for x in lines))
    summary = import_video(video, log, tmp_path / "d", progress=False)
    rec = Recording(tmp_path / "d")
    assert rec.action_space == ActionSpace(keys=("Q", "W"), mouse=True)
    acts = rec.episodes[0].actions(0, N)
    assert summary.before_log == 15  # ticks before the first entry are no-ops
    assert not acts[:15].any()
    assert (acts[15:30, 1] == 1).all() and (acts[15:30, 0] == 0).all()
    assert (acts[30:, 0] == 1).all() and (acts[30:, 1] == 0).all()
    assert acts[21, 2] == pytest.approx(5 / 20) and np.count_nonzero(acts[:, 2]) == 1


BAD_LINES = [
    ('{"frame": 0, "keys": []}\n{"frame": 1, "keys": [\n', 2, "JSON"),
    ('{"frame": 0, "keys": []}\n{"frame": 1}\n{"keys": ["W"]}\n', 3, "frame"),
    ('{"frame": 0, "keys": "W"}\n', 1, "list"),
    ('{"frame": 0, "keys": ["W"]}\n\n{"frame": 1, "keys": ["JUMP"]}\n', 3, "unknown key"),
    ('{"frame": 5, "keys": ["W"]}\n{"frame": 4, "keys": []}\n', 2, "backwards"),
    ('{"frame": 0, "keys": []}\n{"t": 1.0, "keys": []}\n', 2, "clock"),
    ('{"frame": 0, "mouse": [1]}\n', 1, "mouse"),
]


@pytest.mark.parametrize("text,line,why", BAD_LINES)
def test_malformed_log_names_the_line(tmp_path, text, line, why):
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(InputError, match=rf"bad\.jsonl:{line}: .*{why}") as err:
        read_action_log(path, ActionSpace(keys=("W", "A")))
    assert "\n" not in str(err.value)


def test_import_reports_bad_input(exported, tmp_path):
    video, log = exported
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"frame": 0, "keys": ["W"]}\n{"frame": "x"}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:2:"):
        import_video(video, bad, tmp_path / "a", progress=False)
    with pytest.raises(InputError, match="video not found"):
        import_video(tmp_path / "missing.mp4", log, tmp_path / "b", progress=False)
    with pytest.raises(InputError, match="action log not found"):
        import_video(video, tmp_path / "missing.jsonl", tmp_path / "c", progress=False)
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("this is not a video")
    with pytest.raises(InputError, match="cannot read"):
        import_video(not_video, log, tmp_path / "d", progress=False)
    late = tmp_path / "late.jsonl"
    late.write_text('{"t": 60.0, "keys": ["W"]}\n')
    with pytest.raises(InputError, match="covers none"):
        import_video(video, late, tmp_path / "e", progress=False)
    assert not (tmp_path / "e" / "ep_000000").exists() or not Recording(tmp_path / "e").episodes


def test_write_mp4_hstack_and_log_writer(tmp_path):
    frames, actions = synthetic_episode(n=6, size=17)  # odd size: padded to even for yuv420p
    pair = hstack(frames, frames[::-1], gap=3)
    assert pair.shape == (6, 17, 37, 3) and (pair[:, :, 17:20] == 255).all()
    assert write_mp4(tmp_path / "pair.mp4", pair, fps=10, scale=1) == 6
    with pytest.raises(InputError, match="no frames"):
        write_mp4(tmp_path / "empty.mp4", [], fps=10)
    path = write_action_log(tmp_path / "a.jsonl", SPACE, actions, fps=10)
    np.testing.assert_array_equal(read_action_log(path).to_actions(6, 10, 10), actions)
