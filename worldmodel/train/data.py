"""Training clips from gameplay recordings.

``ClipDataset`` indexes every clip of ``clip_len`` consecutive frames inside one episode of a ``games.data.recording``
dataset (clips never cross episodes; they may cross chunk files) and reads them memory-mapped: a random clip is two
``safe_open`` slices, tens of microseconds (``python -m worldmodel.train.data DIR`` measures it). It is a
``torch.utils.data.Dataset`` for a DataLoader and a sampler of its own (``sample``, ``sample_batch``) for training
loops that want no worker processes. ``split_episodes`` holds whole episodes out for validation, so that no
validation frame was seen in training; ``held_out_split`` recomputes a checkpoint's teacher's split for everyone
downstream. ``causing_actions`` pairs each frame with the action that produced it (the model's convention).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch.utils.data

from games.data.errors import RecordingError
from games.data.recording import Recording


class ClipDataset(torch.utils.data.Dataset):
    """All clips of ``clip_len`` frames of the chosen ``episodes`` (indices; default all) of the recording at
    ``root`` (a folder or an open Recording). Item ``i`` is ``(frames uint8 [L, H, W, 3], actions float32 [L, A])``
    where action ``t`` was held while frame ``t`` was shown (so frame ``t + 1`` follows from frame ``t`` and
    action ``t``). Chunk files are opened lazily per process and re-opened after a fork (DataLoader workers)."""

    def __init__(self, root, clip_len: int, episodes=None):
        self.recording = root if isinstance(root, Recording) else Recording(root)
        if clip_len < 1:
            raise RecordingError(f"clip_len must be >= 1, got {clip_len}")
        self.clip_len = int(clip_len)
        ids = range(len(self.recording)) if episodes is None else [int(i) for i in episodes]
        for i in ids:
            if not 0 <= i < len(self.recording):
                raise RecordingError(f"{self.recording.root} has no episode {i} ({len(self.recording)} episodes)")
        # Episodes shorter than a clip contribute nothing; incomplete episodes contribute their complete chunks.
        self.episodes = [self.recording[i] for i in ids if self.recording[i].length >= clip_len]
        counts = np.array([e.length - clip_len + 1 for e in self.episodes], np.int64)  # clips per episode
        self._ends = np.cumsum(counts)  # clip i lives in the first episode whose end exceeds i
        if len(self) == 0:
            raise RecordingError(f"{self.recording.root}: no chosen episode has {clip_len} frames "
                                 f"(lengths {[self.recording[i].length for i in ids]})")

    @property
    def action_space(self):
        return self.recording.action_space

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def locate(self, i: int) -> tuple[int, int]:
        """(position in ``self.episodes``, first frame) of clip ``i``."""
        if not 0 <= i < len(self):
            raise IndexError(f"clip {i} out of range [0, {len(self)})")
        e = int(np.searchsorted(self._ends, i, side="right"))
        return e, i - (int(self._ends[e - 1]) if e else 0)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        e, start = self.locate(int(i))
        ep, stop = self.episodes[e], start + self.clip_len
        return ep.frames(start, stop), ep.actions(start, stop)  # [L, H, W, 3] uint8, [L, A] float32

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One clip drawn uniformly from all clips."""
        return self[self.draw(rng, 1)[0]]

    def draw(self, rng: np.random.Generator, batch: int) -> list[int]:
        """The indices of ``batch`` clips drawn uniformly (one draw each, in order)."""
        return [int(rng.integers(len(self))) for _ in range(batch)]

    def sample_batch(self, rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """``batch`` uniform clips stacked: frames uint8 [B, L, H, W, 3], actions float32 [B, L, A]."""
        return self.stack(self.draw(rng, batch))

    def stack(self, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Clips ``ids`` stacked: frames uint8 [B, L, H, W, 3], actions float32 [B, L, A]."""
        clips = [self[i] for i in ids]
        return np.stack([c[0] for c in clips]), np.stack([c[1] for c in clips])

    def earlier_frame(self, i: int, rng: np.random.Generator) -> np.ndarray:
        """A frame uint8 [H, W, 3] of clip ``i``'s episode drawn uniformly from its first frame up to the clip's
        start (the stale attention sink of a long session)."""
        e, start = self.locate(i)
        p = int(rng.integers(start + 1))
        return self.episodes[e].frames(p, p + 1)[0]


def split_episodes(recording: Recording, val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train, val) episode indices: a seeded random ``val_fraction`` of the non-empty episodes (at least one if
    the fraction is positive) is held out whole. Both lists are sorted."""
    if not 0.0 <= val_fraction < 1.0:
        raise RecordingError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ids = [e.index for e in recording if e.length > 0]
    if val_fraction == 0.0:
        return ids, []
    if len(ids) < 2:
        raise RecordingError(f"{recording.root} has {len(ids)} non-empty episode(s): holding episodes out for "
                             f"validation needs at least 2 (record more episodes or set val_fraction=0)")
    n_val = min(len(ids) - 1, max(1, round(len(ids) * val_fraction)))
    perm = np.random.default_rng(seed).permutation(len(ids))
    val = sorted(ids[j] for j in perm[:n_val])
    return sorted(set(ids) - set(val)), val


def held_out_split(recording: Recording, metadata: dict) -> tuple[list[int], list[int]]:
    """(train, held-out) episode indices of the teacher a checkpoint comes from: ``split_episodes`` with the
    fraction and seed of its training run, so that the student, evaluation and sampling never score it on
    episodes it trained on (a student's metadata carries its teacher's)."""
    from worldmodel.metadata import ModelInfo

    split = ModelInfo.from_metadata(metadata).split
    return split_episodes(recording, split.val_fraction, seed=split.seed)


def held_out_episodes(recording: Recording, metadata: dict) -> list:
    """The episodes the checkpoint's teacher held out, or every non-empty one if it held none out (or the
    recording has too few episodes to hold any out: a model is then scored on what it may have seen)."""
    try:
        _, held = held_out_split(recording, metadata)
    except RecordingError:
        held = []
    return [recording[i] for i in (held or [e.index for e in recording if e.length > 0])]


def causing_actions(actions: np.ndarray) -> np.ndarray:
    """Recorded actions [..., T, A] -> [..., T, A] whose row t is the action that produced frame t (zeros for
    frame 0, which no recorded action produced).

    Recordings store with frame t the action held while it was shown, which produces frame t + 1; the model
    conditions frame t on the action before it. The one place this shift is made."""
    actions = np.asarray(actions)
    return np.concatenate([np.zeros_like(actions[..., :1, :]), actions[..., :-1, :]], axis=-2)


def with_causing_actions(frames: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A recorded clip of L + 1 frames [..., L + 1, H, W, 3] with its actions [..., L + 1, A] -> its last L frames,
    each with the action that produced it (the first frame's cause lies before the clip)."""
    return frames[..., 1:, :, :, :], causing_actions(actions)[..., 1:, :]


def measure_clip_read(dataset: ClipDataset, n: int = 5000, seed: int = 0) -> float:
    """Median seconds to read one random clip (frames and actions), after a warm-up that opens the chunk files."""
    rng = np.random.default_rng(seed)
    for _ in range(min(n, 200)):  # warm-up: open the chunk handles, fault in the pages
        dataset.sample(rng)
    times = np.empty(n)
    for k in range(n):
        t = time.perf_counter()
        dataset.sample(rng)
        times[k] = time.perf_counter() - t
    return float(np.median(times))


def _write_synthetic(root: Path, frames: int, size: int, chunk_frames: int) -> None:
    """A dataset of random frames and actions, for measuring read speed without a game."""
    from games.data.actions import ActionSpace
    from games.data.writer import RecordingWriter
    rng = np.random.default_rng(0)
    space = ActionSpace(keys=("W", "A", "S", "D"), mouse=True)
    with RecordingWriter(root, "synthetic", space, 30, size, size, chunk_frames) as w:
        with w.begin_episode(seed=0, agent="random") as ep:
            for _ in range(frames):
                ep.append(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), rng.uniform(-1, 1, space.size))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Measure random clip reads from a recording.")
    p.add_argument("data", help="dataset folder (created with random frames if missing and --synthetic is given)")
    p.add_argument("--clip-len", type=int, default=16)
    p.add_argument("--n", type=int, default=5000, help="clips to read")
    p.add_argument("--synthetic", type=int, default=0, help="frames of random 64x64 data to write first")
    args = p.parse_args(argv)
    if args.synthetic and not Path(args.data, "manifest.json").exists():
        _write_synthetic(Path(args.data), args.synthetic, 64, 256)
    ds = ClipDataset(args.data, args.clip_len)
    t = measure_clip_read(ds, args.n)
    print(f"{ds.recording}: {len(ds)} clips of {args.clip_len} frames; "
          f"median random clip read {t * 1e6:.1f} us over {args.n} clips")


if __name__ == "__main__":
    main()
