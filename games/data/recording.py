"""Reading gameplay recordings: the one format that games write and the world model reads.

``Recording`` opens a dataset folder and ``Episode`` slices one episode's frames and actions across its chunks,
memory-mapped. The folder's layout and its crash-safety rules are in ``games.data.layout``; ``games.data.writer``
writes datasets (``RecordingWriter``, ``EpisodeWriter``); ``games.record`` records them with scripted agents and
audits them (``check_dataset``).
"""
from __future__ import annotations

import bisect
import os
import warnings
from pathlib import Path

import numpy as np
from safetensors import safe_open

from games.data.actions import ActionSpace
from games.data.layout import Chunk, episode_dir_name, read_manifest, scan_episode


class RecordingWarning(UserWarning):
    """A damaged chunk was skipped while reading a recording."""


class Episode:
    """One recorded episode: the readable prefix of its chunks, sliced across chunk boundaries, memory-mapped."""

    def __init__(self, index: int, info: dict, chunks: list[Chunk], height: int, width: int, action_size: int):
        self.index = index
        self.name = episode_dir_name(index)
        self.seed = info.get("seed")
        self.agent = info.get("agent")
        self.source = info.get("source") or {}
        self.complete = bool(info.get("complete"))  # closed by its writer (the manifest's flag)
        self.manifest_frames = int(info["frames"])  # may lag the disk by one chunk after a crash
        self.chunks = chunks
        self.length = sum(c.count for c in chunks)  # readable frames
        self._starts = [c.start for c in chunks]
        self._empty = {"frames": np.zeros((0, height, width, 3), np.uint8),
                       "actions": np.zeros((0, action_size), np.float32)}
        self._handles: dict[int, object] = {}  # chunk index -> open safe_open handle, opened lazily
        self._pid = os.getpid()

    def __repr__(self):
        state = "complete" if self.complete else "incomplete"
        return f"Episode({self.name}, {self.length} frames, seed={self.seed}, {state})"

    def __getstate__(self):  # handles are per process: never pickle them (DataLoader workers re-open)
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def _handle(self, i: int):
        if self._pid != os.getpid():  # forked: the parent's mmaps are not ours to share
            self._handles, self._pid = {}, os.getpid()
        h = self._handles.get(i)
        if h is None:
            h = self._handles[i] = safe_open(str(self.chunks[i].path), framework="np")
        return h

    def _read(self, key: str, start: int, stop: int | None) -> np.ndarray:
        stop = self.length if stop is None else stop
        if not 0 <= start <= stop <= self.length:
            raise IndexError(f"{self.name}: frames [{start}, {stop}) outside [0, {self.length})")
        parts = []
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)  # the chunk holding frame `start`
        pos = start
        while pos < stop:
            c = self.chunks[i]
            end = min(stop, c.start + c.count)
            parts.append(self._handle(i).get_slice(key)[pos - c.start:end - c.start])
            pos, i = end, i + 1
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts) if parts else self._empty[key].copy()

    def frames(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames ``[start, stop)``: uint8 [T, H, W, 3]."""
        return self._read("frames", start, stop)

    def actions(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Actions ``[start, stop)``, action ``t`` held while frame ``t`` was shown: float32 [T, A]."""
        return self._read("actions", start, stop)


class Recording:
    """A dataset folder opened for reading. Sees every complete chunk, also while a writer is still appending
    (call ``refresh`` to pick up new ones) and after a crash. Damaged chunks are skipped with a RecordingWarning
    and truncate their episode."""

    def __init__(self, root):
        self.root = Path(root)
        self.refresh()

    def refresh(self) -> None:
        m = read_manifest(self.root)
        self.manifest = m
        self.game: str = m["game"]
        self.action_space = ActionSpace.from_dict(m["action_space"])
        self.fps: float = m["fps"]
        self.height: int = int(m["height"])
        self.width: int = int(m["width"])
        self.episodes: list[Episode] = []
        for i, info in enumerate(m["episodes"]):
            chunks, problems = scan_episode(self.root / episode_dir_name(i), i, self.height, self.width,
                                            self.action_space.size)
            if problems:
                path, reason = problems[0]
                later = f"; {len(problems) - 1} later chunk(s) ignored" if len(problems) > 1 else ""
                at = sum(c.count for c in chunks)
                warnings.warn(f"skipping damaged chunk {path}: {reason}; episode truncated at frame {at}{later}",
                              RecordingWarning, stacklevel=3)
            self.episodes.append(Episode(i, info, chunks, self.height, self.width, self.action_space.size))

    def __len__(self) -> int:
        return len(self.episodes)

    def __getitem__(self, i: int) -> Episode:
        return self.episodes[i]

    def __iter__(self):
        return iter(self.episodes)

    @property
    def total_frames(self) -> int:
        return sum(e.length for e in self.episodes)

    def __repr__(self):
        return (f"Recording({self.root}, game={self.game}, {len(self)} episodes, {self.total_frames} frames, "
                f"{self.width}x{self.height} @ {self.fps} fps)")
