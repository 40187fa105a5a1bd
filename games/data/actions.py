"""The controls of a game: named keys, an optional relative mouse, and the action vector that encodes them.

An action vector is float32 with the layout ``[keys..., mouse_dx, mouse_dy, buttons...]``:
- one multi-hot entry per named key (1.0 while held),
- if the game uses the mouse, the relative motion of one tick divided by ``mouse_scale`` and clipped to [-1, 1]
  (so ``mouse_scale`` pixels of motion in one tick is full deflection),
- one multi-hot entry per named mouse button.

The layout is stored in every recording and checkpoint (``to_dict`` / ``from_dict``) so that data and models carry
the controls they were made with. Pure numpy: shared by games, recordings and the world model.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from games.data.errors import InputError


class ActionSpaceError(InputError, ValueError):
    """An action vector or an action description that does not fit an ActionSpace."""


@dataclass(frozen=True)
class ActionSpace:
    keys: tuple[str, ...]  # named keys in vector order, e.g. ("W", "A", "S", "D")
    mouse: bool = False  # whether dx, dy of relative mouse motion follow the keys
    mouse_scale: float = 20.0  # pixels of motion in one tick that map to full deflection 1.0
    buttons: tuple[str, ...] = field(default_factory=tuple)  # mouse buttons after dx, dy, e.g. ("LEFT",)

    def __post_init__(self):
        object.__setattr__(self, "keys", tuple(str(k) for k in self.keys))
        object.__setattr__(self, "buttons", tuple(str(b) for b in self.buttons))
        names = self.keys + self.buttons
        if len(set(names)) != len(names):
            raise ActionSpaceError(f"duplicate key or button names in {names}")
        if self.buttons and not self.mouse:
            raise ActionSpaceError("mouse buttons need mouse=true")
        if self.mouse_scale <= 0:
            raise ActionSpaceError(f"mouse_scale must be positive, got {self.mouse_scale}")

    @property
    def size(self) -> int:
        """Length of the action vector."""
        return len(self.keys) + (2 + len(self.buttons) if self.mouse else 0)

    @property
    def names(self) -> tuple[str, ...]:
        """One name per vector entry."""
        mouse = ("mouse_dx", "mouse_dy") + tuple(f"button_{b}" for b in self.buttons) if self.mouse else ()
        return self.keys + mouse

    def noop(self) -> np.ndarray:
        return np.zeros(self.size, np.float32)

    def encode(self, keys=(), dx: float = 0.0, dy: float = 0.0, buttons=()) -> np.ndarray:
        """Vector for the held ``keys``, one tick of mouse motion in pixels and the held ``buttons``."""
        vec = self.noop()
        for k in keys:
            if k not in self.keys:
                raise ActionSpaceError(f"unknown key {k!r}; this game's keys are {list(self.keys)}")
            vec[self.keys.index(k)] = 1.0
        if self.mouse:
            n = len(self.keys)
            vec[n] = np.clip(dx / self.mouse_scale, -1.0, 1.0)
            vec[n + 1] = np.clip(dy / self.mouse_scale, -1.0, 1.0)
            for b in buttons:
                if b not in self.buttons:
                    raise ActionSpaceError(f"unknown mouse button {b!r}; this game's buttons are {list(self.buttons)}")
                vec[n + 2 + self.buttons.index(b)] = 1.0
        elif dx or dy or buttons:
            raise ActionSpaceError("this game has no mouse")
        return vec

    def decode(self, vec) -> dict:
        """Inverse of ``encode``: held keys, mouse motion in pixels, held buttons."""
        vec = self.validate(vec)
        n = len(self.keys)
        out = {"keys": [k for k, v in zip(self.keys, vec[:n]) if v > 0.5], "dx": 0.0, "dy": 0.0, "buttons": []}
        if self.mouse:
            out["dx"] = float(vec[n]) * self.mouse_scale
            out["dy"] = float(vec[n + 1]) * self.mouse_scale
            out["buttons"] = [b for b, v in zip(self.buttons, vec[n + 2:]) if v > 0.5]
        return out

    def held(self, vec, key: str) -> bool:
        return bool(vec[self.keys.index(key)] > 0.5)

    def mouse_motion(self, vec) -> tuple[float, float]:
        """Mouse motion of this tick in [-1, 1] units (0, 0 for games without a mouse)."""
        if not self.mouse:
            return 0.0, 0.0
        n = len(self.keys)
        return float(vec[n]), float(vec[n + 1])

    def validate(self, vec) -> np.ndarray:
        """``vec`` as a float32 vector of this space, or an ActionSpaceError saying why it is not one."""
        arr = np.asarray(vec, dtype=np.float32)
        if arr.shape != (self.size,):
            raise ActionSpaceError(f"action vector of shape {arr.shape} does not fit this action space "
                                   f"({self.size} entries: {', '.join(self.names)})")
        if not np.all(np.isfinite(arr)):
            raise ActionSpaceError("action vector has NaN or infinite entries")
        return arr

    def to_dict(self) -> dict:
        return {"keys": list(self.keys), "mouse": self.mouse, "mouse_scale": self.mouse_scale,
                "buttons": list(self.buttons)}

    @classmethod
    def from_dict(cls, d: dict) -> "ActionSpace":
        try:
            return cls(keys=tuple(d["keys"]), mouse=bool(d.get("mouse", False)),
                       mouse_scale=float(d.get("mouse_scale", 20.0)), buttons=tuple(d.get("buttons", ())))
        except (KeyError, TypeError, ValueError) as e:
            raise ActionSpaceError(f"not an action space description: {d!r} ({e})") from None
