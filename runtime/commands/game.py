"""``rollingworld game``: play a real game in a window at its fixed tick rate (and record it).

The loop is ``runtime.player.play_source``, the one ``play`` uses too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from games.agents import make_agent
from runtime.config import RuntimeSettings, build_game
from runtime.player import play_source
from runtime.source import GameSource


@dataclass
class GameCommandConfig:
    """The settings of ``rollingworld game``."""
    game: Any = None  # configs/game/<name>.yaml (game=pong|maze|gym:<env id>); its own settings: +game.rooms=5
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)  # the window, its tick, the controls
    seed: int = 0  # episode seed (maze layout, serve direction)
    frames: Optional[int] = None  # stop after this many ticks (None = until the window is closed or Esc)
    record: bool = False  # save the session as a recording (a new episode in out)
    out: str = "recordings/${game.name}"  # the recording's folder
    chunk_frames: int = 256  # frames per recording chunk
    agent: Optional[str] = None  # random | heuristic: a scripted agent plays instead of the keyboard
    headless: bool = False  # render offscreen with EGL instead of opening a window
    video: Optional[str] = None  # also write the frames shown to this mp4 (4x nearest upscaling)


def run(cfg) -> int:
    game = build_game(cfg.game)
    agent = make_agent(cfg.agent, game, cfg.seed) if cfg.agent else None
    return play_source(GameSource(game), cfg, agent)
