"""Keyboard and mouse -> the action vector of an ActionSpace.

Held keys are tracked from KEYDOWN/KEYUP events (not from ``pygame.key.get_pressed``), so events posted to pygame's
queue by a test or a script act exactly like a player's. Mouse motion is accumulated between ticks and turned into
one tick's relative motion when the loop asks for the action. The play controls (pause, reset, HUD, ...) are keys
of their own, ``Controls``, that may not collide with the game's bindings.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from games.data.actions import ActionSpace
from games.data.errors import InputError

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

# pygame mouse button numbers -> ActionSpace button names
MOUSE_BUTTONS = {1: "LEFT", 2: "MIDDLE", 3: "RIGHT"}


# play control -> what it does, in the order the help lists them
CONTROLS = {"quit": "quit", "pause": "pause / resume", "reset": "restart (Shift: a new start)",
            "hud": "show / hide the HUD", "help": "show / hide this help", "screenshot": "save a screenshot (PNG)",
            "fullscreen": "fullscreen on / off"}


def key_code(name: str) -> int:
    """The pygame key code of a key name (``up``, ``w``, ``f1``, ``?``); ValueError if pygame does not know it."""
    import pygame

    with warnings.catch_warnings():  # key_code needs no initialised display, whatever pygame says
        warnings.simplefilter("ignore")
        return pygame.key.key_code(str(name))


def resolve_bindings(action_space: ActionSpace, defaults: dict, overrides: dict | None = None) -> dict[int, str]:
    """pygame key code -> action key name, from a game's default bindings updated by the user's ``overrides``.

    ``overrides`` maps an action key to one pygame key name or a list of them (``{UP: [up, k]}``); a binding for a
    key the action space does not have, or to a key name pygame does not know, is an InputError.
    """
    names: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in (defaults or {}).items()}
    for key, value in (overrides or {}).items():
        if key not in action_space.keys:
            raise InputError(f"binding for {key!r}, which is not a key of this game ({', '.join(action_space.keys)})")
        names[key] = (value,) if isinstance(value, str) else tuple(value)
    codes: dict[int, str] = {}
    for key, key_names in names.items():
        if key not in action_space.keys:
            continue
        for name in key_names:
            try:
                codes[key_code(name)] = key
            except ValueError:
                raise InputError(f"unknown key name {name!r} in the binding for {key!r} "
                                 "(use pygame key names such as up, w, space, left shift)") from None
    return codes


class InputMapper:
    """Turns pygame events into action vectors, one per tick."""

    def __init__(self, action_space: ActionSpace, bindings: dict[int, str]):
        self.action_space = action_space
        self.bindings = bindings  # pygame key code -> action key name
        self.held_codes: set[int] = set()
        self.held_buttons: set[str] = set()
        self._dx = 0.0
        self._dy = 0.0

    def handle(self, event) -> bool:
        """Update the held state from one event; True if the event was game input."""
        import pygame

        if event.type == pygame.KEYDOWN and event.key in self.bindings:
            self.held_codes.add(event.key)
        elif event.type == pygame.KEYUP and event.key in self.bindings:
            self.held_codes.discard(event.key)
        elif event.type == pygame.MOUSEMOTION and self.action_space.mouse:
            self._dx += event.rel[0]
            self._dy += event.rel[1]
        elif event.type in (pygame.MOUSEBUTTONDOWN, pygame.MOUSEBUTTONUP) and self.action_space.mouse:
            name = MOUSE_BUTTONS.get(event.button)
            if name not in self.action_space.buttons:
                return False
            (self.held_buttons.add if event.type == pygame.MOUSEBUTTONDOWN else self.held_buttons.discard)(name)
        elif event.type == pygame.WINDOWFOCUSLOST:
            self.release_all()  # keys released while the window is not focused never send KEYUP
            return False
        else:
            return False
        return True

    @property
    def held_keys(self) -> list[str]:
        """Action key names held now, in action-space order."""
        held = {self.bindings[c] for c in self.held_codes}
        return [k for k in self.action_space.keys if k in held]

    def action(self) -> np.ndarray:
        """This tick's action vector; consumes the mouse motion accumulated since the last call."""
        dx, dy = (self._dx, self._dy) if self.action_space.mouse else (0.0, 0.0)
        self._dx = self._dy = 0.0
        buttons = sorted(self.held_buttons) if self.action_space.mouse else ()
        return self.action_space.encode(self.held_keys, dx, dy, buttons)

    def release_all(self) -> None:
        self.held_codes.clear()
        self.held_buttons.clear()
        self._dx = self._dy = 0.0


class Controls:
    """The play controls: control name (a key of ``CONTROLS``) -> the pygame keys that trigger it.

    A key the game binds cannot also be a control (``bindings``: pygame key code -> action key). A one-character
    name that is not a letter or digit (``?``) also matches the character typed, so Shift+/ is ``?`` too.
    """

    def __init__(self, keys: dict, bindings: dict[int, str] | None = None):
        self.keys: dict[str, tuple[str, ...]] = {}
        self._codes: dict[int, str] = {}
        self._chars: dict[str, str] = {}
        for control, value in (keys or {}).items():
            if control not in CONTROLS:
                raise InputError(f"unknown play control {control!r} (controls: {', '.join(CONTROLS)})")
            names = (value,) if isinstance(value, str) else tuple(str(v) for v in value or ())
            self.keys[control] = names
            for name in names:
                try:
                    code = key_code(name)
                except ValueError:
                    raise InputError(f"unknown key name {name!r} for the play control {control!r} "
                                     "(use pygame key names such as p, f1, escape)") from None
                if code in (bindings or {}):
                    raise InputError(f"key {name!r} is both the play control {control!r} and bound to the game key "
                                     f"{bindings[code]!r}: change runtime.controls.{control} or runtime.bindings")
                self._codes[code] = control
                if len(name) == 1 and not name.isalnum():
                    self._chars[name] = control

    def match(self, event) -> str | None:
        """The control a KEYDOWN event triggers, or None."""
        return self._codes.get(event.key) or self._chars.get(getattr(event, "unicode", "") or "")
