"""``rollingworld kiosk game=NAME`` (or ``ckpt=FILE``): a demo kiosk that runs a game unattended for days.

Fullscreen, the pointer hidden, no HUD; a scripted agent plays while nobody does (``runtime.kiosk``). Only
``exit_keys`` (ctrl+shift+q) or SIGTERM/SIGINT end it; ``frames=N`` and ``headless=true`` are for tests and soak runs.
``game=NAME`` runs the real game; ``ckpt=FILE`` runs a world model (a bundled one: ``ckpt=assets/pong.safetensors``)
through ``play``'s ``WorldSource``, with the engine settings it was distilled with unless given.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import OmegaConf

from games.data.errors import InputError
from runtime.config import EngineChoice, RuntimeSettings
from runtime.kiosk import KioskConfig, KioskLog, KioskSession, attract_agent, one_line
from runtime.kiosk_supervisor import Kiosk


@dataclass
class KioskSettings(EngineChoice, KioskConfig):
    """The kiosk's habits (``KioskConfig``), how it runs a world model (``EngineChoice``, as ``play`` does) and
    what it shows."""
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)  # the window; the kiosk presets: kiosk.yaml
    game: Any = None  # configs/game/<name>.yaml (game=pong|maze|gym:<env id>); or ckpt=FILE instead
    ckpt: Optional[str] = None  # a world model checkpoint to show instead of a game (through play's WorldSource)
    seed: int = 0  # the first session's start; each reset takes the next one
    frames: Optional[int] = None  # stop after this many ticks in all (tests, soak runs); None: until exit_keys/SIGTERM
    headless: bool = False  # render offscreen with EGL (no window, no input: attract mode only)
    log: str = "kiosk.log"  # event log, appended, one line per event: <ISO time> <event> key=value ...
    compile: bool = False  # as in play: true compiles the tick in the background and switches to it
    threads: int = 1  # torch threads (the other core runs the window and input)


def _source_builder(cfg):
    """A function that builds a fresh frame source: the game of ``game=``, or the world model of ``ckpt=``."""
    if (cfg.get("game") is None) == (cfg.get("ckpt") is None):
        raise InputError("give game=NAME (pong, maze, gym:<env id>) or ckpt=FILE (a world model), one of the two")
    if cfg.get("game") is not None:
        from runtime.config import build_game
        from runtime.source import GameSource

        return lambda: GameSource(build_game(cfg.game))
    if not os.path.exists(cfg.ckpt):
        raise InputError(f"checkpoint not found: {cfg.ckpt}")
    from runtime.worlds import WorldSource
    from runtime.worlds import engine_config, load_session

    return lambda: WorldSource(load_session(cfg.ckpt, engine_config(cfg, background_compile=True), cfg.threads,
                                            cfg.device))


def run(cfg) -> int:
    from runtime.input import Controls, InputMapper, resolve_bindings
    from runtime.player import open_display, show_loading

    config = KioskConfig.from_settings(cfg)
    build = _source_builder(cfg)
    rt = cfg.runtime
    overrides = OmegaConf.to_container(rt.bindings) if rt.bindings else None
    # exit_keys is the only way out: a quit key (Esc in the play commands) would let any visitor end the kiosk
    control_keys = {k: v for k, v in (OmegaConf.to_container(rt.controls) or {}).items() if k != "quit"}
    events = KioskLog(cfg.log)
    name = cfg.ckpt if cfg.get("ckpt") else cfg.game.get("env_id", cfg.game.name)
    events.event("start", source=name, pid=os.getpid(), headless=cfg.headless,
                 idle_seconds=config.idle_seconds, session_minutes=config.session_minutes)
    display = None
    try:
        if cfg.get("ckpt"):  # a world model: the window first, saying what loads (the header gives the size)
            from worldmodel.checkpoint import read_model_info

            h, w = read_model_info(cfg.ckpt).frame_size
            display = open_display(cfg, (w, h), f"{name} (world model)")
            show_loading(display, (w, h), [f"loading {os.path.basename(cfg.ckpt)}"])
            first = build()
        else:
            first = build()
            display = open_display(cfg, (first.width, first.height), first.name)
    except InputError as e:  # a bad setting: one line on stderr (by the CLI) and in the log
        if display is not None:
            display.close()
        events.event("exit", reason="error", error=one_line(e))
        events.close()
        raise

    def start(last_input):
        nonlocal first
        source, first = first if first is not None else build(), None
        bindings = resolve_bindings(source.action_space, source.default_bindings, overrides)
        agent = attract_agent(config.attract_agent, source, cfg.seed)
        return KioskSession(source, display, InputMapper(source.action_space, bindings), agent, config, events,
                            last_input, fps=rt.fps, title=f"rollingworld: {source.name}",
                            controls=Controls(control_keys, bindings), hud=rt.hud, screenshots=rt.screenshots)

    kiosk = Kiosk(start, display, config, events)
    try:
        code = kiosk.run(cfg.seed, cfg.frames)
    finally:
        display.close()
        events.close()
    print(f"kiosk: {kiosk.ticks} ticks, {kiosk.restarts} restarts, exit: {kiosk.exit_reason} (log: {cfg.log})")
    return code
