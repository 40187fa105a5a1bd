"""Recordings: round trips, reading while writing, crash safety (SIGKILL, SIGTERM, Ctrl-C), resume, damage, clips.

A tiny deterministic fake game and agent stand in for the real ones, so that these tests check the format and the
recorder alone. The crash tests run the recorder in a subprocess (``python -c``) and kill it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from games.data.actions import ActionSpace
from games.base import Game
from games.data.errors import InputError, RecordingError
from games.data.recording import Recording, RecordingWarning
from games.data.writer import RecordingWriter
from games.record import check_dataset, record_dataset

ROOT = Path(__file__).resolve().parents[1]
SIZE = 16  # frames are 16x16: the smallest a Game allows


class FakeGame(Game):
    """A dot that the keys move around a 16x16 torus; the tick count is written into pixel (0, 0)."""
    name = "fake"
    fps = 30

    def __init__(self, width: int = SIZE, height: int = SIZE, delay: float = 0.0, interrupt_at: int = -1):
        super().__init__(width, height)
        self.delay, self.interrupt_at = delay, interrupt_at  # seconds slept per step; tick that raises Ctrl-C
        self._space = ActionSpace(keys=("W", "A", "S", "D"), mouse=True)

    @property
    def action_space(self) -> ActionSpace:
        return self._space

    def reset(self, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        self.t, self.pos = 0, rng.integers(0, SIZE, 2)
        self.color = rng.integers(1, 256, 3).astype(np.uint8)
        return self.render()

    def step(self, action) -> np.ndarray:
        if self.t == self.interrupt_at:
            raise KeyboardInterrupt
        time.sleep(self.delay)
        a = self._space.validate(action)
        self.pos = (self.pos + [int(a[3]) - int(a[1]), int(a[2]) - int(a[0])] + np.round(a[4:6] * 2)) % SIZE
        self.t += 1
        return self.render()

    def render(self) -> np.ndarray:
        frame = np.zeros((self.height, self.width, 3), np.uint8)
        frame[int(self.pos[1]), int(self.pos[0])] = self.color
        frame[0, 0, 0], frame[0, 0, 1] = self.t % 256, self.t // 256
        return frame


class FakeAgent:
    """Random keys and mouse from its seed, steered by the game's state (so it must be replayed with the game)."""

    def __init__(self, game: FakeGame, seed: int):
        self.game, self.rng = game, np.random.default_rng(seed + 1000)

    def act(self) -> np.ndarray:
        keys = [k for k in "WASD" if self.rng.random() < 0.3 + 0.2 * (self.game.pos[0] % 2)]
        return self.game.action_space.encode(keys, dx=float(self.rng.normal() * 10), dy=float(self.rng.normal()))


def fake_agent(name: str, game, seed: int) -> FakeAgent:
    return FakeAgent(game, seed)


def play(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: ``n`` frames and actions of one episode, straight from the game and agent."""
    game = FakeGame()
    frame = game.reset(seed)
    agent = FakeAgent(game, seed)
    frames, actions = [], []
    for _ in range(n):
        action = game.action_space.validate(agent.act())
        frames.append(frame)
        actions.append(action)
        frame = game.step(action)
    return np.stack(frames), np.stack(actions)  # [n, H, W, 3], [n, A]


def record(out, episodes=2, frames=20, seed=3, chunk_frames=8, **kw):
    return record_dataset(out, FakeGame, "fake", episodes, frames, seed=seed, chunk_frames=chunk_frames,
                          progress=False, make_agent=kw.pop("make_agent", fake_agent), **kw)


def assert_matches_reference(out, episodes=2, frames=20, seed=3):
    rec = Recording(out)
    assert len(rec) == episodes
    for i, ep in enumerate(rec):
        ref_frames, ref_actions = play(seed + i, frames)
        assert ep.complete and ep.length == frames and ep.seed == seed + i
        np.testing.assert_array_equal(ep.frames(), ref_frames)
        np.testing.assert_array_equal(ep.actions(), ref_actions)


def write_episode(root, n, chunk_frames=8, seed=0):
    """One episode of ``n`` reference frames written with the writer directly; returns the reference."""
    ref = play(seed, n)
    game = FakeGame()
    with RecordingWriter(root, game.name, game.action_space, game.fps, SIZE, SIZE, chunk_frames) as w:
        with w.begin_episode(seed=seed, agent="fake", source={"test": True}) as ep:
            for f, a in zip(*ref):
                ep.append(f, a)
            assert ep.frames_written == n
    return ref


# ---------------------------------------------------------------------------------------------------------------
# Round trip and live reading


def test_round_trip_across_chunk_boundaries(tmp_path):
    ref0, ref1 = write_episode(tmp_path, 21, seed=0), write_episode(tmp_path, 8, seed=1)
    ep_dir = tmp_path / "ep_000000"
    assert sorted(os.listdir(ep_dir)) == ["00000000.safetensors", "00000008.safetensors", "00000016.safetensors"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["action_space"] == FakeGame().action_space.to_dict() and manifest["height"] == SIZE
    assert [(e["frames"], e["complete"], e["seed"]) for e in manifest["episodes"]] == [(21, True, 0), (8, True, 1)]
    rec = Recording(tmp_path)
    assert rec.total_frames == 29 and rec[0].source == {"test": True}
    for ep, (frames, actions) in zip(rec, [ref0, ref1]):
        np.testing.assert_array_equal(ep.frames(), frames)
        np.testing.assert_array_equal(ep.actions(), actions)
        assert ep.actions().dtype == np.float32 and ep.frames().dtype == np.uint8
    for start, stop in [(5, 19), (7, 8), (8, 16), (0, 21), (20, 21), (3, 3)]:
        np.testing.assert_array_equal(rec[0].frames(start, stop), ref0[0][start:stop])
        np.testing.assert_array_equal(rec[0].actions(start, stop), ref0[1][start:stop])
    with pytest.raises(IndexError):
        rec[0].frames(10, 22)
    report = check_dataset(tmp_path)
    assert report.lines()[0] == "2 episodes, 29 frames, 29 actions" and not report.damaged


def test_reader_sees_complete_chunks_while_writer_is_open(tmp_path):
    frames, actions = play(0, 20)
    game = FakeGame()
    with RecordingWriter(tmp_path, game.name, game.action_space, game.fps, SIZE, SIZE, chunk_frames=8) as w:
        ep = w.begin_episode(seed=0, agent="fake")
        for t in range(20):
            ep.append(frames[t], actions[t])
        rec = Recording(tmp_path)  # two chunks on disk, four frames still buffered
        assert rec[0].length == 16 and not rec[0].complete
        np.testing.assert_array_equal(rec[0].frames(), frames[:16])
        report = check_dataset(tmp_path)
        assert report.damaged and report.incomplete and report.lines()[0] == "1 episodes, 16 frames, 16 actions"
        with pytest.raises(RecordingError, match="another process"):
            RecordingWriter(tmp_path, game.name, game.action_space, game.fps, SIZE, SIZE)
        ep.close()
        rec.refresh()
        assert rec[0].length == 20 and rec[0].complete
        np.testing.assert_array_equal(rec[0].actions(), actions)
    assert not check_dataset(tmp_path).damaged


# ---------------------------------------------------------------------------------------------------------------
# Crashes and resume

RECORDER = """
import os, sys, time
from tests.test_recording import FakeGame, fake_agent
from games.record import record_dataset
out, mode = sys.argv[1], sys.argv[2]
if mode == "hang-in-4th-chunk":  # freeze just before the 4th chunk's rename, its .partial file complete on disk
    real_replace, count = os.replace, [0]
    def replace(src, dst):
        if str(src).endswith(".safetensors.partial"):
            count[0] += 1
            if count[0] == 4:
                open(out + ".hung", "w").close()
                time.sleep(600)
        return real_replace(src, dst)
    os.replace = replace
record_dataset(out, lambda: FakeGame(delay=0.004 if mode == "slow" else 0.0), "fake", 2, 40, seed=3,
               chunk_frames=8, progress=False, make_agent=fake_agent)
"""


def start_recorder(out: Path, mode: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", RECORDER, str(out), mode], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(cond, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"recorder exited early ({proc.returncode}): {proc.communicate()[1]}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            pytest.fail("recorder made no progress")
        time.sleep(0.01)


def test_sigkill_mid_chunk_leaves_earlier_chunks_and_resume_completes_exactly(tmp_path):
    out = tmp_path / "data"
    proc = start_recorder(out, "hang-in-4th-chunk")
    wait_for(lambda: Path(str(out) + ".hung").exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    assert (out / "ep_000000" / ".00000024.safetensors.partial").exists()  # killed between write and rename

    rec = Recording(out)  # every chunk before the kill is readable
    ref_frames, ref_actions = play(3, 40)
    assert len(rec) == 1 and rec[0].length == 24 and not rec[0].complete
    np.testing.assert_array_equal(rec[0].frames(), ref_frames[:24])
    np.testing.assert_array_equal(rec[0].actions(), ref_actions[:24])
    report = check_dataset(out)
    assert report.damaged and report.lines()[0] == "1 episodes, 24 frames, 24 actions"
    assert report.partial_files == ["ep_000000/.00000024.safetensors.partial"]
    assert any("ep_000000" in line for line in report.incomplete)

    summary = record(out, episodes=2, frames=40)  # the same arguments: resume
    assert (summary.resumed, summary.recorded, summary.frames_written) == (1, 1, 16 + 40)
    assert_matches_reference(out, episodes=2, frames=40)
    assert not check_dataset(out).damaged
    assert record(out, episodes=2, frames=40).skipped == 2  # a third run finds nothing to do


def test_sigterm_flushes_buffered_frames_and_resume_completes_exactly(tmp_path):
    out = tmp_path / "data"
    proc = start_recorder(out, "slow")
    wait_for(lambda: (out / "ep_000000" / "00000008.safetensors").exists(), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 143, err  # SystemExit(128 + SIGTERM) after flushing, not death by signal
    rec = Recording(out)
    n = rec[0].length
    assert n >= 16 and n == json.loads((out / "manifest.json").read_text())["episodes"][0]["frames"]
    assert not list((out / "ep_000000").glob(".*.partial"))
    record(out, episodes=2, frames=40)
    assert_matches_reference(out, episodes=2, frames=40)


def test_ctrl_c_keeps_frames_and_resume_checks_the_agent(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        record_dataset(tmp_path, lambda: FakeGame(interrupt_at=13), "fake", 2, 20, seed=3, chunk_frames=8,
                       progress=False, make_agent=fake_agent)
    rec = Recording(tmp_path)
    assert rec[0].length == 14 and not rec[0].complete  # frames 0..13 shown, the step to 14 was interrupted
    assert sorted(os.listdir(tmp_path / "ep_000000")) == ["00000000.safetensors", "00000008.safetensors"]
    with pytest.raises(RecordingError, match="cannot be resumed with these settings"):
        record(tmp_path, make_agent=lambda name, game, seed: FakeAgent(game, seed + 99))
    with pytest.raises(RecordingError, match="cannot be resumed with these settings"):
        record(tmp_path, seed=4)
    (tmp_path / "ep_000000" / ".00000016.safetensors.partial").write_bytes(b"half a chunk")
    record(tmp_path)
    assert_matches_reference(tmp_path)
    assert not check_dataset(tmp_path).damaged  # the leftover partial file is gone


# ---------------------------------------------------------------------------------------------------------------
# Damage


# Each damages chunk 16 of a 40-frame episode (chunks 0, 8, ..., 32) and returns the file that must be named.


def _truncate(path: Path) -> str:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    return path.name


def _garbage_header(path: Path) -> str:
    data = bytearray(path.read_bytes())
    data[:32] = os.urandom(32)
    path.write_bytes(bytes(data))
    return path.name


def _wrong_resolution(path: Path) -> str:
    from safetensors.numpy import save
    meta = {"episode": "0", "start": "16", "count": "8"}
    path.write_bytes(save({"frames": np.zeros((8, 32, 32, 3), np.uint8), "actions": np.zeros((8, 6), np.float32)},
                          metadata=meta))
    return path.name


def _wrong_action_size(path: Path) -> str:
    from safetensors.numpy import save
    meta = {"episode": "0", "start": "16", "count": "8"}
    path.write_bytes(save({"frames": np.zeros((8, SIZE, SIZE, 3), np.uint8),
                           "actions": np.zeros((8, 4), np.float32)}, metadata=meta))
    return path.name


def _gap(path: Path) -> str:
    path.unlink()
    return "00000024.safetensors"  # intact, but frames 16..23 are missing before it


@pytest.mark.parametrize("damage", [_truncate, _garbage_header, _wrong_resolution, _wrong_action_size, _gap])
def test_damaged_chunk_is_reported_and_skipped(tmp_path, damage):
    from worldmodel.train.data import ClipDataset
    frames, actions = write_episode(tmp_path, 40)
    name = damage(tmp_path / "ep_000000" / "00000016.safetensors")
    report = check_dataset(tmp_path)
    assert report.damaged and report.lines()[0] == "1 episodes, 16 frames, 16 actions"
    assert name in report.damaged_chunks[0] and any("manifest says 40" in m for m in report.mismatches)
    with pytest.warns(RecordingWarning, match=name):
        ds = ClipDataset(tmp_path, clip_len=8)
    assert ds.episodes[0].length == 16 and len(ds) == 9  # truncated at the damaged chunk
    np.testing.assert_array_equal(ds[8][0], frames[8:16])


def test_flipped_data_bytes_fail_the_checksum(tmp_path):
    write_episode(tmp_path, 16)
    path = tmp_path / "ep_000000" / "00000008.safetensors"
    data = bytearray(path.read_bytes())
    data[-50] ^= 0xFF  # inside the frames or actions, header intact
    path.write_bytes(bytes(data))
    report = check_dataset(tmp_path)
    assert report.damaged and "checksum" in report.damaged_chunks[0]
    assert not check_dataset(tmp_path, verify_data=False).damaged_chunks  # the header alone cannot tell


def test_foreign_files_are_named_but_not_damage(tmp_path):
    write_episode(tmp_path, 8)
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "ep_000000" / "frame.png").write_bytes(b"")
    report = check_dataset(tmp_path)
    assert not report.damaged and report.foreign == ["notes.txt", "ep_000000/frame.png"]
    assert report.lines()[-1] == "OK"


def test_bad_folders_and_settings_are_one_line_errors(tmp_path):
    game = FakeGame()
    settings = dict(game="fake", action_space=game.action_space, fps=30, height=SIZE, width=SIZE)
    with pytest.raises(RecordingError, match="manifest.json missing") as err:
        Recording(tmp_path)
    assert isinstance(err.value, InputError) and "\n" not in str(err.value)
    with pytest.raises(RecordingError, match="manifest.json missing"):
        check_dataset(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(RecordingError, match="unreadable"):
        Recording(tmp_path)
    with pytest.raises(RecordingError, match="unreadable"):
        RecordingWriter(tmp_path, **settings)
    (tmp_path / "manifest.json").rename(tmp_path / "old.json")
    with pytest.raises(RecordingError, match="not empty"):
        RecordingWriter(tmp_path, **settings)
    data = tmp_path / "data"
    write_episode(data, 8)
    with pytest.raises(RecordingError, match="resolution"):
        RecordingWriter(data, **{**settings, "height": 32})
    with pytest.raises(RecordingError, match="action space"):
        RecordingWriter(data, **{**settings, "action_space": ActionSpace(keys=("W",))})
    with RecordingWriter(data, **settings) as w, w.begin_episode() as ep:
        with pytest.raises(RecordingError, match="does not fit"):
            ep.append(np.zeros((32, 32, 3), np.uint8), game.action_space.noop())
        with pytest.raises(InputError):
            ep.append(np.zeros((SIZE, SIZE, 3), np.uint8), np.zeros(3))


# ---------------------------------------------------------------------------------------------------------------
# Training clips


def test_clip_dataset_indexes_every_clip_inside_episodes(tmp_path):
    import torch.utils.data
    from worldmodel.train.data import ClipDataset, split_recording
    refs = [write_episode(tmp_path, n, seed=i) for i, n in enumerate([21, 13, 5, 9])]
    ds = ClipDataset(tmp_path, clip_len=8)
    assert len(ds) == 14 + 6 + 0 + 2  # episode 2 is shorter than a clip
    seen = []
    for i in range(len(ds)):
        frames, actions = ds[i]
        assert frames.shape == (8, SIZE, SIZE, 3) and actions.shape == (8, 6) and actions.dtype == np.float32
        e, start = ds.locate(i)
        ref = refs[ds.episodes[e].index]
        np.testing.assert_array_equal(frames, ref[0][start:start + 8])  # crosses chunk boundaries, never episodes
        np.testing.assert_array_equal(actions, ref[1][start:start + 8])
        seen.append((ds.episodes[e].index, start))
    assert len(set(seen)) == len(ds)
    frames, actions = ds.sample_batch(np.random.default_rng(0), 5)
    assert frames.shape == (5, 8, SIZE, SIZE, 3) and actions.shape == (5, 8, 6)

    train, val = split_recording(ds.recording, 0.25, seed=0)  # 4 x 0.25 = one whole episode held out
    assert len(val) == 1 and sorted(s.index for s in train + val) == [0, 1, 2, 3]
    assert all(s.start == 0 and s.length == ds.recording[s.index].length for s in train + val)
    assert split_recording(ds.recording, 0.25, 0) == (train, val)
    held_out = ClipDataset(tmp_path, clip_len=4, episodes=[1])
    assert len(held_out) == 10 and [e.index for e in held_out.episodes] == [1]
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True, num_workers=1)  # a forked worker
    batch_frames, batch_actions = next(iter(loader))
    assert batch_frames.shape == (4, 8, SIZE, SIZE, 3) and batch_actions.dtype == torch.float32


def test_one_long_episode_is_held_out_by_time_in_whole_stretches_with_a_gap(tmp_path):
    from worldmodel.train.data import SPLIT_GAP, ClipDataset, Stretch, split_recording
    ref = write_episode(tmp_path, 13000, chunk_frames=512)
    rec = Recording(tmp_path)
    train, val = split_recording(rec, 0.1, seed=0)
    assert split_recording(rec, 0.1, seed=0) == (train, val) and split_recording(rec, 0.1, seed=1) != (train, val)
    assert len(val) == 2 and [s.length for s in val] == [650, 650]  # 1,300 frames in stretches of ~600
    assert val[0].name == f"ep_000000[{val[0].start}:{val[0].stop}]"
    owner = np.zeros(13000, int)  # 1 train, 2 held out, 0 neither
    for s in train:
        owner[s.start:s.stop] += 1
    for s in val:
        owner[s.start:s.stop] += 2
    assert set(np.unique(owner)) == {0, 1, 2}  # no frame on both sides
    assert (owner == 0).sum() == 4 * SPLIT_GAP  # a gap on both sides of each held-out stretch, nothing else lost
    for s in val:
        assert (owner[s.start - SPLIT_GAP:s.start] == 0).all() and (owner[s.stop:s.stop + SPLIT_GAP] == 0).all()
    assert val[0].stop < 6500 <= val[1].start  # one stretch in each half of the episode, not all at the end
    # a stretch reads like an episode, counting from its own start
    np.testing.assert_array_equal(val[1].frames(3, 7), ref[0][val[1].start + 3:val[1].start + 7])
    np.testing.assert_array_equal(val[1].actions(), ref[1][val[1].start:val[1].stop])
    with pytest.raises(IndexError):
        val[1].frames(0, 651)
    # training clips come only from the training stretches
    clips = ClipDataset(rec, 16, episodes=train)
    for i in range(0, len(clips), 97):
        e, start = clips.locate(i)
        first = clips.episodes[e].start + start
        assert (owner[first:first + 16] == 1).all()
    assert Stretch(rec[0]).name == "ep_000000"
    # the rule of older checkpoints: whole episodes only, so one episode cannot be split
    with pytest.raises(RecordingError, match="at least 2"):
        split_recording(rec, 0.1, gap=None)
    assert split_recording(rec, 0.0) == ([Stretch(rec[0])], [])


def test_few_episodes_are_each_cut_by_time_many_are_held_out_whole(tmp_path):
    from worldmodel.train.data import split_recording
    for i in range(3):
        write_episode(tmp_path, 400, seed=i, chunk_frames=64)
    rec = Recording(tmp_path)
    train, val = split_recording(rec, 0.1)  # 3 x 0.1 < 1 episode: a stretch inside each, of at least 128 frames
    assert [s.index for s in val] == [0, 1, 2] and all(s.length == 128 for s in val)
    gaps = sum(min(64, s.start) + min(64, 400 - s.stop) for s in val)  # a gap never reaches past the episode
    assert sum(s.length for s in train) == 3 * (400 - 128) - gaps
    whole = split_recording(rec, 0.34)[1]  # 3 x 0.34 >= 1: one whole episode
    assert len(whole) == 1 and whole[0].length == 400
    write_episode(tmp_path / "short", 64)
    write_episode(tmp_path / "short", 64, seed=1)
    assert [s.length for s in split_recording(Recording(tmp_path / "short"), 0.1)[1]] == [64]  # too short to cut
    write_episode(tmp_path / "tiny", 383)
    with pytest.raises(RecordingError, match="384 frames"):
        split_recording(Recording(tmp_path / "tiny"), 0.1)
