"""The per-frame action log that comes with a designer's own video: a JSONL file, one input event a line.

Each line is one JSON object that says, from a point in time on, what is held::

    {"frame": 12, "keys": ["W", "A"]}                       # from source frame 12 on, W and A are held
    {"t": 0.4, "keys": ["W"], "mouse": [3, -1]}             # from 0.4 s on W is held; the mouse moved (3, -1) px
    {"t": 0.5, "mouse": [2, 0], "buttons": ["LEFT"]}        # keys unchanged; LEFT held from now on

- ``frame`` (a source frame index, converted at the video's frame rate) or ``t`` (seconds since the first frame);
  one log uses one clock, and times never go backwards.
- ``keys`` and ``buttons`` are states: they persist until an entry that names them again. An entry without
  ``keys`` (or ``buttons``) leaves them as they were; ``"keys": []`` releases all keys.
- ``mouse`` is an event: ``[dx, dy]`` pixels of relative motion since the previous entry. Onto the ticks of a
  recording, the motions of all entries inside one tick are summed (``ActionSpace`` then scales and clips them).
- An optional first line ``{"action_space": {...}, "fps": 30}`` (as ``write_action_log`` writes) carries the exact
  controls, so that keys that were never pressed and the mouse scale survive a round trip.

Resampling onto ticks (``ActionLog.tick_actions``): tick ``k`` lasts ``[k / fps, (k + 1) / fps)``; its held keys and
buttons are those of the latest entry at or before ``k / fps`` (nothing is held before the first entry); its mouse
motion is the sum of the entries inside the tick.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from games.data.actions import ActionSpace, ActionSpaceError
from games.data.errors import InputError

TIME_EPS = 1e-6  # seconds: entries this close to a tick boundary count as on it (float frame/tick times)


@dataclass(frozen=True)
class LogEntry:
    when: float  # the source frame index (clock "frame") or seconds (clock "t")
    keys: tuple[str, ...] | None  # held keys from now on; None: unchanged
    buttons: tuple[str, ...] | None  # held mouse buttons from now on; None: unchanged
    dx: float = 0.0  # pixels of mouse motion since the previous entry
    dy: float = 0.0
    line: int = 0  # 1-based line number in the file, for messages


@dataclass(frozen=True)
class ActionLog:
    entries: tuple[LogEntry, ...]  # in file order, times non-decreasing
    clock: str  # "frame" or "t"
    action_space: ActionSpace  # given, from the header line, or inferred from the entries
    fps: float | None = None  # the frame rate the header line declares, if any
    path: str = "<log>"

    def times(self, source_fps: float) -> np.ndarray:
        """Entry times in seconds since the first video frame; ``source_fps`` converts frame indices."""
        when = np.array([e.when for e in self.entries], np.float64)
        return when / float(source_fps) if self.clock == "frame" else when

    def tick_actions(self, fps: float, source_fps: float) -> Iterator[np.ndarray]:
        """Action vectors of ticks 0, 1, 2, ... at ``fps``; endless (after the last entry its state stays held)."""
        times = self.times(source_fps)
        states = self._states()
        # Cumulative motion, so that the motion of the entries in [a, b) is cum[b] - cum[a].
        cum = np.zeros((len(times) + 1, 2))
        cum[1:] = np.cumsum([(e.dx, e.dy) for e in self.entries], axis=0)
        k = 0
        while True:
            t0, t1 = k / fps, (k + 1) / fps
            latest = int(np.searchsorted(times, t0 + TIME_EPS, side="right")) - 1  # last entry at or before t0
            keys, buttons = states[latest] if latest >= 0 else ((), ())
            a, b = np.searchsorted(times, [t0 - TIME_EPS, t1 - TIME_EPS], side="left")
            dx, dy = cum[b] - cum[a]
            yield self.action_space.encode(keys, dx, dy, buttons)
            k += 1

    def to_actions(self, n: int, fps: float, source_fps: float) -> np.ndarray:
        """The first ``n`` tick actions at ``fps`` as one float32 [n, A] array."""
        out = np.zeros((n, self.action_space.size), np.float32)
        for k, vec in zip(range(n), self.tick_actions(fps, source_fps)):
            out[k] = vec
        return out

    def _states(self) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
        """(held keys, held buttons) after each entry, with "unchanged" resolved."""
        keys: tuple[str, ...] = ()
        buttons: tuple[str, ...] = ()
        out = []
        for e in self.entries:
            keys = e.keys if e.keys is not None else keys
            buttons = e.buttons if e.buttons is not None else buttons
            out.append((keys, buttons))
        return out


def infer_action_space(entries) -> ActionSpace:
    """Controls seen in a log: sorted union of keys, the mouse if any entry moves it, sorted buttons seen."""
    keys = sorted({k for e in entries for k in (e.keys or ())})
    buttons = sorted({b for e in entries for b in (e.buttons or ())})
    mouse = bool(buttons) or any(e.mouse for e in entries)
    return ActionSpace(keys=tuple(keys), mouse=mouse, buttons=tuple(buttons))


def read_json_lines(path: Path, what: str, hint: str = "", where: str = "{path}:{n}") -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSONL file whose lines must be JSON objects; a missing
    or unreadable file or a bad line is a one-line InputError (``where`` formats the place: path and line n)."""
    if not path.is_file():
        raise InputError(f"{what} not found: {path}" + (f" ({hint})" if hint else ""))
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {what} {path}: {e}") from None
    objects = []
    for n, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{where.format(path=path, n=n)}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise InputError(f"{where.format(path=path, n=n)}: expected a JSON object, got {type(obj).__name__}")
        objects.append((n, obj))
    return objects


ENTRY_FIELDS = {"frame", "t", "keys", "buttons", "mouse"}  # what an entry may hold (a typo is an error, not silence)


def read_action_log(path, action_space: ActionSpace | None = None) -> ActionLog:
    """Parse a JSONL action log; any malformed line is a one-line InputError naming the file and line.

    The controls are ``action_space`` if given, else the header line's, else inferred from the entries.
    """
    path = Path(path)

    def fail(n: int, msg: str):
        raise InputError(f"{path}:{n}: {msg}")

    header_space, header_fps, raw = None, None, []
    for n, obj in read_json_lines(path, "action log"):
        if "action_space" in obj and not raw and header_space is None:  # the optional header line
            try:
                header_space = ActionSpace.from_dict(obj["action_space"])
            except (ActionSpaceError, AttributeError) as e:
                fail(n, f"bad action_space header: {e}")
            header_fps = obj.get("fps")
            if header_fps is not None and not (_is_number(header_fps) and header_fps > 0):
                fail(n, f"header fps must be a positive number, got {header_fps!r}")
            continue
        raw.append((n, obj))
    if not raw:
        raise InputError(f"action log {path} has no entries")

    entries, clock, prev = [], None, -math.inf
    for n, obj in raw:
        unknown = sorted(set(obj) - ENTRY_FIELDS)
        if unknown:
            fail(n, f"unknown field(s) {', '.join(map(repr, unknown))}; an entry has \"frame\" or \"t\", "
                    f"and \"keys\", \"buttons\", \"mouse\"")
        has = [c for c in ("frame", "t") if c in obj]
        if len(has) != 1:
            fail(n, 'each entry needs exactly one of "frame" (source frame index) or "t" (seconds)')
        if clock is not None and has[0] != clock:
            fail(n, f'mixes "{has[0]}" with "{clock}" entries; use one clock for the whole log')
        clock = has[0]
        when = obj[clock]
        if not _is_number(when) or when < 0 or (clock == "frame" and when != int(when)):
            fail(n, f'"{clock}" must be a non-negative {"integer" if clock == "frame" else "number"}, got {when!r}')
        if when < prev:
            fail(n, f'time goes backwards ({clock} {when} after {prev})')
        prev = when
        keys = _names(obj, "keys", n, fail)
        buttons = _names(obj, "buttons", n, fail)
        dx = dy = 0.0
        if "mouse" in obj:
            m = obj["mouse"]
            if not (isinstance(m, list) and len(m) == 2 and all(_is_number(v) for v in m)):
                fail(n, f'"mouse" must be [dx, dy] in pixels, got {m!r}')
            dx, dy = float(m[0]), float(m[1])
        entries.append(_Parsed(float(when), keys, buttons, dx, dy, n, "mouse" in obj))

    space = action_space or header_space or infer_action_space(entries)
    for e in entries:  # every name must exist in the controls
        for k in e.keys or ():
            if k not in space.keys:
                fail(e.line, f"unknown key {k!r}; the action space's keys are {list(space.keys)}")
        if (e.mouse or e.buttons) and not space.mouse:
            fail(e.line, "mouse input, but the action space has no mouse")
        for b in e.buttons or ():
            if b not in space.buttons:
                fail(e.line, f"unknown mouse button {b!r}; the action space's buttons are {list(space.buttons)}")
    final = tuple(LogEntry(e.when, e.keys, e.buttons, e.dx, e.dy, e.line) for e in entries)
    return ActionLog(final, clock, space, header_fps, str(path))


def write_action_log(path, action_space: ActionSpace, actions, fps: float) -> Path:
    """Write ``actions`` (float32 [T, A]) as a log: a header line, then one ``frame`` entry per frame.

    Read back at the same ``fps`` it gives the same vectors (mouse motion is written in pixels, exactly).
    """
    path = Path(path)
    actions = np.asarray(actions, np.float32)
    if actions.ndim != 2 or actions.shape[1] != action_space.size:
        raise InputError(f"actions of shape {actions.shape} do not fit the action space ({action_space.size} entries)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"action_space": action_space.to_dict(), "fps": fps}) + "\n")
        for i, vec in enumerate(actions):
            d = action_space.decode(vec)
            entry = {"frame": i, "keys": d["keys"]}
            if action_space.mouse:
                entry["mouse"] = [d["dx"], d["dy"]]
                entry["buttons"] = d["buttons"]
            f.write(json.dumps(entry) + "\n")
    return path


@dataclass(frozen=True)
class _Parsed:
    """An entry while parsing (before its names are checked against the controls)."""
    when: float
    keys: tuple[str, ...] | None
    buttons: tuple[str, ...] | None
    dx: float
    dy: float
    line: int
    mouse: bool  # whether the line had a "mouse" field


def _names(obj: dict, field: str, n: int, fail) -> tuple[str, ...] | None:
    """A list-of-strings field as a tuple, None when absent."""
    if field not in obj:
        return None
    v = obj[field]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        fail(n, f'"{field}" must be a list of names, got {v!r}')
    return tuple(v)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
