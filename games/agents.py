"""Scripted agents that play the games to collect recordings.

``make_agent(name, game, seed)`` returns an agent whose ``act()`` reads the game's current state and returns the
action vector (float32, the layout of ``game.action_space``) to hold for the next tick. Every agent owns its own
generator, so a seed and the game's sequence of states fix its actions.

- ``random``: sticky random actions for any game (only ``game.action_space`` is used, so gym wrappers work too).
- ``heuristic``: plays like a person would, with mistakes, so that recordings cover both skilled play and the
  states that mistakes lead to. Pong: tracks the ball with reaction noise and the odd miss, on keys in some rallies
  and the mouse in others. Maze: explores corridor by corridor, picks turns both ways at junctions (preferring
  places it has seen less), bumps into walls, looks around, steps back, strafes, turns with keys and with the mouse.
"""
from __future__ import annotations

import numpy as np

from games.base import Game
from games.data.errors import InputError
from games.maze import KEY_TURN, MOUSE_TURN, Maze
from games.pong import Pong


class Agent:
    """Base of the scripted agents: holds the game and the agent's own generator."""

    def __init__(self, game: Game, seed: int):
        self.game = game
        self.space = game.action_space
        self.rng = np.random.default_rng(seed)
        self._last_t = None

    def act(self) -> np.ndarray:
        """The action vector [action_space.size] float32 to hold for the next tick."""
        if self._last_t is None or self.game.t < self._last_t:
            self.new_episode()  # the game was reset since the last call
        self._last_t = self.game.t
        return self.space.validate(self._act())

    def new_episode(self) -> None:
        pass

    def _act(self) -> np.ndarray:
        raise NotImplementedError


class RandomAgent(Agent):
    """Holds a random key combination and mouse motion for a geometric number of ticks (mean ``1 / change``). In a
    game whose keys are alternatives (``Game.exclusive_keys``: one per action of a ``Discrete`` environment) it
    holds one key, each as likely."""

    def __init__(self, game: Game, seed: int, key_prob: float = 0.3, change: float = 0.15):
        super().__init__(game, seed)
        self.key_prob, self.change = key_prob, change
        self._held, self._left = self.space.noop(), 0

    def _act(self) -> np.ndarray:
        if self._left <= 0:
            n = len(self.space.keys)
            vec = self.space.noop()
            if getattr(self.game, "exclusive_keys", False):
                vec[int(self.rng.integers(n))] = 1.0
            else:
                vec[:n] = self.rng.random(n) < self.key_prob
            if self.space.mouse:
                if self.rng.random() < 0.5:  # half of the time the mouse moves, at a random speed
                    vec[n:n + 2] = np.clip(self.rng.normal(0, 0.5, 2), -1, 1)
                vec[n + 2:] = self.rng.random(len(self.space.buttons)) < 0.2
            self._held, self._left = vec, int(self.rng.geometric(self.change))
        self._left -= 1
        return self._held.copy()


class PongAgent(Agent):
    """Tracks where the ball will cross the paddle's line, re-estimated every few ticks with noise.

    Each rally it draws: an aim (where on the paddle to meet the ball, which sets the return angle), a blunder with
    probability ``blunder`` (aims a paddle's length off, so it misses), and whether to steer with keys or mouse.
    """

    def __init__(self, game: Pong, seed: int, blunder: float = 0.15, noise: float = 1.5):
        super().__init__(game, seed)
        self.blunder, self.noise = blunder, noise

    def new_episode(self) -> None:
        self._target, self._next_look, self._incoming = self.game.height / 2, 0, False
        self._aim, self._use_mouse = 0.0, False

    def _predict(self) -> float:
        """Where the ball's centre will be when it reaches the paddle's face, folding in wall bounces."""
        g = self.game
        (bx, by), (vx, vy) = g.ball_pos, g.ball_vel
        face = g.paddle_x[0] + g.paddle_w + g.ball_size / 2
        y = by + vy * max(0.0, (bx - face) / -vx)
        lo, hi = g.ball_size / 2, g.height - g.ball_size / 2
        period = 2 * (hi - lo)
        y = (y - lo) % period
        return lo + (period - y if y > hi - lo else y)

    def _act(self) -> np.ndarray:
        g = self.game
        sy = g.height / 64
        incoming = g.ball_vel[0] < 0
        if incoming and not self._incoming:  # a new rally toward the player
            self._aim = self.rng.uniform(-0.55, 0.55) * g.paddle_h
            if self.rng.random() < self.blunder:
                self._aim += self.rng.choice([-1, 1]) * self.rng.uniform(0.9, 1.3) * g.paddle_h
            self._use_mouse = bool(self.rng.random() < 0.5)
        self._incoming = incoming
        if g.t >= self._next_look:  # reaction time: the estimate is only refreshed every few ticks
            self._next_look = g.t + int(self.rng.integers(2, 6))
            if incoming:
                self._target = self._predict() - self._aim + self.rng.normal(0, self.noise * sy)
            else:  # drift back toward the middle while the ball is away
                self._target = g.height / 2 + self.rng.normal(0, 6 * sy)
        error = self._target - g.paddle_y
        if self._use_mouse:
            dy = np.clip(error / (4.0 * sy) * self.rng.uniform(0.4, 0.9), -1, 1)
            return self.space.encode(dx=self.rng.normal(0, 1.0), dy=float(dy) * self.space.mouse_scale)
        dead = 1.5 * sy
        return self.space.encode(keys=["UP"] if error < -dead else ["DOWN"] if error > dead else [])


class MazeAgent(Agent):
    """Walks from cell centre to neighbouring cell centre, choosing less visited neighbours at junctions.

    Each leg of the walk draws how to steer: arrow keys or the mouse, and whether to keep to the middle of the
    corridor by strafing. Blocked for a while, it steps back and plans again from where it stands. Now and then it
    breaks off into a short behaviour: walking straight ahead (into walls, then backing off), looking around,
    strafing or stepping back.
    """

    BEHAVIOURS = {"bump": 0.004, "look": 0.004, "strafe": 0.003, "back": 0.001}  # chance a tick to start one

    def new_episode(self) -> None:
        self._visits: dict[tuple[int, int], int] = {}
        self._target, self._prev = None, None
        self._behaviour, self._left = None, 0
        self._use_mouse, self._centre, self._turn_sign = False, False, 1
        self._still, self._last_pos, self._walking = 0, None, False

    def _walkable(self, r: int, c: int) -> bool:
        g = self.game
        if g.grid[r, c]:
            return False
        return not any(int(py) == r and int(px) == c for px, py in g.pillars)

    def _next_cell(self, here):
        """The next cell to walk to: an open neighbour, not back where it came from unless it must."""
        options = [(here[0] + dr, here[1] + dc) for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1))
                   if self._walkable(here[0] + dr, here[1] + dc)]
        if len(options) > 1 and self._prev in options:
            options.remove(self._prev)
        if not options:
            return here
        weights = np.array([1.0 / (1 + self._visits.get(o, 0)) ** 2 for o in options])
        return options[self.rng.choice(len(options), p=weights / weights.sum())]

    def _start(self, behaviour: str, ticks: int) -> np.ndarray:
        self._behaviour, self._left = behaviour, ticks
        self._turn_sign = int(self.rng.choice([-1, 1]))
        return self._behave()

    def _act(self) -> np.ndarray:
        g = self.game
        pos, here = np.array(g.player_pos), g.cell
        self._visits.setdefault(here, 0)
        blocked = self._walking and self._last_pos is not None and np.allclose(pos, self._last_pos)
        self._still = self._still + 1 if blocked else 0
        self._last_pos, self._walking = pos, False
        if self._behaviour is not None:
            self._left -= 1
            if self._left >= 0:
                return self._behave()
            ended, self._behaviour, self._target, self._prev = self._behaviour, None, here, None  # then re-centre
            if ended == "bump":  # walked into whatever was ahead: step back from it
                return self._start("back", int(self.rng.integers(3, 9)))
        if self._still > 8:  # pressed against something: back off, then plan again from here
            self._still = 0
            return self._start("back", int(self.rng.integers(3, 9)))
        for name, p in self.BEHAVIOURS.items():
            if self.rng.random() < p:
                return self._start(name, int(self.rng.integers(6, 25)))
        if self._target is None or np.hypot(*(pos - (self._target[1] + 0.5, self._target[0] + 0.5))) < 0.25:
            start = here if self._target is None else self._target
            self._prev, self._target = start, self._next_cell(start)
            self._visits[self._target] = self._visits.get(self._target, 0) + 1
            if self.rng.random() < 0.3:
                self._use_mouse = not self._use_mouse
            self._centre = bool(self.rng.random() < 0.5)
        goal = np.array([self._target[1] + 0.5, self._target[0] + 0.5])
        desired = np.arctan2(goal[1] - pos[1], goal[0] - pos[0])
        error = (desired - g.player_angle + np.pi) % (2 * np.pi) - np.pi
        keys = ["W"] if abs(error) < np.radians(35) else []
        self._walking = bool(keys)
        if keys and self._centre and self._prev not in (None, self._target):
            # Distance to the right of the line between the two cell centres; strafe back toward it.
            line = np.array([self._target[1] - self._prev[1], self._target[0] - self._prev[0]], float)
            off = line[0] * (pos[1] - goal[1]) - line[1] * (pos[0] - goal[0])
            if abs(off) > 0.06:
                keys.append("A" if off > 0 else "D")
        return self._steer(error, keys)

    def _steer(self, error: float, keys: list) -> np.ndarray:
        """Turns by ``error`` radians, with keys or with the mouse (with a shaky hand)."""
        if self._use_mouse:
            dx = np.clip(error / MOUSE_TURN * self.rng.uniform(0.5, 1.0) + self.rng.normal(0, 0.05), -1, 1)
            return self.space.encode(keys=keys, dx=float(dx) * self.space.mouse_scale, dy=self.rng.normal(0, 1.0))
        if abs(error) > KEY_TURN / 2:
            keys = keys + ["RIGHT" if error > 0 else "LEFT"]
        return self.space.encode(keys=keys)

    def _behave(self) -> np.ndarray:
        """One tick of the current short behaviour."""
        turn = "RIGHT" if self._turn_sign > 0 else "LEFT"
        if self._behaviour == "bump":  # straight ahead, whatever is there
            return self.space.encode(keys=["W"])
        if self._behaviour == "look":  # look around one way
            if self._use_mouse:
                return self.space.encode(dx=self._turn_sign * self.rng.uniform(0.3, 1.0) * self.space.mouse_scale)
            return self.space.encode(keys=[turn])
        if self._behaviour == "back":
            return self.space.encode(keys=["S"])
        return self.space.encode(keys=["W", "D" if self._turn_sign > 0 else "A"])  # strafe while walking


HEURISTICS: dict[type, type[Agent]] = {Pong: PongAgent, Maze: MazeAgent}


def agent_name(name: str, game: Game) -> str:
    """``auto`` is the game's heuristic agent where it has one, else random; other names stay as they are."""
    if name == "auto":
        return "heuristic" if any(isinstance(game, cls) for cls in HEURISTICS) else "random"
    return name


def make_agent(name: str, game: Game, seed: int = 0) -> Agent:
    """The scripted agent ``name`` ("random", "heuristic" or "auto": ``agent_name``) playing ``game``, seeded with
    ``seed``."""
    name = agent_name(name, game)
    if name == "random":
        return RandomAgent(game, seed)
    if name == "heuristic":
        for cls, agent in HEURISTICS.items():
            if isinstance(game, cls):
                return agent(game, seed)
        raise InputError(f"no heuristic agent for game {game.name!r}; choose from random (any game), "
                         f"heuristic (pong, maze)")
    raise InputError(f"unknown agent {name!r}; choose from auto, random, heuristic")
