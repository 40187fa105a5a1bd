"""A played session on disk: the frames shown as an mp4, and beside it a JSONL sidecar that can regenerate them.

``rollingworld play ckpt=... record=FILE.mp4`` writes ``FILE.mp4`` and ``FILE.jsonl``. The sidecar's first line is
a header that names everything a replay needs (the engine is deterministic given these)::

    {"format": "rollingworld-session", "version": 1,
     "checkpoint": {"path": "/abs/teacher.safetensors", "sha256": "..."},   # sha256 of the whole file
     "engine": {"mode": "rolling", "window": 4, ...}, "threads": 1, "seed": 0, "start": "game",
     "game": "pong", "compare": false, "frame": {"height": 64, "width": 64}, "fps": 30,
     "action_space": {"keys": ["UP", "DOWN"], ...}, "video": "FILE.mp4", "frame_sha1": "..."}

then one line a tick, in order, with the action held during the tick and the frame it produced, and one line for
each restart by the player (the reset control; ticks go on counting)::

    {"tick": 1, "action": [1.0, 0.0], "frame_sha1": "..."}
    {"reset": {"seed": 4, "start_seed": 3}, "frame_sha1": "..."}
    {"tick": 212, "action": [0.0, 0.0], "frame_sha1": "...", "compiled": true}

``"compiled": true`` marks the first tick that ran the compiled pass, when the tick compiled in the background
(``background_compile``): compiled and eager ticks differ by float rounding, so a replay switches at that tick too.

``frame_sha1`` is the sha1 of the shown frame's uint8 bytes (the header's is the start frame's): the mp4 is lossy,
the hashes are the lossless record that ``rollingworld replay`` checks regenerated frames against. Every line is
flushed as it is written, so an interrupted session keeps every tick it showed.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from games.data.actions import ActionSpace
from games.data.errors import InputError
from runtime.source import FrameSource

FORMAT = "rollingworld-session"
VERSION = 1
VIDEO_SCALE = 4  # nearest-neighbour upscaling of the recorded mp4


def frame_sha1(frame: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(frame, np.uint8).tobytes()).hexdigest()


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sidecar(path) -> Path:
    """The JSONL beside a session's mp4 (a .jsonl path is its own sidecar)."""
    return Path(path).with_suffix(".jsonl")


def session_header(ckpt, session, seed: int, threads: int, compare: bool, video) -> dict:
    """The header of a session played on ``session`` (a ``WorldSession``) from the checkpoint ``ckpt``."""
    return {"format": FORMAT, "version": VERSION,
            "checkpoint": {"path": str(Path(ckpt).resolve()), "sha256": file_sha256(ckpt)},
            "engine": asdict(session.cfg), "threads": int(threads), "seed": int(seed), "start": "game",
            "game": session.info.game, "compare": bool(compare),
            "frame": {"height": session.frame_size[0], "width": session.frame_size[1]},
            "fps": session.info.fps,
            "action_space": session.action_space.to_dict(), "video": Path(video).name}


class SessionRecorder(FrameSource):
    """Wraps a frame source: every frame it returns goes to the mp4, every tick to the JSONL sidecar.

    It shows what the wrapped source shows (its name, size, rate, controls). ``close()`` finishes the mp4; call it
    in a ``finally`` so that Ctrl-C or a closed window still leaves a playable file.
    """

    def __init__(self, source: FrameSource, video, header: dict):
        from games.data.video import VideoWriter

        self.source, self.header = source, header
        self.name, self.width, self.height, self.fps = source.name, source.width, source.height, source.fps
        self.action_space, self.default_bindings, self.game = source.action_space, source.default_bindings, source.game
        self.path = sidecar(video)
        self.video = VideoWriter(video, fps=header["fps"], scale=VIDEO_SCALE)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.path, "w", encoding="utf-8")
        self.ticks = 0
        self._started = False
        self._compiled = False  # whether a tick has run compiled yet

    @property
    def latency_ticks(self) -> int:
        return self.source.latency_ticks

    @property
    def t(self) -> int:
        return self.source.t

    def _write(self, line: dict) -> None:
        self._log.write(json.dumps(line) + "\n")
        self._log.flush()

    def reset(self, seed: int, start_seed: int | None = None) -> np.ndarray:
        """The first reset starts the recording (header); later ones are the player's restarts."""
        kw = {} if start_seed is None else {"start_seed": int(start_seed)}
        if not self._started and (seed != self.header["seed"] or kw):
            raise RuntimeError("a session recording starts with reset(seed) at the header's seed")
        frame = self.source.reset(seed, **kw)
        if self._started:
            self._write({"reset": {"seed": int(seed), **kw}, "frame_sha1": frame_sha1(frame)})
        else:
            self._write({**self.header, "frame_sha1": frame_sha1(frame)})
            self._started = True
        self.video.write(frame)
        return frame

    def step(self, action) -> np.ndarray:
        frame = self.source.step(action)
        self.ticks += 1
        vec = self.source.action_space.validate(action)
        line = {"tick": self.ticks, "action": [float(v) for v in vec], "frame_sha1": frame_sha1(frame)}
        session = getattr(self.source, "session", None)
        if session is not None and session.compiled and not self._compiled:
            self._compiled = line["compiled"] = True
        self._write(line)
        self.video.write(frame)
        return frame

    def close(self) -> None:
        try:
            self.video.close(keep=True)
        finally:
            self._log.close()
            if not self._started:  # failed before the first frame: leave nothing behind
                self.path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------------
# Reading a session back

@dataclass
class SessionLog:
    path: Path
    header: dict
    action_space: ActionSpace
    events: list[tuple[str, np.ndarray | dict]]  # ("tick", action float32 [A]) or ("reset", reset's keywords)
    hashes: list[str]  # frame sha1s: the start frame, then one per event
    compiled_at: int | None = None  # the first tick that ran the compiled pass (background compile), if marked

    @property
    def actions(self) -> np.ndarray:
        """The actions of all ticks, float32 [N, A]."""
        ticks = [a for kind, a in self.events if kind == "tick"]
        return np.stack(ticks) if ticks else np.zeros((0, self.action_space.size), np.float32)


# header field -> (type, what it is) for the one-line messages
_HEADER = {"checkpoint": (dict, "an object"), "engine": (dict, "an object"), "threads": (int, "an integer"),
           "seed": (int, "an integer"), "start": (str, "a string"), "compare": (bool, "true or false"),
           "fps": ((int, float), "a number"), "action_space": (dict, "an object"), "frame_sha1": (str, "a string")}


def _is_sha(v, n: int) -> bool:
    return isinstance(v, str) and len(v) == n and all(c in "0123456789abcdef" for c in v)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def read_session(path) -> SessionLog:
    """Parse a session's JSONL sidecar (given it or its mp4); anything wrong is a one-line InputError."""
    from games.data.action_log import read_json_lines

    path = sidecar(path)

    def bad(n: int, msg: str):
        raise InputError(f"{path}: line {n}: {msg}")

    objects = read_json_lines(path, "session sidecar", hint="play ... record=FILE.mp4 writes it",
                              where="{path}: line {n}")  # [(line number, object)]
    if not objects or objects[0][1].get("format") != FORMAT:
        raise InputError(f"{path} is not a rollingworld session (its first line must be the session header)")
    header = objects[0][1]
    if not _is_int(header.get("version")) or header["version"] > VERSION:
        bad(1, f"session version {header.get('version')!r}; this rollingworld reads up to {VERSION}")
    for key, (kind, what) in _HEADER.items():
        if not isinstance(header.get(key), kind) or (kind is int and isinstance(header[key], bool)):
            bad(1, f"header field {key!r} must be {what}, got {header.get(key)!r:.60}")
    ckpt = header["checkpoint"]
    if not isinstance(ckpt.get("path"), str) or not _is_sha(ckpt.get("sha256"), 64):
        bad(1, "header field 'checkpoint' must hold a path and a sha256")
    try:
        space = ActionSpace.from_dict(header["action_space"])
    except InputError as e:
        bad(1, str(e))
    if not _is_sha(header["frame_sha1"], 40):
        bad(1, "header field 'frame_sha1' is not a sha1")

    events, hashes, ticks, compiled_at = [], [header["frame_sha1"]], 0, None
    for n, obj in objects[1:]:
        if not _is_sha(obj.get("frame_sha1"), 40):
            bad(n, "'frame_sha1' is missing or not a sha1")
        hashes.append(obj["frame_sha1"])
        if "reset" in obj:
            kw = obj["reset"]
            if not (isinstance(kw, dict) and _is_int(kw.get("seed")) and set(kw) <= {"seed", "start_seed"}
                    and _is_int(kw.get("start_seed", 0))):
                bad(n, "'reset' must be {\"seed\": N} or {\"seed\": N, \"start_seed\": M}")
            events.append(("reset", kw))
            continue
        ticks += 1
        if obj.get("tick") != ticks:
            bad(n, f"expected tick {ticks}, got {obj.get('tick')!r}")
        vec = obj.get("action")
        if not (isinstance(vec, list) and len(vec) == space.size
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vec)):
            bad(n, f"'action' must be a list of {space.size} numbers ({', '.join(space.names)})")
        if "compiled" in obj:
            if obj["compiled"] is not True or compiled_at is not None:
                bad(n, "'compiled' must be true, on one tick only (the first that ran compiled)")
            compiled_at = ticks
        events.append(("tick", np.asarray(vec, np.float32)))
    return SessionLog(path, header, space, events, hashes, compiled_at)


def verified_checkpoint(log: SessionLog, ckpt=None) -> Path:
    """The session's checkpoint (or ``ckpt``, if it moved), after checking it is the very file recorded with."""
    want = log.header["checkpoint"]
    path = Path(ckpt or want["path"])
    if not path.is_file():
        raise InputError(f"the session's checkpoint {path} is not there (ckpt=FILE points at a moved one)")
    if file_sha256(path) != want["sha256"]:
        raise InputError(f"checkpoint {path} is not the one {log.path.name} was recorded with "
                         f"(sha256 {want['sha256'][:12]}...)")
    return path
