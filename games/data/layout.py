"""The on-disk layout of a gameplay recording, shared by its reader (``games.data.recording``) and its writer
(``games.data.writer``): names, the manifest, chunk validation and atomic writes.

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
"""
from __future__ import annotations

import json
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open

from games.data.actions import ActionSpace
from games.data.errors import RecordingError

FORMAT = "rollingworld-recording"
VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".lock"  # flock target of the one writer; left behind harmlessly after a crash
CHUNK_RE = re.compile(r"^(\d{8})\.safetensors$")
PARTIAL_RE = re.compile(r"^\.(\d{8})\.safetensors\.partial$")
EPISODE_RE = re.compile(r"^ep_(\d{6})$")


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
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full disk, say: leave no half file, and say which file could not be written
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None
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
