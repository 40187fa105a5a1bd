"""``rollingworld play ckpt=FILE``: play a world model in a window at a fixed tick."""
from __future__ import annotations

import os

import numpy as np

from games.errors import InputError


class WorldSource:
    """A world model as a frame source for the play loop: ``reset(seed)`` starts from the game's start screen."""

    def __init__(self, ckpt: str, engine_cfg, threads: int):
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # measured: spinning OpenMP threads collapse
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        from worldmodel.engine import WorldSession

        self.session = WorldSession.from_checkpoint(ckpt, engine_cfg)
        meta = self.session.metadata
        self.game_name = meta["provenance"].get("game", "world")
        self.name = f"{self.game_name} (world model)"
        self.height, self.width = self.session.frame_size
        self.fps = int(meta.get("frame", {}).get("fps", 30))
        self.action_space = self.session.action_space
        self.default_bindings = {}
        try:
            from games import make_game

            self._game = make_game(self.game_name, width=self.width, height=self.height)
            self.default_bindings = self._game.default_bindings
        except InputError:
            self._game = None
        self.t = 0  # for scripted agents

    def reset(self, seed: int) -> np.ndarray:
        if self._game is None:
            raise InputError(f"the checkpoint's game {self.game_name!r} is not one of ours, so it has no start "
                             "screen: use rollingworld dream start=IMAGE")
        self.t = 0
        return self.session.reset(self._game.reset(seed), seed=seed)

    def step(self, action) -> np.ndarray:
        self.t += 1
        return self.session.step(action)


def run(cfg) -> int:
    from runtime.commands.game import play_source
    from runtime.commands.world import _engine_config

    source = WorldSource(cfg.ckpt, _engine_config(cfg), int(cfg.threads))
    agent = None
    if cfg.agent:
        if cfg.agent != "random":
            raise InputError("a world model can only be driven by agent=random (a heuristic needs the real game)")
        from games.agents import RandomAgent

        agent = RandomAgent(source, int(cfg.seed))
    return play_source(source, cfg, agent)
