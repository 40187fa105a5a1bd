"""Any Gymnasium environment as a Game, so that its play can be recorded and learned like the bundled games.

The environment must render ``rgb_array`` frames and take a ``Discrete(n)`` or a one-dimensional
``MultiBinary(n)`` action:
- ``Discrete(n)``: keys ``A0 .. A{n-1}``, one per action. The action taken is the held key with the largest entry
  (the first on ties); with no key held it is action 0, the usual no-op.
- ``MultiBinary(n)``: keys ``B0 .. B{n-1}``, one per bit.
Frames are the environment's renders box-filtered to ``width x height``. When an episode ends (terminated or
truncated) the ending frame is still returned; the next ``step`` starts a new episode from a seed derived from the
``reset`` seed, so a recording runs on for as long as it is driven and stays deterministic.

Gymnasium is imported only when a GymGame is made: the rest of ``games`` works without it.
"""
from __future__ import annotations

import warnings

import numpy as np
from PIL import Image

from games.data.actions import ActionSpace
from games.base import Game
from games.data.errors import InputError

NUMBER_KEYS = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "0")  # default bindings of Discrete actions 0..9


class GymGame(Game):
    """A Gymnasium environment (``gymnasium.make(env_id, render_mode="rgb_array", **make_kwargs)``) as a Game."""

    def __init__(self, env_id: str, width: int = 64, height: int = 64, **make_kwargs):
        self.name = str(env_id)
        super().__init__(width, height)
        try:
            import gymnasium as gym
        except ImportError:
            raise InputError("recording Gymnasium environments needs the gymnasium package "
                             "(pip install gymnasium)") from None
        self.env = _make(gym, env_id, make_kwargs)
        try:
            self._space = self._action_space_of(gym, self.env.action_space)
            modes = self.env.metadata.get("render_modes") or []
            if "rgb_array" not in modes:
                raise InputError(f"{env_id} cannot render rgb_array frames (its render modes: {list(modes)})")
        except Exception:
            self.env.close()
            raise
        self.fps = int(self.env.metadata.get("render_fps") or 30)
        self.default_bindings = ({k: (NUMBER_KEYS[i],) for i, k in enumerate(self._space.keys[:10])}
                                 if self._discrete else {})
        self.seed = 0  # the reset seed; episode i after it starts from a seed derived from (seed, i)
        self.episode = 0  # episodes begun since reset
        self._done = False  # the last step ended an episode: the next step begins a new one
        self._frame = None

    def _action_space_of(self, gym, space) -> ActionSpace:
        """The keys of a Discrete or 1-D MultiBinary space; anything else is an InputError."""
        spaces = gym.spaces
        self._discrete = isinstance(space, spaces.Discrete)
        if self._discrete:
            self._start = int(space.start)
            return ActionSpace(keys=tuple(f"A{i}" for i in range(int(space.n))))
        if isinstance(space, spaces.MultiBinary) and len(space.shape) == 1:
            return ActionSpace(keys=tuple(f"B{i}" for i in range(int(space.shape[0]))))
        raise InputError(f"{self.name}: action space {space} is not supported "
                         "(only Discrete(n) and one-dimensional MultiBinary(n) map to keys)")

    @property
    def action_space(self) -> ActionSpace:
        return self._space

    def to_env_action(self, action: np.ndarray):
        """The environment's action for an action vector of ``action_space``."""
        vec = self._space.validate(action)
        if self._discrete:
            held = vec > 0.5
            index = int(np.argmax(np.where(held, vec, -np.inf))) if held.any() else 0  # none held: action 0
            return self._start + index
        return (vec > 0.5).astype(np.int8)

    def reset(self, seed: int) -> np.ndarray:
        self.seed, self.episode, self.t = int(seed), 0, 0
        return self._begin_episode()

    def step(self, action: np.ndarray) -> np.ndarray:
        if self._frame is None:
            raise RuntimeError("step before reset")
        env_action = self.to_env_action(action)
        self.t += 1
        if self._done:  # the previous step ended an episode: this tick shows the next one's first frame
            self.episode += 1
            return self._begin_episode()
        _, _, terminated, truncated, _ = self.env.step(env_action)
        self._done = bool(terminated or truncated)
        self._frame = self._render()
        return self._frame

    def render(self) -> np.ndarray:
        if self._frame is None:
            raise RuntimeError("render before reset")
        return self._frame

    def close(self) -> None:
        self.env.close()

    def _begin_episode(self) -> np.ndarray:
        seed = self.seed if self.episode == 0 else _derived_seed(self.seed, self.episode)
        self.env.reset(seed=seed)
        self._done = False
        self._frame = self._render()
        return self._frame

    def _render(self) -> np.ndarray:
        """The environment's current render as uint8 [height, width, 3]."""
        img = self.env.render()
        img = np.asarray(img) if img is not None else None
        if img is None or img.ndim != 3 or img.shape[2] not in (3, 4):
            shape = None if img is None else img.shape
            raise InputError(f"{self.name} did not render an RGB frame (got {shape}); "
                             "it needs render_mode='rgb_array'")
        img = np.ascontiguousarray(img[..., :3]).astype(np.uint8, copy=False)
        if img.shape[:2] == (self.height, self.width):
            return img
        return np.asarray(Image.fromarray(img).resize((self.width, self.height), Image.BOX))


def _derived_seed(seed: int, episode: int) -> int:
    """A seed for the ``episode``-th automatic reset after ``reset(seed)``: distinct and reproducible."""
    return int(np.random.SeedSequence([seed, episode]).generate_state(1)[0])


def _make(gym, env_id: str, make_kwargs: dict):
    """``gym.make`` with rgb_array rendering; unknown ids and failing constructors become one-line InputErrors."""
    try:
        with warnings.catch_warnings():  # an env without rgb_array gets our one-line error instead of gym's warning
            warnings.filterwarnings("ignore", message=".*not in the possible render_modes")
            return gym.make(env_id, render_mode="rgb_array", **make_kwargs)
    except gym.error.Error as e:  # unknown id, namespace or version; a missing optional dependency
        raise InputError(f"cannot make Gymnasium environment {env_id!r}: {str(e).splitlines()[0]}") from None
    except (TypeError, ValueError, ImportError, ModuleNotFoundError) as e:
        raise InputError(f"cannot make Gymnasium environment {env_id!r}: {e}") from None
