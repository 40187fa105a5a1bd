"""``rollingworld game``: play a real game in a window at its fixed tick rate (and record it).

``play_source`` is the loop both ``game`` and ``play`` use: window (or EGL), input mapping and play controls,
optional scripted agent, recording and video.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import OmegaConf

from games.agents import make_agent
from games.registry import make_game
from runtime.config import RuntimeSettings
from runtime.display import OffscreenDisplay, Window
from runtime.input import Controls, InputMapper, resolve_bindings
from runtime.player import PlaySession, log as play_log
from runtime.source import FrameSource, GameSource


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


def build_game(game_cfg):
    """The game a ``game`` config group entry describes."""
    params = {k: v for k, v in OmegaConf.to_container(game_cfg).items() if k not in ("name", "width", "height")}
    name = f"gym:{params.pop('env_id')}" if game_cfg.name == "gym" else game_cfg.name
    return make_game(name, width=int(game_cfg.width), height=int(game_cfg.height), **params)


def run(cfg) -> int:
    game = build_game(cfg.game)
    agent = make_agent(cfg.agent, game, cfg.seed) if cfg.agent else None
    return play_source(GameSource(game), cfg, agent)


def play_source(source: FrameSource, cfg, agent=None) -> int:
    """Play any frame source (a game through ``GameSource``, a world model through ``WorldSource``) with the
    settings of ``cfg`` (a ``GameCommandConfig``, or ``play``'s ``PlayConfig`` with ``record`` None)."""
    rt = cfg.runtime
    size = (source.width * rt.scale, source.height * rt.scale)
    bindings = resolve_bindings(source.action_space, source.default_bindings,
                                OmegaConf.to_container(rt.bindings) if rt.bindings else None)
    controls = Controls(OmegaConf.to_container(rt.controls) if rt.controls else {}, bindings)
    if not play_log.handlers:  # overruns and resets are worth a line on stderr while playing
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("rollingworld: %(message)s"))
        play_log.addHandler(handler)
        play_log.setLevel(logging.INFO)
    if cfg.headless:
        display = OffscreenDisplay(size, filter=rt.filter)
    else:
        display = Window(size, title=f"rollingworld: {source.name}", filter=rt.filter,
                         fullscreen=rt.fullscreen, vsync=rt.vsync)
    writer = episode = None
    if cfg.record:
        from games.data.writer import RecordingWriter

        writer = RecordingWriter(cfg.out, game=source.name, action_space=source.action_space, fps=source.fps,
                                 height=source.height, width=source.width, chunk_frames=cfg.chunk_frames)
        episode = writer.begin_episode(seed=cfg.seed, agent=cfg.agent or "human")
    video = None
    if cfg.video:
        from games.data.video import VideoWriter

        video = VideoWriter(cfg.video, fps=rt.fps or source.fps, scale=4)

    recorded = 0

    def on_frame(frame, action):
        nonlocal recorded
        if episode is not None:
            episode.append(frame, action)
            recorded += 1
        if video is not None:
            video.write(frame)

    def on_reset(seed):
        nonlocal episode
        if episode is not None:  # the player restarted: what follows is a new episode, not a jump in this one
            episode.close()
            episode = writer.begin_episode(seed=seed, agent=cfg.agent or "human")

    try:
        session = PlaySession(source, display, InputMapper(source.action_space, bindings), fps=rt.fps, agent=agent,
                              on_frame=on_frame, title=f"rollingworld: {source.name}", controls=controls,
                              hud=rt.hud, screenshots=rt.screenshots,
                              on_reset=on_reset)
        result = session.run(seed=cfg.seed, frames=cfg.frames)
        if video is not None:
            video.write(result.last_frame)
    finally:
        if episode is not None:
            episode.close()
            writer.close()
        if video is not None:
            video.close()
        display.close()
    print(f"{source.name}: {result.stats.summary()}")
    if video is not None:
        print(f"wrote {video.frames} frames to {cfg.video}")
    if episode is not None:
        print(f"recorded {recorded} frames to {cfg.out}")
    return 0
