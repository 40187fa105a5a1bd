"""What every game is: a deterministic frame source with an ActionSpace.

A frame source has ``reset(seed) -> frame`` and ``step(action) -> frame`` (uint8 [H, W, 3]). The fixed-tick loop
in ``runtime`` drives any frame source, the real games here now and the world model later. Simulation is numpy
only: the same seed and action sequence give the same frames on any machine.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from games.data.actions import ActionSpace
from games.data.errors import InputError


class Game(ABC):
    name: str = "game"
    fps: int = 30  # the game's own tick rate
    latency_ticks: int = 1  # step() calls from an action to the first frame that shows it (a world model: its window)
    # action key name -> pygame key names that hold it (resolved by runtime.input; games never import pygame)
    default_bindings: dict[str, tuple[str, ...]] = {}
    exclusive_keys: bool = False  # the keys are alternatives (one action each), held one at a time, not buttons

    def __init__(self, width: int = 64, height: int = 64):
        if width < 16 or height < 16 or width > 1024 or height > 1024:
            raise InputError(f"{self.name}: resolution {width}x{height} out of range (16..1024 pixels a side)")
        self.width, self.height = int(width), int(height)
        self.t = 0  # ticks since reset

    @property
    @abstractmethod
    def action_space(self) -> ActionSpace: ...

    @abstractmethod
    def reset(self, seed: int) -> np.ndarray:
        """Start a new episode from ``seed``; returns the first frame."""

    @abstractmethod
    def step(self, action: np.ndarray) -> np.ndarray:
        """Advance one tick holding ``action`` (a vector of ``action_space``); returns the next frame."""

    @abstractmethod
    def render(self) -> np.ndarray:
        """The current frame, uint8 [H, W, 3]."""

    def close(self) -> None:
        pass
