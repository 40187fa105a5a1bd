"""The player's controls in the real window under Xvfb (and offscreen): pause, reset, screenshot, HUD, help,
fullscreen, mouse grab, overruns. Keys are pygame events posted to the queue, exactly as a player's arrive."""
import logging

import numpy as np
import pytest
from PIL import Image

from games.base import Game
from games.data.actions import ActionSpace
from runtime.config import RuntimeSettings
from runtime.display import OffscreenDisplay, Window
from runtime.input import Controls, InputMapper
from runtime.player import PlaySession
from runtime.source import FrameSource, GameSource
from tests.conftest import assert_one_line_error

SIZE, SCALE = 32, 8  # a 32x32 frame in a 256x256 window


class FakeSource(FrameSource):
    """A frame source that shows one fixed picture per start seed and counts its steps and resets (seed, start)."""

    name, fps, width, height, default_bindings, game = "fake", 60, SIZE, SIZE, {}, None

    def __init__(self, mouse=False, latency_ticks=1, work_s=0.0):
        self.action_space = ActionSpace(("UP", "DOWN"), mouse=mouse)
        self.latency_ticks = latency_ticks
        self.work_s = work_s
        self.steps = self.t = 0
        self.resets: list[tuple[int, int | None]] = []

    @staticmethod
    def frame(seed: int) -> np.ndarray:
        return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)

    def reset(self, seed, start_seed=None):
        self.resets.append((seed, start_seed))
        self.current = self.frame(seed if start_seed is None else start_seed)
        self.t = 0
        return self.current

    def step(self, action):
        if self.work_s:
            import time

            time.sleep(self.work_s)
        self.steps += 1
        self.t += 1
        return self.current


class FakeGame(Game):
    """A game's own ``reset(seed)``: the seed is the start. Shows FakeSource's picture of it."""

    name = "fakegame"

    def __init__(self):
        super().__init__(SIZE, SIZE)
        self.resets: list[int] = []

    @property
    def action_space(self) -> ActionSpace:
        return ActionSpace(("UP", "DOWN"))

    def reset(self, seed):
        self.resets.append(seed)
        self.t = 0
        return self.render()

    def step(self, action):
        self.t += 1
        return self.render()

    def render(self):
        return FakeSource.frame(self.resets[-1])


def controls() -> Controls:
    """The play controls of the shipped config."""
    return Controls(RuntimeSettings().controls)


def session(source, display, **kw) -> PlaySession:
    mapper = InputMapper(source.action_space, {})
    return PlaySession(source, display, mapper, fps=kw.pop("fps", 120), controls=controls(), **kw)


def press(key, mod=0, unicode=""):
    import pygame

    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=key, mod=mod, unicode=unicode, scancode=0))


def scaled(frame, k=SCALE):
    return np.repeat(np.repeat(frame, k, axis=0), k, axis=1)


@pytest.fixture
def window(xdisplay):
    w = Window((SIZE * SCALE, SIZE * SCALE), capture=True)
    yield w
    w.close()


def test_pause_stops_stepping_the_source_and_says_so(window):
    import pygame

    source = FakeSource()
    play = session(source, window)
    press(pygame.K_p)
    play.run(seed=0, frames=5)
    assert source.steps == 0 and play.paused
    assert "PAUSED" in play.hud_lines()
    assert not np.array_equal(window.read_screen(), scaled(source.current))  # PAUSED shows even with no HUD
    press(pygame.K_p)
    play.run(seed=0, frames=3)
    assert source.steps == 3 and not play.paused


def test_reset_restarts_with_a_new_seed_and_shift_reset_from_a_new_start(window):
    import pygame

    source = FakeSource()
    play = session(source, window)
    press(pygame.K_r)
    play.run(seed=5, frames=2)
    assert source.resets == [(5, None), (6, 5)]  # new seed, same start
    press(pygame.K_r, mod=pygame.KMOD_LSHIFT)
    play.run(seed=5, frames=2)
    assert source.resets[-1] == (6, 6)  # a new start
    np.testing.assert_array_equal(window.read_screen(), scaled(source.frame(6)))

    game = FakeGame()  # a real game has no noise: its seed is the start
    play = session(GameSource(game), window)
    press(pygame.K_r)
    press(pygame.K_r, mod=pygame.KMOD_RSHIFT)
    play.run(seed=5, frames=2)
    assert game.resets == [5, 5, 6]


def test_screenshot_writes_the_clean_frame_upscaled(window, tmp_path, capsys):
    import pygame

    source = FakeSource()
    play = session(source, window, hud=True, screenshots=tmp_path / "shots")
    press(pygame.K_F12)
    play.run(seed=3, frames=2)
    shots = sorted((tmp_path / "shots").glob("*.png"))
    assert len(shots) == 1 and str(shots[0]) in capsys.readouterr().out
    np.testing.assert_array_equal(np.asarray(Image.open(shots[0])), scaled(source.frame(3)))
    assert not np.array_equal(window.read_screen(), scaled(source.frame(3)))  # while the screen had the HUD


def test_hud_toggle_changes_the_screen_but_never_the_frame(window):
    import pygame

    source = FakeSource()
    frames = []
    play = session(source, window, hud=True, on_frame=lambda f, a: frames.append(f.copy()))
    play.run(seed=1, frames=3)
    clean = scaled(source.frame(1))
    with_hud = window.read_screen()
    changed = np.any(with_hud != clean, axis=2)
    assert changed[:40, :40].mean() > 0.3 and not changed[-60:, -60:].any()  # over the top-left corner only
    press(pygame.K_F1)
    play.run(seed=1, frames=2)
    np.testing.assert_array_equal(window.read_screen(), clean)
    press(pygame.K_h)
    play.run(seed=1, frames=2)
    assert not np.array_equal(window.read_screen(), clean)
    for f in frames:
        np.testing.assert_array_equal(f, source.frame(1))


def test_help_overlay_covers_the_middle_of_the_screen(window):
    import pygame

    source = FakeSource()
    play = session(source, window)
    press(pygame.K_F2)
    play.run(seed=2, frames=2)
    clean = scaled(source.frame(2))
    changed = np.any(window.read_screen() != clean, axis=2)
    assert changed[100:156, 100:156].mean() > 0.3
    press(pygame.K_SLASH, mod=pygame.KMOD_LSHIFT, unicode="?")  # '?' as a keyboard types it
    play.run(seed=2, frames=2)
    np.testing.assert_array_equal(window.read_screen(), clean)


def test_fullscreen_toggle_fills_the_screen(window):
    import pygame

    play = session(FakeSource(), window)
    press(pygame.K_F11)
    play.run(seed=0, frames=3)
    assert window.read_screen().shape[:2] == (1024, 1280)  # the Xvfb screen
    press(pygame.K_F11)
    play.run(seed=0, frames=3)
    assert window.read_screen().shape[:2] == (SIZE * SCALE, SIZE * SCALE)


def test_mouse_is_grabbed_while_playing_and_released_on_pause(window):
    import pygame

    grabbed = []
    play = session(FakeSource(mouse=True), window, on_frame=lambda f, a: grabbed.append(pygame.event.get_grab()))
    play.run(seed=0, frames=2)
    assert grabbed == [True, True] and not pygame.event.get_grab()  # released when the session ends
    press(pygame.K_p)
    play.run(seed=0, frames=2)
    assert play.paused and not pygame.event.get_grab()


def test_headless_draws_the_hud_over_the_picture():
    source = FakeSource()
    display = OffscreenDisplay((SIZE * SCALE, SIZE * SCALE))
    try:
        session(source, display, hud=True).run(seed=4, frames=2)
        changed = np.any(display.read_screen() != scaled(source.frame(4)), axis=2)
        assert changed[:40, :40].mean() > 0.3 and not changed[-60:, -60:].any()
    finally:
        display.close()


def test_latency_counts_the_sources_ticks():
    source = FakeSource(latency_ticks=3)
    display = OffscreenDisplay((SIZE * SCALE, SIZE * SCALE))
    try:
        play = session(source, display, hud=True, fps=100)
        play.run(seed=0, frames=10)
        latency = next(line for line in play.hud_lines() if line.startswith("latency"))
        assert "(3 ticks)" in latency
        assert float(latency.split()[1]) >= 15.0  # two 10 ms periods between the poll and the frame it affects
    finally:
        display.close()


def test_overruns_show_on_the_hud_and_are_logged_at_most_once_a_second(caplog):
    source = FakeSource(work_s=0.015)  # 15 ms of work in a 5 ms period: every tick overruns
    display = OffscreenDisplay((SIZE * SCALE, SIZE * SCALE))
    try:
        play = session(source, display, hud=True, fps=200)
        with caplog.at_level(logging.INFO, logger="rollingworld.play"):
            result = play.run(seed=0, frames=20)  # about 0.3 s
        assert result.stats.overruns >= 19
        assert "OVERRUN" in " ".join(play.hud_lines())
        assert len([r for r in caplog.records if "overran" in r.getMessage()]) == 1
    finally:
        display.close()


@pytest.mark.parametrize("override, needles", [
    ("runtime.bindings={UP:[notakey]}", ["notakey", "UP"]),
    ("runtime.controls.pause=[notakey]", ["notakey", "pause"]),
    ("runtime.controls.pause=[up]", ["up", "pause", "UP"]),  # a key the game binds cannot be a control
])
def test_bad_binding_or_control_key_is_one_line_error(cli, xdisplay, override, needles):
    r = cli("game", "game=pong", "frames=5", override, env={"DISPLAY": xdisplay})
    assert_one_line_error(r, *needles)


def test_reset_while_recording_begins_a_new_episode(xdisplay, tmp_path):
    import pygame

    from games.data.recording import Recording
    from runtime.cli import compose
    from runtime.commands.game import run

    cfg = compose("game", ["game=pong", "frames=30", "record=true", f"out={tmp_path}/rec", "runtime.scale=2"])
    pygame.display.init()  # the queue and the timer exist before the command opens its window
    r_key = pygame.event.Event(pygame.KEYDOWN, key=pygame.K_r, mod=0, unicode="r", scancode=0)
    pygame.time.set_timer(r_key, 500, loops=1)  # R in the middle of the 1 s session
    assert run(cfg) == 0
    lengths = [e.length for e in Recording(tmp_path / "rec").episodes]
    assert len(lengths) == 2 and min(lengths) > 0 and sum(lengths) == 30, lengths
