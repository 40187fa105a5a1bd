"""The writer half of gameplay recordings: ``RecordingWriter`` creates or extends a dataset, ``EpisodeWriter``
appends frames in immutable chunks. The layout and its crash-safety rules are described in ``games.data.layout``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from games.data.actions import ActionSpace
from games.data.errors import RecordingError
from games.data.layout import (FORMAT, LOCK, MANIFEST, PARTIAL_RE, VERSION, atomic_write, chunk_crc, chunk_name,
                               episode_dir_name, read_manifest, scan_episode)


class RecordingWriter:
    """Creates the dataset at ``root`` or opens an existing one for appending episodes. Opening a dataset made with
    another game, action space, fps or resolution is a RecordingError naming the mismatch. One writer per dataset
    at a time (an advisory lock; it dies with its process)."""

    def __init__(self, root, game: str, action_space: ActionSpace, fps: float, height: int, width: int,
                 chunk_frames: int = 256):
        if chunk_frames < 1:
            raise RecordingError(f"chunk_frames must be >= 1, got {chunk_frames}")
        self.root = Path(root)
        self.manifest_stale = False  # True while the manifest file is behind self.manifest
        self.action_space, self.height, self.width = action_space, int(height), int(width)
        self.chunk_frames = int(chunk_frames)
        want = {"game": str(game), "action_space": action_space.to_dict(), "fps": fps,
                "height": self.height, "width": self.width}
        if self.root.exists() and not self.root.is_dir():
            raise RecordingError(f"cannot record to {self.root}: it is a file")
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = _acquire_lock(self.root)
        try:
            self.manifest = self._open_or_create(want)
        except BaseException:
            self.close()
            raise

    def _open_or_create(self, want: dict) -> dict:
        if (self.root / MANIFEST).exists():
            manifest = read_manifest(self.root)
            for key, value in want.items():
                if manifest[key] != value:
                    what = "resolution" if key in ("height", "width") else key.replace("_", " ")
                    raise RecordingError(f"{self.root} was recorded with {what} {key}={manifest[key]!r}, "
                                         f"not {value!r}: record to another folder")
            return manifest
        if [n for n in os.listdir(self.root) if n != LOCK]:
            raise RecordingError(f"cannot record to {self.root}: folder is not empty and has no {MANIFEST}")
        self.manifest = {"format": FORMAT, "version": VERSION, **want, "chunk_frames": self.chunk_frames,
                         "episodes": []}
        self._write_manifest()  # an empty dataset is a valid dataset from the start
        return self.manifest

    @property
    def episodes(self) -> list[dict]:
        """The manifest's episode entries (copies): name, frames, seed, agent, complete, source."""
        return [dict(e) for e in self.manifest["episodes"]]

    def begin_episode(self, seed: int | None = None, agent: str | None = None,
                      source: dict | None = None) -> "EpisodeWriter":
        """Start the next episode; ``source`` is free-form JSON provenance (game parameters, video file, ...)."""
        index = len(self.manifest["episodes"])
        ep_dir = self.root / episode_dir_name(index)
        if ep_dir.exists() and os.listdir(ep_dir):
            raise RecordingError(f"{ep_dir} exists and is not in {self.root / MANIFEST}: move it away first")
        # The manifest entry comes first: a chunk on disk always has an entry (seed, agent) that explains it.
        seed = None if seed is None else int(seed)
        self.manifest["episodes"].append({"name": ep_dir.name, "frames": 0, "seed": seed, "agent": agent,
                                          "complete": False, "source": source or {}})
        self._write_manifest()
        ep_dir.mkdir(exist_ok=True)
        return EpisodeWriter(self, index, 0)

    def resume_episode(self, index: int) -> "EpisodeWriter":
        """Reopen an incomplete episode to append after its last complete chunk. Deletes only its leftover
        ``.partial`` files (interrupted writes); refuses if a chunk is damaged, so that nothing is overwritten."""
        info = self.manifest["episodes"][index]
        ep_dir = self.root / episode_dir_name(index)
        if info["complete"]:
            raise RecordingError(f"{ep_dir} is complete: it cannot be appended to")
        ep_dir.mkdir(exist_ok=True)
        for name in os.listdir(ep_dir):
            if PARTIAL_RE.match(name):
                os.remove(ep_dir / name)
        chunks, problems = scan_episode(ep_dir, index, self.height, self.width, self.action_space.size)
        if problems:
            path, reason = problems[0]
            raise RecordingError(f"cannot resume {ep_dir}: damaged chunk {path.name} ({reason}); "
                                 f"move it and the chunks after it away first")
        on_disk = sum(c.count for c in chunks)
        self._update(index, frames=on_disk)  # the manifest may have lagged one chunk behind
        return EpisodeWriter(self, index, on_disk)

    def close(self) -> None:
        """Release the dataset (the manifest is always up to date; nothing to flush here)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _update(self, index: int, **fields) -> None:
        self.manifest["episodes"][index].update(fields)
        self._write_manifest()

    def _write_manifest(self) -> None:
        self.manifest_stale = True  # until the write below completes (an interrupt may land inside it)
        atomic_write(self.root / MANIFEST, (json.dumps(self.manifest, indent=1) + "\n").encode())
        self.manifest_stale = False

    def _write_chunk(self, index: int, start: int, frames: np.ndarray, actions: np.ndarray) -> None:
        """One immutable chunk file, written whole or not at all (via ``.00000256.safetensors.partial``)."""
        from safetensors.numpy import save
        meta = {"format": FORMAT, "episode": str(index), "start": str(start), "count": str(len(frames)),
                "crc32": str(chunk_crc(frames, actions))}
        data = save({"frames": frames, "actions": actions}, metadata=meta)
        atomic_write(self.root / episode_dir_name(index) / chunk_name(start), data)


class EpisodeWriter:
    """Appends (frame, action) pairs to one episode, writing a chunk every ``chunk_frames`` frames. As a context
    manager it closes the episode on success; on an exception (KeyboardInterrupt, SystemExit from SIGTERM, ...) it
    writes the buffered frames as a last, shorter chunk and leaves the episode incomplete, ready to resume."""

    def __init__(self, writer: RecordingWriter, index: int, start_frame: int):
        self.writer, self.index = writer, index
        self.name = episode_dir_name(index)
        n, h, w = writer.chunk_frames, writer.height, writer.width
        self._frames = np.empty((n, h, w, 3), np.uint8)  # (chunk, H, W, 3) buffer of the chunk being filled
        self._actions = np.empty((n, writer.action_space.size), np.float32)  # (chunk, A)
        self._buffered = 0
        self.frames_on_disk = start_frame  # frames in complete chunk files
        self.closed = False

    @property
    def frames_written(self) -> int:
        """Frames appended to the episode so far (on disk or buffered); the index of the next frame."""
        return self.frames_on_disk + self._buffered

    def append(self, frame: np.ndarray, action) -> None:
        """Add frame ``t`` (uint8 [H, W, 3]) and the action held while it was shown (a vector of the space)."""
        if self.closed:
            raise RecordingError(f"{self.name} is closed")
        w = self.writer
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.shape != (w.height, w.width, 3):
            raise RecordingError(f"frame of {frame.dtype} {frame.shape} does not fit this recording "
                                 f"(uint8 {(w.height, w.width, 3)})")
        self._actions[self._buffered] = w.action_space.validate(action)
        self._frames[self._buffered] = frame
        self._buffered += 1
        if self._buffered == w.chunk_frames:
            self.flush()

    def flush(self) -> None:
        """Write the buffered frames as a chunk now (a short one if the buffer is not full). Safe to call again
        after an interrupt inside it: a chunk is rewritten whole, an unfinished manifest write is redone."""
        if self._buffered:
            n = self._buffered
            self.writer._write_chunk(self.index, self.frames_on_disk, self._frames[:n], self._actions[:n])
            self.frames_on_disk += n
            self._buffered = 0
            self.writer._update(self.index, frames=self.frames_on_disk)
        elif self.writer.manifest_stale:
            self.writer._write_manifest()

    def close(self) -> None:
        """Flush and mark the episode complete."""
        if self.closed:
            return
        self.flush()
        self.writer._update(self.index, complete=True)
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        elif not self.closed:
            self.flush()  # keep everything appended so far; the episode stays incomplete
            self.closed = True


def _acquire_lock(root: Path):
    """An exclusive advisory lock on ``root/.lock`` (POSIX flock), or a RecordingError if another writer has it."""
    f = open(root / LOCK, "a")
    try:
        import fcntl
    except ImportError:  # Windows: no advisory lock; one writer at a time is then the user's job
        return f
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise RecordingError(f"{root} is being written by another process") from None
    return f
