"""State readers (games.readers) against the games' own truth on frames they render, and state error by horizon
(worldmodel.eval.state): right frames score right, blurred right frames too, frames of other moments do not."""
from __future__ import annotations

import numpy as np
import pytest

from games.agents import make_agent
from games.readers import MazeReader, PongReader, reader_for
from games.registry import make_game
from worldmodel.eval.state import state_by_horizon


def played(name: str, seeds, steps: int, every: int, truth):
    """(frame, truth(game)) every ``every`` steps of ``steps`` with the heuristic (even seeds) or random (odd seeds)
    agent playing ``name``."""
    out = []
    for seed in seeds:
        game = make_game(name)
        agent = make_agent("heuristic" if seed % 2 == 0 else "random", game, seed)
        game.reset(seed)
        for t in range(steps):
            frame = game.step(agent.act())
            if t % every == 0:
                out.append((frame, truth(game)))
    return out


def blurred(frame: np.ndarray, k: int = 3) -> np.ndarray:
    """``frame`` [H, W, 3] under a k x k box blur (edges repeated)."""
    p = k // 2
    pad = np.pad(frame.astype(np.float32), ((p, p), (p, p), (0, 0)), mode="edge")
    h, w = frame.shape[:2]
    return np.mean([pad[i:i + h, j:j + w] for i in range(k) for j in range(k)], 0).round().astype(np.uint8)


@pytest.fixture(scope="module")
def pong():
    """Long pong matches, so that both scores run through every digit."""
    truth = lambda g: (g.paddle_y, g.opponent_y, g.ball_pos, g.score)  # noqa: E731
    return played("pong", range(6), 2000, 5, truth)


def wall_heights(game) -> tuple[np.ndarray, np.ndarray]:
    """What the maze knows of its view: each column's wall height in pixels (focal / perpendicular distance of
    the ray ``Maze.render`` casts, at most the frame's height), and which columns a pillar hides (drawn over the
    wall)."""
    forward = np.array([np.cos(game._angle), np.sin(game._angle)])
    right = np.array([-forward[1], forward[0]])
    dist = np.maximum(game._cast(forward[None] + game._cam[:, None] * right[None])[0], 1e-3)
    draw = game._draw_pillars
    game._draw_pillars = lambda *args: None
    without = game.render()
    game._draw_pillars = draw
    hidden = (without != game.render()).any((0, 2))
    return np.minimum(game.focal / dist, game.height), hidden


@pytest.fixture(scope="module")
def maze():
    return played("maze", range(10), 300, 10, wall_heights)


def test_pong_reader_reads_paddles_ball_and_score_as_the_game_knows_them(pong):
    reader = PongReader()
    paddle, ball, score, wrong, digits = [], [], [], 0, set()
    for frame, (player_y, opponent_y, (bx, by), truth_score) in pong:
        s = reader.read(frame)
        paddle += [abs(s.player_y - player_y), abs(s.opponent_y - opponent_y)]
        if reader.ball_size / 2 <= bx <= reader.width - reader.ball_size / 2:  # fully in the frame
            ball.append(np.inf if s.ball is None else np.hypot(s.ball[0] - bx, s.ball[1] - by))
        score.append(s.score == truth_score)
        wrong += sum(d is not None and d != t for d, t in zip(s.score, truth_score))
        digits |= set(truth_score)
    assert digits == set(range(10)) and len(ball) > 0.9 * len(pong)
    assert np.mean(np.array(paddle) <= 1.0) >= 0.99 and np.mean(np.array(ball) <= 1.0) >= 0.99
    assert np.mean(score) >= 0.99 and wrong == 0  # a digit under the ball may be unreadable, never misread


def test_maze_reader_reads_the_wall_heights_the_raycaster_draws(maze):
    reader = MazeReader()
    errors = np.concatenate([np.abs(reader.read(frame).height - height)[~hidden]
                             for frame, (height, hidden) in maze])
    assert len(errors) > 0.8 * 64 * len(maze)
    assert np.mean(errors <= 1.0) >= 0.95 and np.mean(errors <= 2.0) >= 0.98


@pytest.mark.parametrize("name", ["pong", "maze"])
def test_blurred_right_frames_read_right_and_frames_of_other_moments_do_not(name, pong, maze):
    """The point of reading state: a blur (PSNR punishes it) keeps the state; a sharp frame of another moment (PSNR
    may like it) does not. A reader that returned constants would pass neither."""
    reader = reader_for(name)
    frames = np.stack([f for f, _ in (pong if name == "pong" else maze)][:200])
    compare = lambda a, b: [reader.compare(reader.read(x), reader.read(y)) for x, y in zip(a, b)]  # noqa: E731
    share = lambda rows, key: float(np.mean([r[key] for r in rows]))  # noqa: E731
    same, blur = compare(frames, frames), compare(frames, [blurred(f) for f in frames])
    other = compare(frames, np.roll(frames, 7, 0))
    main = "ball_error" if name == "pong" else "height_error"
    assert share(same, "correct") == 1.0 and share(same, main) == 0.0
    assert share(blur, "correct") >= 0.75 and share(blur, main) < 2.0
    assert share(other, "correct") <= 0.1 and share(other, main) > 5 * max(share(blur, main), 1.0)


@pytest.mark.parametrize("name", ["pong", "maze"])
def test_nonsense_frames_are_read_without_error_and_score_wrong(name):
    reader = reader_for(name)
    real = make_game(name).reset(3)
    rng = np.random.default_rng(0)
    for odd in (np.zeros_like(real), np.full_like(real, 255), rng.integers(0, 256, real.shape, dtype=np.uint8)):
        c = reader.compare(reader.read(real), reader.read(odd))
        assert c["correct"] is False and all(np.isfinite(v) for v in c.values())
    if name == "pong":
        s = reader.read(np.zeros_like(real))
        assert (s.player_y, s.opponent_y, s.ball, s.score) == (None, None, None, (None, None))


def test_state_by_horizon_averages_each_field_over_the_starts(pong):
    reader = reader_for("pong")
    frames = np.stack([f for f, _ in pong[:12]]).reshape(3, 4, 64, 64, 3)  # [B, n, H, W, 3]
    wrong = frames.copy()
    wrong[0, 2] = frames[1, 0]  # one start's third frame shows another moment
    by_h = state_by_horizon(reader, wrong, frames)
    assert set(by_h) == {"ball_error", "paddle_error", "score_ok", "ball_ok", "correct"}
    assert by_h["correct"][:2] + by_h["correct"][3:] == [1.0] * 3 and by_h["ball_error"][0] == 0.0
    one = reader.compare(reader.read(frames[0, 2]), reader.read(frames[1, 0]))
    assert by_h["ball_error"][2] == pytest.approx(one["ball_error"] / 3, abs=1e-4)
    assert by_h["correct"][2] == pytest.approx(2 / 3, abs=1e-4)


def test_games_without_a_reader_get_none():
    assert reader_for("gym:CartPole-v1") is None and isinstance(reader_for("maze", 96, 64), MazeReader)


def test_describe_tells_a_view_filled_by_a_wall_from_the_games_own_views():
    """The flags a long session is counted by: the real maze rarely fills the view with a wall, a flat field
    always does; real pong frames show both paddles and both digits, a flat field none."""
    from games.agents import make_agent
    from games.readers import reader_for
    from games.registry import make_game
    from worldmodel.eval.state import shown_per_block

    for name in ("maze", "pong"):
        game, reader = make_game(name), reader_for(name)
        agent = make_agent("heuristic", game, 0)
        frames = [game.reset(0)]
        for _ in range(199):
            frames.append(game.step(agent.act()))
        flat = np.full((40, 64, 64, 3), (90, 160, 120), np.uint8)
        shown = shown_per_block(reader, np.stack([np.stack(frames), np.concatenate([flat] * 5)]))
        if name == "maze":
            assert shown["wall_fills_view"][0] < 0.5 and shown["wall_fills_view"][1] == 1.0
            assert shown["corridor_seen"][0] > 0.5 and shown["corridor_seen"][1] == 0.0
        else:
            assert shown["paddles_seen"] == [1.0, 0.0] and shown["score_read"][0] > 0.9 and shown["score_read"][1] == 0
