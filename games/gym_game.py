"""Any Gymnasium environment as a Game, so that its play can be recorded and learned like the bundled games.

The environment must render ``rgb_array`` frames and take a ``Discrete(n)`` or a one-dimensional
``MultiBinary(n)`` action:
- ``Discrete(n)`` whose actions are named by joystick moves (``get_action_meanings()`` of the Atari games of
  ``ale_py``: NOOP, FIRE, UP, ..., DOWNLEFTFIRE): keys ``UP DOWN LEFT RIGHT FIRE`` (those the names use), held
  together like a joystick and its button; the action taken is the one whose moves are the largest part of the
  held keys (the first on ties), NOOP when nothing is held. Bound to the arrows / WASD and space.
- any other ``Discrete(n)``: one key per action, held one at a time (``exclusive_keys``), named as the
  environment names its actions where it does (``get_action_meanings``), else ``A0 .. A{n-1}``.
  The action taken is the held key with the largest entry (the first on ties); with no key held it is action 0,
  the usual no-op.
- ``MultiBinary(n)``: keys ``B0 .. B{n-1}``, one per bit.
One-per-action keys and bits are bound to 1 .. 9, 0 and then letters, skipping those of the play controls
(``KEY_ORDER``: 33 keys; more actions than that are left for ``runtime.bindings``).

Ids are Gymnasium's own: ``CartPole-v1``, a namespaced ``ALE/Breakout-v5``, or ``module:EnvId`` when a package
registers its environments when it is imported (``ale_py:ALE/Breakout-v5``). A missing package is a one-line error
that names what to install.

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

# default bindings of one-per-action keys, in order: digits, then letters row by row, without the play controls'
# keys (p pause, r reset, h HUD) nor the joystick's (w a s d)
KEY_ORDER = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "0", "q", "e", "t", "y", "u", "i", "o", "f", "g", "j", "k",
             "l", "z", "x", "c", "v", "b", "n", "m", "[", "]", ";", "'")
MOVES = ("UP", "DOWN", "LEFT", "RIGHT", "FIRE")  # joystick keys, in vector order
MOVE_BINDINGS = {"UP": ("up", "w"), "DOWN": ("down", "s"), "LEFT": ("left", "a"), "RIGHT": ("right", "d"),
                 "FIRE": ("space",)}
# packages that register a namespace of environments when imported: namespace -> (module, pip package)
KNOWN_NAMESPACES = {"ALE": ("ale_py", "ale-py"), "MiniGrid": ("minigrid", "minigrid"),
                    "BabyAI": ("minigrid", "minigrid"), "MiniWorld": ("miniworld", "miniworld"),
                    "highway": ("highway_env", "highway-env"), "craftax": ("craftax", "craftax")}


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
        if self._moves is not None:
            self.default_bindings = {k: MOVE_BINDINGS[k] for k in self._space.keys}
        else:
            self.default_bindings = {k: (key,) for k, key in zip(self._space.keys, KEY_ORDER)}
        self.exclusive_keys = self._discrete and self._moves is None
        self.seed = 0  # the reset seed; episode i after it starts from a seed derived from (seed, i)
        self.episode = 0  # episodes begun since reset
        self._done = False  # the last step ended an episode: the next step begins a new one
        self._frame = None

    def _action_space_of(self, gym, space) -> ActionSpace:
        """The keys of a Discrete or 1-D MultiBinary space; anything else is an InputError."""
        spaces = gym.spaces
        self._discrete, self._moves = isinstance(space, spaces.Discrete), None
        if self._discrete:
            self._start = int(space.start)
            names = _action_names(self.env, int(space.n))
            self._moves = _joystick_moves(names)
            if self._moves is not None:
                used = set().union(*self._moves)
                return ActionSpace(keys=tuple(m for m in MOVES if m in used))
            return ActionSpace(keys=names or tuple(f"A{i}" for i in range(int(space.n))))
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
        if self._moves is not None:
            held = {k for k, v in zip(self._space.keys, vec) if v > 0.5}
            fits = [len(m) if m <= held else -1 for m in self._moves]  # the largest named move inside the held keys
            return self._start + int(np.argmax(fits))
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


def _action_names(env, n: int) -> tuple[str, ...] | None:
    """The environment's names of its ``n`` actions (``get_action_meanings()``), upper case, when it has them and
    they are distinct words; else None."""
    meanings = getattr(env.unwrapped, "get_action_meanings", None)
    try:
        names = tuple(str(m).strip().upper().replace(" ", "_") for m in meanings()) if callable(meanings) else ()
    except Exception:  # an environment whose names need a state it has not reached
        return None
    ok = len(names) == n and len(set(names)) == n and all(m and m.replace("_", "").isalnum() for m in names)
    return names if ok else None


def _joystick_moves(names: tuple[str, ...] | None) -> list[frozenset] | None:
    """The moves each action names (``frozenset({"UP", "FIRE"})`` for UPFIRE, empty for NOOP), when every name is
    made of joystick moves and no two are the same moves; else None."""
    if not names:
        return None
    moves = []
    for name in names:
        rest, found = name, set()
        if rest == "NOOP":
            rest = ""
        while rest:
            move = next((m for m in MOVES if rest.startswith(m)), None)
            if move is None:
                return None
            found.add(move)
            rest = rest[len(move):]
        moves.append(frozenset(found))
    return moves if len(set(moves)) == len(moves) else None


def _missing_package(env_id: str, error: Exception) -> str | None:
    """What to install for ``env_id`` when the package that registers it is missing, or None."""
    import importlib.util

    if ":" in env_id:
        module = env_id.split(":", 1)[0]
        top = module.split(".")[0]
        if top and importlib.util.find_spec(top) is None:
            return f"its module {module!r} is not installed (pip install {top.replace('_', '-')})"
        return None
    namespace = env_id.split("/", 1)[0] if "/" in env_id else None
    if namespace is not None and "namespace" in str(error).lower():
        module, package = KNOWN_NAMESPACES.get(namespace, (None, None))
        if module is None:
            return (f"no installed package has registered the namespace {namespace!r}: install the one that "
                    f"provides it and name its module too, game=gym:<module>:{env_id}")
        if importlib.util.find_spec(module) is None:
            return f"the namespace {namespace!r} comes with the package {package} (pip install {package})"
        return f"the namespace {namespace!r} is registered when {module} is imported: game=gym:{module}:{env_id}"
    if "doesn't exist" in str(error) and "version" not in str(error).lower():
        return (f"{str(error).splitlines()[0]} If a package registers it when imported, name its module too: "
                f"game=gym:<module>:{env_id}")
    return None


def _make(gym, env_id: str, make_kwargs: dict):
    """``gym.make`` with rgb_array rendering; unknown ids, missing packages and failing constructors become
    one-line InputErrors."""
    try:
        with warnings.catch_warnings():  # an env without rgb_array gets our one-line error instead of gym's warning
            warnings.filterwarnings("ignore", message=".*not in the possible render_modes")
            return gym.make(env_id, render_mode="rgb_array", **make_kwargs)
    except (gym.error.Error, TypeError, ValueError, ImportError) as e:  # unknown id, namespace, version, module
        why = _missing_package(env_id, e) or str(e).splitlines()[0]
        raise InputError(f"cannot make Gymnasium environment {env_id!r}: {why}") from None
