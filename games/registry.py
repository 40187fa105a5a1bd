"""The registry that names the games: ``make_game("pong")`` and ``make_game("maze")`` build the games written here,
``make_game("gym:<env id>")`` wraps a Gymnasium environment (imported only when asked for)."""
from __future__ import annotations

import inspect

from games.base import Game
from games.data.errors import InputError
from games.maze import Maze
from games.pong import Pong

GAMES: dict[str, type[Game]] = {"pong": Pong, "maze": Maze}


def make_game(name: str, width: int = 64, height: int = 64, **params) -> Game:
    """The game called ``name`` at ``width`` x ``height`` pixels; ``params`` are the game's own settings."""
    if name.startswith("gym:"):
        from games.gym_game import GymGame
        return GymGame(env_id=name[4:], width=width, height=height, **params)
    if name not in GAMES:
        raise InputError(f"unknown game {name!r}; choose from pong, maze, gym:<env id>")
    cls = GAMES[name]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "width", "height")]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise InputError(f"unknown setting(s) {', '.join(unknown)} for game {name!r}; "
                         f"it takes {', '.join(allowed) or 'none'}")
    return cls(width=width, height=height, **params)


def make_named_game(name, width: int = 64, height: int = 64) -> Game:
    """The game a file names (a checkpoint's metadata): only the games written here. A name from a file never
    chooses code to import, so a Gymnasium game (``gym:...``, which may name a module) is made only when the user
    asks for it on the command line."""
    if str(name) not in GAMES:
        raise InputError(f"the file names the game {name!r}, which is not one written here ({', '.join(GAMES)}); "
                         "a Gymnasium game is made only when named on the command line (game=gym:...)")
    return make_game(str(name), width=width, height=height)
