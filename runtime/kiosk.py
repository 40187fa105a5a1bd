"""The kiosk: a game (or a world model) that runs unattended for days on one screen.

``KioskSession`` is a ``PlaySession`` with habits of its own. After ``idle_seconds`` without player input a scripted
agent plays (attract mode) under a blinking banner; the first key, click or mouse motion hands control back at once.
A key that hands over reaches the game only if it is one of the game's keys (UP moves the paddle on that very tick);
anything else only wakes the kiosk. Every ``session_minutes`` the session restarts from a fresh start, and the
``Watchdog`` restarts it at once when the frames go bad.

``runtime.kiosk_supervisor.Kiosk`` supervises the sessions (faults, backoff, restarts, stalls). Only ``exit_keys``
or SIGTERM/SIGINT end a kiosk: Esc and the window's close button do nothing. Every event is one line of ``KioskLog``.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path

import numpy as np

from games.data.errors import InputError
from runtime.display import Overlay, fit_viewport
from runtime.hud import Banner
from runtime.player import PlaySession
from runtime.source import FrameSource

log = logging.getLogger("rollingworld.kiosk")

GAVE_UP, STALLED = 1, 3  # exit codes


@dataclass
class KioskConfig:
    idle_seconds: float = 30.0  # no player input this long -> attract mode (0: attract from the start)
    session_minutes: float = 10.0  # a session restarts from a fresh start (a new seed) after this long
    attract_agent: str = "auto"  # auto (the game's heuristic agent where it has one, else random) | heuristic | random
    banner: str = "PRESS ANY KEY TO PLAY"
    banner_blink_seconds: float = 1.0  # blink period of the banner (0: steady)
    wake_on_mouse: bool = True  # mouse motion and clicks hand over too, not only keys
    exit_keys: str = "ctrl+shift+q"  # the only way out from the keyboard
    flat_std: float = 2.0  # a frame whose pixels' standard deviation is below this is flat
    saturated_share: float | None = 0.99  # this share of a frame's values at 255: saturated (CartPole: 0.97; null: off)
    degenerate_ticks: int = 30  # flat or saturated frames this many ticks in a row -> reset
    watchdog_fault_seconds: float = 60.0  # the watchdog firing again this soon is a fault (the source is rebuilt)
    backoff_seconds: float = 1.0  # wait before a restart, doubled for each earlier fault in the last hour
    backoff_max_seconds: float = 60.0
    max_restarts_per_hour: int = 10  # one fault more in an hour ends the kiosk (exit code 1)
    stall_seconds: float | None = 60.0  # no tick for this long ends the process (exit code 3; null: never)

    @classmethod
    def from_settings(cls, settings) -> "KioskConfig":
        config = cls(**{f.name: settings[f.name] for f in fields(cls) if f.name in settings})
        if config.attract_agent not in ("auto", "heuristic", "random"):
            raise InputError(f"attract_agent must be auto, heuristic or random, got {config.attract_agent!r}")
        if config.idle_seconds < 0 or config.session_minutes <= 0 or config.degenerate_ticks < 1:
            raise InputError("idle_seconds must be >= 0, session_minutes > 0 and degenerate_ticks >= 1")
        ExitKeys(config.exit_keys)  # an InputError now, not when the first session starts
        return config


class KioskLog:
    """The event log: ``<ISO time> <event> key=value ...``, appended, one line per event, flushed at each line.

    A value with spaces, quotes or ``=`` in it is written as a JSON string.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a", buffering=1, encoding="utf-8")

    def event(self, name: str, **fields) -> None:
        parts = [datetime.now().astimezone().isoformat(timespec="milliseconds"), name]
        for key, value in fields.items():
            text = str(value)
            quote = not text or any(c in text for c in ' ="')
            parts.append(f"{key}={json.dumps(text) if quote else text}")
        self.file.write(" ".join(parts) + "\n")

    def close(self) -> None:
        self.file.close()


def one_line(error: BaseException) -> str:
    """``Type: first line of the message``, at most 200 characters."""
    message = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {message}"[:200]


class ExitKeys:
    """A key combination such as ``ctrl+shift+q``: modifiers (ctrl, shift, alt, meta) and one pygame key name."""

    def __init__(self, combo: str):
        import pygame

        from runtime.input import key_code

        modifiers = {"ctrl": pygame.KMOD_CTRL, "shift": pygame.KMOD_SHIFT, "alt": pygame.KMOD_ALT,
                     "meta": pygame.KMOD_META}
        *mods, key = [part.strip().lower() for part in str(combo).split("+")]
        if any(m not in modifiers for m in mods):
            raise InputError(f"exit_keys {combo!r}: modifiers are {', '.join(modifiers)} (e.g. ctrl+shift+q)")
        try:
            self.key = key_code(key)
        except ValueError:
            raise InputError(f"exit_keys {combo!r}: unknown key name {key!r} (e.g. ctrl+shift+q)") from None
        self.mods = [modifiers[m] for m in mods]

    def match(self, event) -> bool:
        """True for the KEYDOWN of the key with every modifier held (more modifiers are fine)."""
        return event.key == self.key and all(event.mod & m for m in self.mods)


class Watchdog:
    """Judges each new frame: an invalid one (not uint8 [H, W, 3] of the source's size) at once, a flat or
    saturated one after ``ticks`` in a row. A NaN turned into uint8 pixels reads as a flat frame."""

    def __init__(self, shape: tuple[int, int, int], flat_std: float, saturated_share: float | None, ticks: int):
        self.shape, self.flat_std, self.saturated_share, self.ticks = shape, flat_std, saturated_share, ticks
        self.bad = 0  # degenerate frames in a row

    def check(self, frame) -> str | None:
        """What is wrong with ``frame``, or None."""
        if not isinstance(frame, np.ndarray) or frame.shape != self.shape:
            return f"invalid frame: {getattr(frame, 'shape', type(frame).__name__)}, not {self.shape}"
        if frame.dtype != np.uint8:
            finite = np.issubdtype(frame.dtype, np.number) and bool(np.isfinite(frame).all())
            return f"invalid frame: {frame.dtype}{'' if finite else ' with non-finite values'}, not uint8"
        std = float(frame.std())
        white = float((frame == 255).mean()) if self.saturated_share is not None else 0.0
        if std < self.flat_std:
            problem = f"flat frames (std {std:.2f} < {self.flat_std})"
        elif self.saturated_share is not None and white >= self.saturated_share:
            problem = f"saturated frames ({white:.0%} of values at 255)"
        else:
            self.bad = 0
            return None
        self.bad += 1
        return f"{problem} for {self.bad} ticks" if self.bad >= self.ticks else None


class DegenerateFrames(RuntimeError):
    """The watchdog fired twice within ``watchdog_fault_seconds``: resetting does not help, rebuild the source."""


def attract_agent(name: str, source: FrameSource, seed: int):
    """The agent of attract mode: ``auto`` is the game's heuristic agent where it has one, else random."""
    from games.agents import RandomAgent, agent_name, make_agent

    name = agent_name(name, source.game)  # auto: no real game behind the source (a world model alone) is random
    if name == "random":
        return RandomAgent(source, seed)  # needs only the source's action space and tick count
    # a source with no real game behind it (a world model alone) gets make_agent's "no heuristic agent" error
    return make_agent(name, source if source.game is None else source.game, seed)


def _hide_cursor() -> None:
    import pygame

    if pygame.display.get_init():
        pygame.mouse.set_visible(False)


class KioskSession(PlaySession):
    """A play session that invites, hands over, resets and watches itself; every event goes to ``events``.

    ``last_input``: when the player last touched anything (``time.monotonic()``; None: now), carried across the
    supervisor's restarts; ``play``: the ``PlaySession`` settings (fps, controls, hud, title, screenshots).
    """

    def __init__(self, source: FrameSource, display, input_mapper, agent, config: KioskConfig, events: KioskLog,
                 last_input: float | None = None, **play):
        super().__init__(source, display, input_mapper, **play)
        self.config, self.events = config, events
        self.attract_agent = agent
        self.exit_keys = ExitKeys(config.exit_keys)
        self.watchdog = Watchdog((source.height, source.width, 3), config.flat_std, config.saturated_share,
                                 config.degenerate_ticks)
        self.attract = False
        self.last_input = time.monotonic() if last_input is None else last_input
        self.ticked_at = time.monotonic()  # start of the latest tick (the supervisor's stall check reads it)
        self.exit_reason: str | None = None
        self.resets = 0
        self._attract_since = self._session_began = 0.0
        self._attract_ticks = self._session_ticks = self._session_overruns = 0
        self._watchdog_at = float("-inf")
        picture_width = fit_viewport((source.width, source.height), tuple(display.size))[2]
        self.banner = Banner(config.banner, picture_width, config.banner_blink_seconds)

    # -- sessions --

    def _begin_session(self) -> None:
        self._session_began, self._session_ticks = time.monotonic(), 0
        self._session_overruns = self.loop.stats.overruns
        self.events.event("session-start", seed=self.seed, start=self.start_seed)

    def _end_session(self, reason: str) -> None:
        self.events.event("session-end", ticks=self._session_ticks, reason=reason,
                          seconds=f"{time.monotonic() - self._session_began:.1f}",
                          overruns=self.loop.stats.overruns - self._session_overruns)

    def new_session(self, reason: str, detail: str | None = None) -> np.ndarray:
        """Reset to a fresh start (a new seed); returns its first frame."""
        self.events.event("reset", reason=reason, **({"detail": detail} if detail else {}))
        self._end_session(reason)
        self.resets += 1
        frame = self.reset(new_start=True)
        self.watchdog.bad = 0
        self._begin_session()
        return frame

    def run(self, seed: int, frames: int | None = None):
        self.seed = self.start_seed = int(seed)
        self._begin_session()
        _hide_cursor()
        try:
            result = super().run(seed, frames)
        except BaseException:
            self._end_session("fault")
            raise
        reached = frames is not None and result.stats.ticks >= frames
        self.exit_reason = self.exit_reason or ("frames" if reached else "signal")
        self._end_session(self.exit_reason)
        return result

    # -- attract mode --

    def _attract_on(self, now: float) -> None:
        self.attract, self.agent = True, self.attract_agent
        self._attract_since, self._attract_ticks = now, 0
        self._grab(False)
        self.events.event("attract-on", idle=f"{now - self.last_input:.1f}s", tick=self._session_ticks,
                          agent=type(self.attract_agent).__name__)

    def _hand_over(self, by: str) -> None:
        self.attract, self.agent = False, None
        self.events.event("attract-off", reason="handover", input=by, tick=self._session_ticks,
                          attract_ticks=self._attract_ticks)
        self._grab(True)

    def _grab(self, grab: bool) -> None:
        super()._grab(grab and not self.attract)  # the mouse is the player's only while a player plays
        _hide_cursor()  # releasing the grab shows the pointer again

    def _intercept(self, event) -> bool:
        import pygame

        if event.type == pygame.QUIT:
            return True  # the close button does nothing in a kiosk
        if event.type == pygame.KEYDOWN and self.exit_keys.match(event):
            self.exit_reason = "exit-keys"
            self.loop.stop()
            return True
        motion = event.type == pygame.MOUSEMOTION and self.config.wake_on_mouse and any(event.rel)
        wakes = event.type == pygame.KEYDOWN or motion or (
            event.type == pygame.MOUSEBUTTONDOWN and self.config.wake_on_mouse)
        if wakes or event.type in (pygame.KEYUP, pygame.MOUSEBUTTONUP):
            self.last_input = time.monotonic()
        if not (wakes and self.attract):
            return False
        if event.type == pygame.KEYDOWN:
            self._hand_over(f"key:{pygame.key.name(event.key)}")
            return self.input is None or event.key not in self.input.bindings  # a game key acts on this tick
        self._hand_over("mouse:" + ("motion" if motion else "click"))
        return True

    # -- one tick --

    def _tick(self, t: int) -> bool:
        now = self.ticked_at = time.monotonic()
        if self.input is not None and (self.input.held_codes or self.input.held_buttons):
            self.last_input = now  # a key held down is a player still playing
        if not self.attract and now - self.last_input >= self.config.idle_seconds:
            self._attract_on(now)
        if now - self._session_began >= self.config.session_minutes * 60.0:
            self.new_session("session-time")
        self._attract_ticks += self.attract
        return super()._tick(t)

    def _step(self, action: np.ndarray) -> np.ndarray:
        frame = super()._step(action)
        self._session_ticks += 1
        problem = self.watchdog.check(frame)
        if problem is None:
            return frame
        now = time.monotonic()
        if now - self._watchdog_at < self.config.watchdog_fault_seconds:
            raise DegenerateFrames(f"{problem}, {now - self._watchdog_at:.0f} s after the last watchdog reset")
        self._watchdog_at = now
        return self.new_session("watchdog", problem)

    def _overlays(self) -> tuple[Overlay, ...]:
        overlays = super()._overlays()
        if self.attract:
            image = self.banner.image(self._attract_since, time.monotonic())
            if image is not None:
                overlays += (Overlay(image, "center"),)
        return overlays

    def hud_lines(self) -> list[str]:
        s = int(time.monotonic() - self._session_began)
        mode = "attract" if self.attract else "player"
        return super().hud_lines() + [f"kiosk {mode}   session {s // 60}:{s % 60:02d}   resets {self.resets}"]
