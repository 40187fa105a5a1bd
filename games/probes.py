"""Control probes: does the world obey the key? Read from the frames alone, so that the real game and a world model
are measured by the same protocol.

A probe knows one game: it draws trials (a lead-in of actions that brings the world to a varied state, then one
probed action with the direction it should move something) and reads the effect from the frame before and the frame
after. ``control_accuracy`` drives any frame source (``reset(seed) -> frame``, ``step(action) -> frame``, optional
``latency_ticks``: a game, ``runtime.worlds.WorldSource`` over a world model, or ``ShuffledFrames`` as the
chance baseline) through the trials:

1. ``reset(seed + i)``, then the trial's lead-in actions;
2. ``latency_ticks`` steps with no key held: the last frame shows the state the lead-in left, standing still
   (a step's effect shows ``latency_ticks`` steps after it is sent: 1 for a game, the window for Rolling Forcing);
3. the probed action held for ``trial.hold + latency_ticks - 1`` steps: the last frame shows ``hold`` ticks of it.

Probes:

- ``PongProbe``: the player's paddle (cyan, on the left) moves the commanded way under UP / DOWN and under vertical
  mouse motion. Its centre is read from the paddle's columns; a trial against the wall it is already at is
  undecidable, as is one where no paddle is found in the frame before.
- ``MazeProbe``: the view turns with LEFT / RIGHT and with the sign of horizontal mouse motion (the columns, resampled
  to one per degree, shift: the turn is the shift that best matches the columns before and after), and advances on W
  and retreats on S (the view stretches vertically about the horizon, or shrinks: the zoom that best matches, each
  column free to have slid sideways, as walls pass by or the player slides along one). The lead-in only turns, so
  the player stands at its start in the middle of a room, with room to move either way. A trial whose frame before
  would look the same after the expected motion (a blank wall filling the view) is undecidable.

Each trial has a binary direction, so frames unrelated to the actions score about 50 % (a little less, as "did not
move" counts as wrong). Weakness: a probe sees one effect of one action at a time (no combinations, no game rules:
that the ball bounces off the paddle is not a control probe) and only at the hold it uses.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from games.data.errors import InputError


@dataclass
class Trial:
    kind: str  # what is probed, e.g. "UP", "mouse_down", "W": accuracy is also reported by kind
    lead_in: list  # actions [A] sent first, to reach a varied state
    action: np.ndarray  # [A] the probed action, held
    expect: int  # +1 / -1: the direction it should move the thing the probe reads
    hold: int  # ticks the probed action is held


class Probe:
    """Trials for one game and the reading of their effect from frames."""
    name = "probe"

    def trials(self, rng: np.random.Generator, n: int) -> list[Trial]:
        raise NotImplementedError

    def score(self, before: np.ndarray, after: np.ndarray, trial: Trial) -> bool | None:
        """Whether ``after`` (uint8 [H, W, 3]) shows the trial's effect on ``before``; None if undecidable."""
        raise NotImplementedError


def control_accuracy(source, probe: Probe, n_trials: int, seed: int = 0, latency_ticks: int | None = None) -> dict:
    """Runs ``n_trials`` trials of ``probe`` on ``source`` (protocol in the module docstring) and returns
    ``{"accuracy": correct / decided (nan if none), "decided": int, "n": int, "by_kind": {kind: {...}}}``.
    ``latency_ticks`` defaults to the source's own."""
    latency = int(latency_ticks if latency_ticks is not None else source.latency_ticks)
    if latency < 1:
        raise InputError(f"latency_ticks must be at least 1, got {latency}")
    noop = np.zeros(source.action_space.size, np.float32)
    tally: dict[str, list[int]] = {}  # kind -> [correct, decided, n]
    for i, trial in enumerate(probe.trials(np.random.default_rng(seed), n_trials)):
        source.reset(seed + i)
        for action in trial.lead_in:
            source.step(action)
        for _ in range(latency):
            before = source.step(noop)
        for _ in range(trial.hold + latency - 1):
            after = source.step(trial.action)
        verdict = probe.score(np.asarray(before), np.asarray(after), trial)
        t = tally.setdefault(trial.kind, [0, 0, 0])
        t[0] += bool(verdict)
        t[1] += verdict is not None
        t[2] += 1
    return {**_summary([sum(t[j] for t in tally.values()) for j in range(3)]),
            "by_kind": {kind: _summary(t) for kind, t in sorted(tally.items())}}


def _summary(t) -> dict:
    correct, decided, n = t
    return {"accuracy": correct / decided if decided else float("nan"), "decided": decided, "n": n}


class ShuffledFrames:
    """A frame source that ignores its actions: every reset and step returns a random one of ``frames``
    [N, H, W, 3] (a recording of the game). The chance level of a probe."""
    latency_ticks = 1

    def __init__(self, frames: np.ndarray, action_space, seed: int = 0):
        self.frames, self.action_space = frames, action_space
        self.rng = np.random.default_rng(seed)

    def reset(self, seed: int) -> np.ndarray:
        return self.frames[self.rng.integers(len(self.frames))]

    def step(self, action) -> np.ndarray:
        return self.frames[self.rng.integers(len(self.frames))]


# ---- Pong ------------------------------------------------------------------------------------------------------------
class PongProbe(Probe):
    """UP / DOWN and vertical mouse motion move the player's paddle (the left one) up / down."""
    name = "pong"
    hold = 4  # ticks: 8 px at 64 px height, with keys or with half the mouse's deflection

    def __init__(self, width: int = 64, height: int = 64):
        from games.pong import PLAYER, Pong

        game = Pong(width=width, height=height)
        self.space, self.height = game.action_space, height
        self.columns = slice(game.paddle_x[0], game.paddle_x[0] + game.paddle_w)
        self.paddle_h = game.paddle_h
        self.colour = np.array(PLAYER, np.float32)

    def trials(self, rng, n):
        up, down = self.space.encode(keys=["UP"]), self.space.encode(keys=["DOWN"])
        half = 0.5 * self.space.mouse_scale
        probed = {"UP": (up, -1), "DOWN": (down, 1),
                  "mouse_up": (self.space.encode(dy=-half), -1), "mouse_down": (self.space.encode(dy=half), 1)}
        kinds = sorted(probed)
        out = []
        for i in range(n):
            kind = kinds[i % len(kinds)]
            # Wait a while (the ball moves on), then place the paddle anywhere, the walls included.
            move = [up, down][rng.integers(2)]
            lead_in = [self.space.noop()] * int(rng.integers(0, 20)) + [move] * int(rng.integers(0, 16))
            out.append(Trial(kind, lead_in, *probed[kind], hold=self.hold))
        return out

    def paddle_y(self, frame: np.ndarray) -> float | None:
        """Centre row of the player's paddle in ``frame`` uint8 [H, W, 3], or None if no paddle is there."""
        strip = frame[:, self.columns].astype(np.float32)  # [H, w, 3]
        likeness = np.clip(1 - np.linalg.norm(strip - self.colour, axis=-1) / 100.0, 0, 1).mean(1)  # [H]
        window = np.convolve(likeness, np.ones(self.paddle_h), mode="valid")  # [H - h + 1]
        top = int(window.argmax())
        if window[top] < 0.5 * self.paddle_h:
            return None
        rows = np.arange(top, top + self.paddle_h)
        return float((likeness[rows] * rows).sum() / likeness[rows].sum() + 0.5)

    def score(self, before, after, trial):
        y0 = self.paddle_y(before)
        if y0 is None:
            return None
        room = y0 - self.paddle_h / 2 if trial.expect < 0 else self.height - self.paddle_h / 2 - y0
        if room < 1.0:  # already at the wall it is sent toward
            return None
        y1 = self.paddle_y(after)
        return bool(y1 is not None and (y1 - y0) * trial.expect >= 1.0)


# ---- Maze ------------------------------------------------------------------------------------------------------------
class MazeProbe(Probe):
    """LEFT / RIGHT and horizontal mouse motion turn the view; W advances and S retreats."""
    name = "maze"
    hold = 3  # ticks of turning: 15 degrees with keys or half the mouse's deflection
    turn_degrees = 15
    walk = 6  # ticks of W / S: 0.48 cells (from the middle of a room there is room for at least 0.3)
    max_turn = 25  # degrees searched either way
    max_stretch = 1.3  # each frame is resampled by at most this: zooms up to 1.3^2 either way
    stretches = np.geomspace(1 / 1.69, 1.69, 35)
    slide = 8  # columns a stretched column may have moved across

    def __init__(self, width: int = 64, height: int = 64):
        from games.maze import Maze

        game = Maze(width=width, height=height)
        self.space = game.action_space
        # Columns resampled to one per degree: a turn is then a shift of whole columns.
        half_fov = np.degrees(np.arctan(width / 2 / game.focal))
        self.angles = np.arange(-np.floor(half_fov), np.floor(half_fov) + 1)  # [n] degrees
        self.at = game.focal * np.tan(np.radians(self.angles)) + width / 2 - 0.5  # [n] column coordinate

    def trials(self, rng, n):
        s = self.space
        half = 0.5 * s.mouse_scale
        probed = {"RIGHT": (s.encode(keys=["RIGHT"]), 1), "LEFT": (s.encode(keys=["LEFT"]), -1),
                  "mouse_right": (s.encode(dx=half), 1), "mouse_left": (s.encode(dx=-half), -1),
                  "W": (s.encode(keys=["W"]), 1), "S": (s.encode(keys=["S"]), -1)}
        kinds = sorted(probed)
        out = []
        for i in range(n):
            kind = kinds[i % len(kinds)]
            turn = s.encode(dx=float(rng.choice([-1, 1])) * s.mouse_scale)  # 10 degrees a tick
            hold = self.walk if kind in ("W", "S") else self.hold
            out.append(Trial(kind, [turn] * int(rng.integers(0, 19)), *probed[kind], hold=hold))
        return out

    # -- turning: a shift of the columns in angle --
    def _columns(self, frame: np.ndarray) -> np.ndarray:
        """[n, H * 3] columns of ``frame`` sampled at one per degree (linear between pixel columns)."""
        x = frame.astype(np.float32)
        lo = np.clip(np.floor(self.at).astype(int), 0, x.shape[1] - 2)
        f = np.clip(self.at - lo, 0, 1)[:, None, None]
        cols = x[:, lo] * (1 - f.transpose(1, 0, 2)) + x[:, lo + 1] * f.transpose(1, 0, 2)  # [H, n, 3]
        return cols.transpose(1, 0, 2).reshape(len(self.at), -1)

    def _shift_errors(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Mean squared difference between columns a[k] and b[k - s] for s = -max_turn .. max_turn."""
        n, m = len(a), self.max_turn
        return np.array([np.mean((a[max(0, s):n + min(0, s)] - b[max(0, -s):n - max(0, s)]) ** 2)
                         for s in range(-m, m + 1)])

    def turn(self, before: np.ndarray, after: np.ndarray) -> int:
        """Degrees the view turned right from ``before`` to ``after`` (content moves left when turning right): the
        best match, so that unrelated frames give a random direction, as often one way as the other."""
        return int(self._shift_errors(self._columns(before), self._columns(after)).argmin()) - self.max_turn

    # -- walking: the view stretches vertically about the horizon (W) or shrinks (S) --
    def _stretch_errors(self, before: np.ndarray, after: np.ndarray, zooms) -> np.ndarray:
        """For each zoom z: how well ``before`` stretched vertically by sqrt(z) about the horizon matches ``after``
        shrunk by sqrt(z), each column against the best column of the other within ``slide`` of it (mean squared
        difference, both ways). Symmetric, so that unrelated frames favour neither direction."""
        h, w = before.shape[:2]
        c, m = h / 2, self.slide
        rows = np.arange(int(np.ceil(c - c / self.max_stretch)), int(c + c / self.max_stretch))  # valid for any z

        def resampled(frame, z):  # [R, W, 3]: the rows of ``frame`` stretched by z about the horizon
            src = np.clip(np.round(c + (rows + 0.5 - c) / z - 0.5).astype(int), 0, h - 1)
            return frame[src].astype(np.float32)

        def matched(a, b):  # [W - 2m]: each inner column of a against its best column of b nearby
            return np.min([np.square(a[:, m:w - m] - b[:, m + d:w - m + d]).mean((0, 2)) for d in range(-m, m + 1)], 0)

        errors = []
        for z in zooms:
            a, b = resampled(before, np.sqrt(z)), resampled(after, 1 / np.sqrt(z))
            errors.append(0.5 * (matched(a, b).mean() + matched(b, a).mean()))
        return np.array(errors)

    def stretch(self, before: np.ndarray, after: np.ndarray) -> float:
        """Vertical zoom about the horizon from ``before`` to ``after``: > 1 when the player advanced. Moving ahead
        by d brings everything ahead from depth Z to Z - d, so it grows by Z / (Z - d) about the horizon; a turn or a
        slide sideways moves things across (searched over) but leaves their depth, and so their height."""
        return float(self.stretches[int(np.argmin(self._stretch_errors(before, after, self.stretches)))])

    def _structured(self, before: np.ndarray, trial: Trial) -> bool:
        """Whether the frame before can show the motion: it must differ from itself moved as the trial expects (a
        blank wall filling the view does not)."""
        if trial.kind in ("W", "S"):
            z = [1.0, 1.2 ** trial.expect]
            change = np.diff(self._stretch_errors(before, before, z))[0]
        else:
            cols = self._columns(before)
            change = self._shift_errors(cols, cols)[self.max_turn + self.turn_degrees * trial.expect]
        return change > 10.0  # mean squared grey levels

    def score(self, before, after, trial):
        if not self._structured(before, trial):
            return None
        if trial.kind in ("W", "S"):
            return bool(np.log(self.stretch(before, after)) * trial.expect >= np.log(1.03))
        return self.turn(before, after) * trial.expect >= 3


PROBES = {"pong": PongProbe, "maze": MazeProbe}


def probe_for(game: str, width: int = 64, height: int = 64) -> Probe:
    """The control probe of the game called ``game`` at ``width`` x ``height`` pixels."""
    if game not in PROBES:
        raise InputError(f"no control probe for game {game!r}; there are probes for {', '.join(PROBES)}")
    return PROBES[game](width=width, height=height)
