"""The real window under Xvfb: posted key events move the paddle and the screen shows the game's frame."""
import numpy as np

from games.registry import make_game
from runtime.display import OffscreenDisplay, Window, fit_viewport
from tests.conftest import assert_one_line_error


def _scaled(frame, k):
    return np.repeat(np.repeat(frame, k, axis=0), k, axis=1)


def test_posted_keys_move_the_paddle_and_the_screen_shows_the_frame(xdisplay):
    import pygame

    from runtime.input import InputMapper, resolve_bindings
    from runtime.player import PlaySession
    from runtime.source import GameSource

    game = make_game("pong")
    window = Window((512, 512), capture=True)
    try:
        mapper = InputMapper(game.action_space, resolve_bindings(game.action_space, game.default_bindings))
        actions = []
        session = PlaySession(GameSource(game), window, mapper, fps=120, on_frame=lambda f, a: actions.append(a))
        game.reset(0)
        start_y = game.paddle_y
        pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_UP, mod=0, unicode="", scancode=0))
        result = session.run(seed=0, frames=8)
        assert all(game.action_space.held(a, "UP") for a in actions)
        assert game.paddle_y < start_y - 3, (start_y, game.paddle_y)
        screen = window.read_screen()
        assert screen.shape == (512, 512, 3)
        np.testing.assert_array_equal(screen, _scaled(result.last_frame, 8))
        # the paddle region on screen changed versus the start frame: the motion is visible
        pygame.event.post(pygame.event.Event(pygame.KEYUP, key=pygame.K_UP, mod=0, unicode="", scancode=0))
        actions.clear()
        session.run(seed=0, frames=2)
        assert not any(game.action_space.held(a, "UP") for a in actions)
    finally:
        window.close()


def test_window_keeps_aspect_with_integer_scaling():
    assert fit_viewport((64, 64), (800, 600)) == (112, 12, 576, 576)
    assert fit_viewport((96, 64), (512, 512)) == (16, 96, 480, 320)
    x, y, w, h = fit_viewport((64, 64), (40, 30))
    assert (w, h) == (30, 30)


def test_game_command_opens_a_window_and_records(cli, xdisplay, tmp_path):
    r = cli("game", "game=maze", "frames=20", "record=true", f"out={tmp_path}/played", "agent=heuristic",
            env={"DISPLAY": xdisplay})
    assert r.returncode == 0, r.stderr
    assert "20 ticks" in r.stdout
    from games.data.recording import Recording

    rec = Recording(tmp_path / "played")
    assert rec.game == "maze" and rec.episodes[0].length == 20


def test_no_display_is_a_one_line_error_suggesting_headless(cli):
    r = cli("game", "game=pong", "frames=5", env={"DISPLAY": "", "WAYLAND_DISPLAY": ""})
    assert_one_line_error(r, "no display", "headless=true")


def test_headless_renders_with_egl():
    game = make_game("pong")
    frame = game.reset(3)
    display = OffscreenDisplay((256, 256))
    try:
        display.show(frame)
        np.testing.assert_array_equal(display.read_screen(), _scaled(frame, 4))
    finally:
        display.close()


def test_headless_game_writes_a_video_without_a_display(cli, tmp_path):
    r = cli("game", "game=pong", "headless=true", "agent=random", "frames=10", f"video={tmp_path}/p.mp4",
            "runtime.fps=200", env={"DISPLAY": ""})
    assert r.returncode == 0, r.stderr
    import av

    with av.open(str(tmp_path / "p.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 11
