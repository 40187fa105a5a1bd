"""Keyboard and mouse -> the action vector of an ActionSpace.

Held keys are tracked from KEYDOWN/KEYUP events (not from ``pygame.key.get_pressed``), so events posted to pygame's
queue by a test or a script act exactly like a player's. Mouse motion is accumulated between ticks and turned into
one tick's relative motion when the loop asks for the action.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from games.actions import ActionSpace
from games.errors import InputError

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

# pygame mouse button numbers -> ActionSpace button names
MOUSE_BUTTONS = {1: "LEFT", 2: "MIDDLE", 3: "RIGHT"}


def resolve_bindings(action_space: ActionSpace, defaults: dict, overrides: dict | None = None) -> dict[int, str]:
    """pygame key code -> action key name, from a game's default bindings updated by the user's ``overrides``.

    ``overrides`` maps an action key to one pygame key name or a list of them (``{UP: [up, k]}``); a binding for a
    key the action space does not have, or to a key name pygame does not know, is an InputError.
    """
    import pygame

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
                with warnings.catch_warnings():  # key_code needs no initialised display, whatever pygame says
                    warnings.simplefilter("ignore")
                    codes[pygame.key.key_code(str(name))] = key
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
