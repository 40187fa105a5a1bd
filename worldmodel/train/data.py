"""Training clips from gameplay recordings.

``ClipDataset`` indexes every clip of ``clip_len`` consecutive frames inside one episode of a ``games.data.recording``
dataset (clips never cross episodes; they may cross chunk files) and reads them memory-mapped: a random clip is two
``safe_open`` slices, tens of microseconds (``python -m worldmodel.train.data DIR`` measures it). It is a
``torch.utils.data.Dataset`` for a DataLoader and a sampler of its own (``sample``, ``sample_batch``) for training
loops that want no worker processes; it takes whole episodes or ``Stretch``es of them. ``split_recording`` holds
data out for validation, whole episodes when there are enough and stretches cut by time inside the episodes when
there are not (one long recording), so that no validation frame was seen in training; ``held_out_split``
recomputes a checkpoint's teacher's split for everyone downstream. ``causing_actions`` pairs each frame with the action that produced it (the model's convention).
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
    """All clips of ``clip_len`` frames of the chosen ``episodes`` (indices or ``Stretch``es; default every whole
    episode) of the recording at ``root`` (a folder or an open Recording). Item ``i`` is ``(frames uint8
    [L, H, W, 3], actions float32 [L, A])`` where action ``t`` was held while frame ``t`` was shown (so frame
    ``t + 1`` follows from frame ``t`` and action ``t``). Chunk files are opened lazily per process and re-opened after a fork (DataLoader workers)."""

    def __init__(self, root, clip_len: int, episodes=None):
        self.recording = root if isinstance(root, Recording) else Recording(root)
        if clip_len < 1:
            raise RecordingError(f"clip_len must be >= 1, got {clip_len}")
        self.clip_len = int(clip_len)
        chosen = []
        for i in (range(len(self.recording)) if episodes is None else episodes):
            if isinstance(i, Stretch):
                chosen.append(i)
                continue
            if not 0 <= int(i) < len(self.recording):
                raise RecordingError(f"{self.recording.root} has no episode {i} ({len(self.recording)} episodes)")
            chosen.append(self.recording[int(i)])
        # Stretches shorter than a clip contribute nothing; incomplete episodes contribute their complete chunks.
        self.episodes = [e for e in chosen if e.length >= clip_len]
        counts = np.array([e.length - clip_len + 1 for e in self.episodes], np.int64)  # clips per episode
        self._ends = np.cumsum(counts)  # clip i lives in the first episode whose end exceeds i
        if len(self) == 0:
            raise RecordingError(f"{self.recording.root}: no chosen episode has {clip_len} frames "
                                 f"(lengths {[e.length for e in chosen]})")

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


SPLIT_GAP = 64  # frames left out of training on each side of a held-out stretch cut inside an episode (~2 s)
STRETCH_FRAMES = 600  # about how long one held-out stretch cut inside an episode is (20 s at 30 fps)
MIN_STRETCH = 128  # the shortest: room for the eval's starts (4 frames of context and 64 of horizon) and more


class Stretch:
    """Frames ``[start, stop)`` of one episode, read like an episode: ``frames``, ``actions`` and ``length`` count
    from the stretch's own start. A whole episode is the stretch ``[0, length)``."""

    def __init__(self, episode, start: int = 0, stop: int | None = None):
        stop = episode.length if stop is None else int(stop)
        if not 0 <= start <= stop <= episode.length:
            raise RecordingError(f"{episode.name}: stretch [{start}, {stop}) outside [0, {episode.length})")
        self.episode, self.start, self.stop = episode, int(start), stop
        self.index, self.seed, self.agent = episode.index, episode.seed, episode.agent
        self.length = stop - self.start
        whole = self.start == 0 and stop == episode.length
        self.name = episode.name if whole else f"{episode.name}[{self.start}:{stop}]"

    def __repr__(self):
        return f"Stretch({self.name}, {self.length} frames)"

    def __eq__(self, other):
        return isinstance(other, Stretch) and (self.index, self.start, self.stop) == (other.index, other.start,
                                                                                       other.stop)

    def __hash__(self):
        return hash((self.index, self.start, self.stop))

    def _range(self, start: int, stop: int | None) -> tuple[int, int]:
        stop = self.length if stop is None else stop
        if not 0 <= start <= stop <= self.length:
            raise IndexError(f"{self.name}: frames [{start}, {stop}) outside [0, {self.length})")
        return self.start + start, self.start + stop

    def frames(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames ``[start, stop)`` of the stretch: uint8 [T, H, W, 3]."""
        return self.episode.frames(*self._range(start, stop))

    def actions(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Actions ``[start, stop)`` of the stretch (action ``t`` held while frame ``t`` was shown): float32 [T, A]."""
        return self.episode.actions(*self._range(start, stop))


def split_recording(recording: Recording, val_fraction: float, seed: int = 0,
                    gap: int | None = SPLIT_GAP) -> tuple[list[Stretch], list[Stretch]]:
    """(train, held-out) stretches of the non-empty episodes, about ``val_fraction`` of the frames held out.

    With enough episodes (``val_fraction`` of them is at least one), a seeded random choice of whole episodes is
    held out. With fewer (one long recording, a few episodes), every episode long enough is cut by time: a few
    stretches of about ``STRETCH_FRAMES`` frames (at least ``MIN_STRETCH``, at most a third of the episode) spread
    over it, one in each equal section at a seeded place, are held out whole, and ``gap`` frames on each side of
    every held-out stretch belong to neither side, so that the frames next to a held-out start were not trained
    on. Episodes too short to cut train whole; if none is long enough, whole episodes are held out after all.
    ``gap=None`` is the rule of older checkpoints: whole episodes only. Both lists are in recording order."""
    if not 0.0 <= val_fraction < 1.0:
        raise RecordingError(f"val_fraction must be in [0, 1), got {val_fraction}")
    episodes = [e for e in recording if e.length > 0]
    if val_fraction == 0.0:
        return [Stretch(e) for e in episodes], []
    held = {e.index: max(MIN_STRETCH, round(e.length * val_fraction)) for e in episodes}
    cut = set() if gap is None else {e.index for e in episodes if 3 * held[e.index] <= e.length}
    if gap is None or len(episodes) * val_fraction >= 1 or not cut:
        if len(episodes) < 2:
            longer = "" if gap is None else f" or an episode of {3 * MIN_STRETCH} frames"
            raise RecordingError(f"{recording.root} has {len(episodes)} non-empty episode(s): holding data out for "
                                 f"validation needs at least 2{longer} (record more or set val_fraction=0)")
        n_val = min(len(episodes) - 1, max(1, round(len(episodes) * val_fraction)))
        perm = np.random.default_rng(seed).permutation(len(episodes))
        whole = {episodes[j].index for j in perm[:n_val]}
        return ([Stretch(e) for e in episodes if e.index not in whole],
                [Stretch(e) for e in episodes if e.index in whole])
    rng = np.random.default_rng(seed)
    train, val = [], []
    for e in episodes:
        if e.index not in cut:
            train.append(Stretch(e))
            continue
        k = max(1, round(held[e.index] / STRETCH_FRAMES))
        size, section = held[e.index] // k, e.length / k
        g = min(int(gap), (e.length - held[e.index]) // (4 * k))  # gaps take at most half the training frames
        pos = 0
        for j in range(k):
            lo, hi = int(round(j * section)), int(round((j + 1) * section))
            a = lo + int(rng.integers(0, hi - lo - size + 1))
            if a - g > pos:
                train.append(Stretch(e, pos, a - g))
            val.append(Stretch(e, a, a + size))
            pos = a + size + g
        if pos < e.length:
            train.append(Stretch(e, pos, e.length))
    return train, val


def held_out_split(recording: Recording, metadata: dict) -> tuple[list[Stretch], list[Stretch]]:
    """(train, held-out) stretches of the teacher a checkpoint comes from: ``split_recording`` with the fraction,
    seed and gap of its training run, so that the student, evaluation and sampling never score it on frames it
    trained on (a student's metadata carries its teacher's)."""
    from worldmodel.metadata import ModelInfo

    split = ModelInfo.from_metadata(metadata).split
    return split_recording(recording, split.val_fraction, seed=split.seed, gap=split.gap)


def split_or_all(recording: Recording, metadata: dict) -> tuple[list[Stretch], list[Stretch]]:
    """``held_out_split``, or (every non-empty episode, nothing held out) when the recording is too small to cut:
    a model is then scored on what it may have seen."""
    try:
        return held_out_split(recording, metadata)
    except RecordingError:
        return [Stretch(e) for e in recording if e.length > 0], []


def held_out_episodes(recording: Recording, metadata: dict) -> list[Stretch]:
    """The stretches the checkpoint's teacher held out, or every non-empty episode if it held none out (or the
    recording cannot be split: ``split_or_all``)."""
    train, held = split_or_all(recording, metadata)
    return held or train


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
