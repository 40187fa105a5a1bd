"""Gameplay recordings: the one format that games write and the world model reads.

A dataset is a folder::

    DIR/manifest.json              format, version, game, action space, fps, resolution, one entry per episode
    DIR/ep_000000/00000000.safetensors   frames [T, H, W, 3] uint8 + actions [T, A] float32, T <= chunk_frames
    DIR/ep_000000/00000256.safetensors   ... named by the index of its first frame
    DIR/ep_000001/...

Frame ``t + 1`` is the result of frame ``t`` and action ``t``: every frame is stored with the action that was held
while it was shown.

Crash safety. A chunk is written whole or not at all: to ``.00000256.safetensors.partial`` in the same folder,
fsynced, then renamed (``os.replace``, atomic on POSIX) to its final name; the manifest is rewritten the same way
after every chunk and when an episode closes. A killed recorder therefore leaves complete chunks, at most one
``.partial`` file per episode, and a manifest at most one chunk behind. Readers trust the chunk files on disk (their
headers say episode, start frame and count) and use the manifest only for the dataset's settings and each episode's
seed, agent and complete flag. Chunks are read memory-mapped (``safetensors.safe_open``), never unpickled.

This module holds the layout, the reader (``Recording``, ``Episode``) and the writer (``RecordingWriter``,
``EpisodeWriter``); ``games.record`` records datasets with scripted agents and audits them (``check_dataset``).
"""
from __future__ import annotations

import bisect
import json
import os
import re
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open

from games.actions import ActionSpace
from games.errors import InputError

FORMAT = "rollingworld-recording"
VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".lock"  # flock target of the one writer; left behind harmlessly after a crash
CHUNK_RE = re.compile(r"^(\d{8})\.safetensors$")
PARTIAL_RE = re.compile(r"^\.(\d{8})\.safetensors\.partial$")
EPISODE_RE = re.compile(r"^ep_(\d{6})$")


class RecordingError(InputError):
    """A recording that is missing, corrupt, or does not fit the settings it is used with."""


class RecordingWarning(UserWarning):
    """A damaged chunk was skipped while reading a recording."""


def episode_dir_name(index: int) -> str:
    return f"ep_{index:06d}"


def chunk_name(start: int) -> str:
    return f"{start:08d}.safetensors"


def chunk_crc(frames: np.ndarray, actions: np.ndarray) -> int:
    """CRC-32 of a chunk's frames then actions; stored in the header, verified by ``check_dataset``."""
    return zlib.crc32(np.ascontiguousarray(actions), zlib.crc32(np.ascontiguousarray(frames)))


# ----------------------------------------------------------------------------------------------------------------
# Manifest


def read_manifest(root: Path) -> dict:
    """The parsed manifest of ``root``, or a one-line RecordingError saying why there is none."""
    path = Path(root) / MANIFEST
    if not Path(root).is_dir():
        raise RecordingError(f"no recording at {root}: not a folder")
    if not path.is_file():
        raise RecordingError(f"no recording at {root}: {MANIFEST} missing")
    try:
        m = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordingError(f"corrupt recording at {root}: {MANIFEST} unreadable ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise RecordingError(f"{path} is not a {FORMAT} manifest")
    if m.get("version") != VERSION:
        raise RecordingError(f"{path}: format version {m.get('version')!r}, this code reads version {VERSION}")
    try:
        ActionSpace.from_dict(m["action_space"])
        for key in ("game", "fps", "height", "width"):
            m[key]  # noqa: B018 (presence check)
        if not all(isinstance(e, dict) and "frames" in e for e in m["episodes"]):
            raise KeyError("episodes")
    except (KeyError, TypeError) as e:
        raise RecordingError(f"corrupt recording at {root}: {MANIFEST} lacks {e}") from None
    return m


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all: to ``.NAME.partial`` beside it, fsync, rename (atomic on
    POSIX), fsync of the folder so that the rename itself survives a power cut."""
    tmp = path.parent / f".{path.name}.partial"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


# ----------------------------------------------------------------------------------------------------------------
# Chunks


@dataclass(frozen=True)
class Chunk:
    path: Path
    start: int  # index of its first frame in the episode
    count: int  # frames in it


def validate_chunk(path: Path, episode: int, start: int, height: int, width: int, action_size: int,
                   verify_data: bool = False) -> tuple[int, str | None]:
    """(frame count, None) for a good chunk, or (0, reason) for a damaged one. Reads the header only unless
    ``verify_data``, which also checks the CRC of the data."""
    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            if set(f.keys()) != {"frames", "actions"}:
                return 0, f"holds tensors {sorted(f.keys())}, expected frames and actions"
            fs, acts = f.get_slice("frames"), f.get_slice("actions")
            fshape, ashape = list(fs.get_shape()), list(acts.get_shape())
            if fs.get_dtype() != "U8" or acts.get_dtype() != "F32":
                return 0, f"dtypes {fs.get_dtype()}/{acts.get_dtype()}, expected U8 frames and F32 actions"
            n = fshape[0] if fshape else 0
            if n < 1 or fshape != [n, height, width, 3]:
                return 0, f"frames of shape {fshape}, expected [T, {height}, {width}, 3] with T >= 1"
            if ashape != [n, action_size]:
                return 0, f"actions of shape {ashape}, expected [{n}, {action_size}]"
            if meta.get("episode") != str(episode) or meta.get("start") != str(start) or meta.get("count") != str(n):
                return 0, (f"header says episode {meta.get('episode')}, start {meta.get('start')}, "
                           f"count {meta.get('count')}; expected episode {episode}, start {start}, count {n}")
            if verify_data and meta.get("crc32") != str(chunk_crc(f.get_tensor("frames"), f.get_tensor("actions"))):
                return 0, "data does not match its checksum"
            return n, None
    except Exception as e:  # SafetensorError, OSError, malformed JSON header: all mean "unreadable"
        return 0, f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def scan_episode(ep_dir: Path, episode: int, height: int, width: int, action_size: int,
                 verify_data: bool = False) -> tuple[list[Chunk], list[tuple[Path, str]]]:
    """The episode's readable chunks in frame order, up to the first damaged one or gap, and (path, reason) for
    every chunk that was not used (the damaged one and all after it)."""
    names = sorted(os.listdir(ep_dir)) if ep_dir.is_dir() else []
    starts = sorted((int(m.group(1)), n) for n in names if (m := CHUNK_RE.match(n)))
    chunks: list[Chunk] = []
    problems: list[tuple[Path, str]] = []
    expected = 0  # start frame the next chunk must have
    for start, name in starts:
        path = ep_dir / name
        if problems:
            problems.append((path, "after a damaged chunk or gap"))
            continue
        if start != expected:
            kind = "gap" if start > expected else "overlap"
            problems.append((path, f"starts at frame {start}, expected {expected} ({kind})"))
            continue
        count, reason = validate_chunk(path, episode, start, height, width, action_size, verify_data)
        if reason:
            problems.append((path, reason))
        else:
            chunks.append(Chunk(path, start, count))
            expected += count
    return chunks, problems


# ----------------------------------------------------------------------------------------------------------------
# Reader


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


# ----------------------------------------------------------------------------------------------------------------
# Writer


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
