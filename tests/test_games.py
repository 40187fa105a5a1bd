"""The real games and their scripted agents: determinism, controls, rendering, physics, agents, registry."""
import subprocess
import sys

import numpy as np
import pytest

from games import maze as maze_mod
from games import pong as pong_mod
from games.agents import make_agent
from games.base import Game
from games.data.actions import ActionSpace
from games.data.errors import InputError
from games.registry import make_game

RESOLUTIONS = [(64, 64), (96, 64), (128, 128), (48, 80)]


def run(game, actions):
    """Frames [T, H, W, 3] of ``game`` stepped through ``actions``."""
    return np.stack([game.step(a) for a in actions])


def hold(game, n, **encode):
    """Steps ``game`` ``n`` ticks holding one action (ActionSpace.encode arguments); returns the last frame."""
    action = game.action_space.encode(**encode)
    for _ in range(n):
        frame = game.step(action)
    return frame


# ---- registry and errors ----

def test_registry_builds_games_and_rejects_bad_names():
    assert isinstance(make_game("pong"), pong_mod.Pong)
    assert make_game("maze", 96, 64, rooms=5).grid.shape == (11, 11)
    with pytest.raises(InputError, match="choose from pong, maze, gym:<env id>"):
        make_game("tetris")
    with pytest.raises(InputError, match="colour"):
        make_game("pong", colour=3)
    with pytest.raises(InputError):
        make_game("maze", 8, 8)
    game = make_game("pong")
    with pytest.raises(InputError, match="choose from auto, random, heuristic"):
        make_agent("smart", game, 0)
    with pytest.raises(InputError, match="no heuristic agent"):
        make_agent("heuristic", Buttons(), 0)
    with pytest.raises(InputError):
        game.step(np.zeros(3, np.float32))  # wrong size for pong's action space


def test_importing_games_loads_neither_pygame_nor_torch():
    code = "import sys, games; assert 'pygame' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- every game ----

@pytest.mark.parametrize("name", ["pong", "maze"])
@pytest.mark.parametrize("size", RESOLUTIONS)
def test_frames_are_uint8_at_any_resolution(name, size):
    game = make_game(name, *size)
    agent = make_agent("random", game, 0)
    frames = np.stack([game.reset(1)] + [game.step(agent.act()) for _ in range(15)])
    assert frames.dtype == np.uint8 and frames.shape == (16, size[1], size[0], 3)
    assert frames.std() > 10  # not a blank screen
    assert np.array_equal(game.render(), frames[-1])


@pytest.mark.parametrize("name", ["pong", "maze"])
def test_same_seed_and_actions_give_same_frames(name):
    a, b = make_game(name), make_game(name)
    actions = [make_agent("random", a, 3).act() for _ in range(60)]
    for seed_a, seed_b, same in ((7, 7, True), (7, 8, False)):
        a.reset(seed_a)
        b.reset(seed_b)
        assert np.array_equal(run(a, actions), run(b, actions)) == same


def test_different_seeds_make_different_mazes_and_serves():
    a, b = make_game("maze"), make_game("maze")
    b.reset(1)
    assert not np.array_equal(a.grid, b.grid)
    serves = set()
    for seed in range(6):
        pong = make_game("pong")
        pong.reset(seed)
        hold(pong, pong.serve_delay + 1)
        serves.add(tuple(np.round(pong.ball_vel, 3)))
    assert len(serves) >= 4  # both directions, several angles


# ---- pong ----

def paddle_rows(frame, game):
    """Rows of the frame where the player's paddle colour fills its column."""
    column = frame[:, game.paddle_x[0] + 1]
    return np.nonzero(np.all(column == pong_mod.PLAYER, axis=1))[0]


def test_pong_sprites_are_bold_and_distinct():
    game = make_game("pong")
    frame = game.reset(0)
    assert game.paddle_w >= 3 and game.paddle_h >= 12 and game.ball_size >= 4
    for colour, least in ((pong_mod.PLAYER, 36), (pong_mod.OPPONENT, 36), (pong_mod.BALL, 16)):
        assert np.all(frame == colour, axis=2).sum() >= least
    centre = frame[:, (game.width - 1) // 2]
    assert 20 <= np.all(centre == pong_mod.CENTRE_LINE, axis=1).sum() <= 44  # dashed
    big = make_game("pong", 128, 128)
    assert big.paddle_h == 2 * game.paddle_h and big.ball_size == 2 * game.ball_size


@pytest.mark.parametrize("encode, sign", [({"keys": ["UP"]}, -1), ({"keys": ["DOWN"]}, 1), ({"dy": 15.0}, 1),
                                          ({"dy": -15.0}, -1), ({"dx": 20.0}, 0)])
def test_pong_controls_move_the_paddle_and_its_pixels(encode, sign):
    game = make_game("pong")
    start = game.reset(0)
    y0, rows0 = game.paddle_y, paddle_rows(start, game)
    frame = hold(game, 5, **encode)
    assert np.sign(game.paddle_y - y0) == sign and abs(game.paddle_y - y0) >= 5 * abs(sign)
    assert np.sign(paddle_rows(frame, game).mean() - rows0.mean()) == sign
    hold(game, 60, **encode)  # the paddle stays on the screen
    assert game.paddle_h / 2 <= game.paddle_y <= game.height - game.paddle_h / 2


def aim(game, offset, vel=(-1.4, 0.0)):
    """Puts the ball just in front of the player's centred paddle, ``offset`` px below its centre, moving left."""
    game.reset(0)
    game._wait = 0
    game._paddles[0] = (game.height - game.paddle_h) / 2
    face = game.paddle_x[0] + game.paddle_w
    game._ball = np.array([face + 1.0, game.height / 2 - game.ball_size / 2 + offset])
    game._vel = np.array(vel)
    game.step(game.action_space.noop())


def test_pong_paddle_returns_the_ball_at_an_angle_set_by_where_it_hits_and_faster():
    game = make_game("pong")
    for offset, sign in ((-5, -1), (0, 0), (5, 1)):
        aim(game, offset)
        vx, vy = game.ball_vel
        assert vx > 0 and game.returns == 1
        assert np.sign(round(vy, 6)) == sign
        assert np.hypot(vx, vy) > 1.45  # it speeds up (served at 1.4 px a tick)
    aim(game, 14)  # below the paddle: a miss
    assert game.ball_vel[0] < 0 and game.returns == 0


def test_pong_opponent_tracks_the_ball_at_limited_speed():
    game = make_game("pong")
    game.reset(0)
    game._wait, game._ball, game._vel = 0, np.array([40.0, 6.0]), np.array([0.5, 0.0])
    ys = [game.opponent_y]
    for _ in range(12):
        game.step(game.action_space.noop())
        ys.append(game.opponent_y)
    steps = np.diff(ys)
    assert np.all(steps < 0) and np.abs(steps).max() <= game.opponent_speed + 1e-9  # up toward the ball, slowly


def test_pong_ball_bounces_off_the_walls():
    game = make_game("pong")
    game.reset(0)
    game._wait, game._ball, game._vel = 0, np.array([30.0, 1.0]), np.array([0.5, -2.0])
    game.step(game.action_space.noop())
    assert game.ball_vel[1] > 0 and game._ball[1] >= 0
    game._ball, game._vel = np.array([30.0, game.height - game.ball_size - 1.0]), np.array([0.5, 2.0])
    game.step(game.action_space.noop())
    assert game.ball_vel[1] < 0 and game._ball[1] <= game.height - game.ball_size


def test_pong_point_updates_the_drawn_score_and_serves_again():
    game = make_game("pong")
    game.reset(0)
    before = game.render()
    for _ in range(400):  # the idle player misses sooner or later
        frame = game.step(game.action_space.noop())
        if game.score != (0, 0):
            break
    assert game.score == (0, 1) and game.points == [0, 1]
    assert game.ball_vel == (0.0, 0.0) and abs(game.ball_pos[0] - game.width / 2) < 1  # waiting in the centre
    top_right = (slice(0, 14), slice(game.width // 2 + 2, game.width - 8))
    assert not np.array_equal(frame[top_right], before[top_right])  # the opponent's digit changed
    assert np.all(frame[top_right] == pong_mod.OPPONENT_SCORE, axis=2).sum() >= 10
    hold(game, game.serve_delay + 2)
    assert game.ball_vel[0] < 0  # served toward the side that lost the point


def test_pong_match_restarts_after_max_score():
    game = make_game("pong", max_score=1)
    game.reset(0)
    scores = set()
    for _ in range(1500):
        game.step(game.action_space.noop())
        scores.add(game.score)
    assert (0, 1) in scores and game.points[1] >= 2 and max(max(s) for s in scores) == 1


# ---- maze ----

def forward_right(angle):
    return np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])


@pytest.mark.parametrize("key, along, right", [("W", 1, 0), ("S", -1, 0), ("D", 0, 1), ("A", 0, -1)])
def test_maze_movement_keys(key, along, right):
    game = make_game("maze")
    start = game.reset(2)
    pos0, fwd, rgt = np.array(game.player_pos), *forward_right(game.player_angle)
    frame = hold(game, 3, keys=[key])
    moved = np.array(game.player_pos) - pos0
    assert np.sign(round(moved @ fwd, 6)) == along and np.sign(round(moved @ rgt, 6)) == right
    assert np.linalg.norm(moved) > 0.15
    assert not np.array_equal(frame, start)


@pytest.mark.parametrize("encode, sign", [({"keys": ["RIGHT"]}, 1), ({"keys": ["LEFT"]}, -1), ({"dx": 20.0}, 1),
                                          ({"dx": -10.0}, -1), ({"dy": 20.0}, 0)])
def test_maze_turning_with_keys_and_mouse(encode, sign):
    game = make_game("maze")
    start = game.reset(2)
    a0, pos0 = game.player_angle, game.player_pos
    frame = hold(game, 2, **encode)
    turned = (game.player_angle - a0 + np.pi) % (2 * np.pi) - np.pi
    assert np.sign(round(turned, 6)) == sign and game.player_pos == pos0
    assert np.array_equal(frame, start) == (sign == 0)
    per_tick = maze_mod.KEY_TURN if "keys" in encode else maze_mod.MOUSE_TURN * abs(encode.get("dx", 0)) / 20.0
    assert abs(turned) == pytest.approx(2 * per_tick * abs(sign))  # 5 degrees a key tick, 10 at full deflection


def test_maze_walls_block_movement():
    game = make_game("maze")
    game.reset(3)
    stops = []
    for _ in range(120):  # straight ahead into the wall at the end of the corridor
        game.step(game.action_space.encode(keys=["W"]))
        x, y = game.player_pos
        r = maze_mod.PLAYER_RADIUS
        assert not any(game.grid[int(cy), int(cx)] for cx in (x - r, x + r) for cy in (y - r, y + r))
        stops.append(game.player_pos)
    assert stops[-1] == stops[-20]  # it came to rest against the wall
    agent = make_agent("random", game, 0)  # and wandering never ends inside a wall
    for _ in range(300):
        game.step(agent.act())
        assert not game.grid[game.cell]


def passages(game):
    """(open cells reachable from the player, passages between neighbouring open cells) of the game's maze."""
    free = ~game.grid
    seen, todo = {game.cell}, [game.cell]
    while todo:
        r, c = todo.pop()
        for n in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if free[n] and n not in seen:
                seen.add(n)
                todo.append(n)
    assert len(seen) == free.sum()  # every open cell can be reached
    return len(seen), (free[1:] & free[:-1]).sum() + (free[:, 1:] & free[:, :-1]).sum()


def test_maze_is_a_perfect_maze_plus_loops_and_halls():
    cells, edges = passages(make_game("maze", loops=0.0, halls=0))
    assert edges == cells - 1  # a tree: the recursive backtracker alone
    cells, edges = passages(make_game("maze", halls=0))
    assert edges >= cells - 1 + 4  # opened walls make loops
    game = make_game("maze")
    passages(game)
    assert len(game._halls) == 2 and len(game.pillars) >= 4
    for r, c in game._halls:
        assert not game.grid[r - 1:r + 2, c - 1:c + 2].any()


def test_maze_walls_darken_with_distance():
    game = make_game("maze")
    game.reset(3)
    brightness = []
    for _ in range(40):
        frame = game.step(game.action_space.encode(keys=["W"]))
        brightness.append(frame[game.height // 2, game.width // 2].astype(int).sum())
    assert brightness[-1] > brightness[0] + 20


def test_maze_faces_are_shaded_by_side():
    game = make_game("maze")
    game.reset(0)
    g = game.grid
    r, c = next((r, c) for r in range(1, len(g), 2) for c in range(1, len(g), 2) if g[r, c + 1] and g[r + 1, c])
    game._pos = np.array([c + 0.5, r + 0.5])  # walls half a cell away to the east and to the south
    game._wall_rgb[:] = 200  # one colour everywhere and no doors: only the shading differs
    game._door[:] = False
    centre = []
    for angle in (0.0, np.pi / 2):
        game._angle = angle
        centre.append(game.render()[game.height // 2, game.width // 2].astype(int))
    east, south = centre
    assert east[0] > 1.2 * south[0] and np.all(east == east[0]) and np.all(south == south[0])


def test_maze_floor_is_checkered_and_unlike_the_ceiling(monkeypatch):
    game = make_game("maze")
    frame = game.reset(0)
    top, bottom = frame[0].astype(int), frame[-1].astype(int)
    # Bluish above, brown below (where no near wall covers the edge rows).
    assert (top[:, 2] > top[:, 0]).mean() > 0.5 and (bottom[:, 0] > bottom[:, 2]).mean() > 0.5
    monkeypatch.setattr(maze_mod, "FLOOR", (maze_mod.FLOOR[0], maze_mod.FLOOR[0]))
    assert not np.array_equal(game.render(), frame)


def test_maze_pillar_is_drawn_in_front_and_blocks():
    game = make_game("maze")
    game.reset(0)
    r, c = game._halls[0]
    game._pos, game._angle = np.array([c + 1.5, r + 0.5]), np.pi  # one cell east of the hall's pillar, facing it
    frame = game.render()
    i = int(np.argmin(np.hypot(*(game.pillars - (c + 0.5, r + 0.5)).T)))
    expected = maze_mod.PILLARS[i] * np.exp(-0.16) + maze_mod.FOG * (1 - np.exp(-0.16))
    assert np.abs(frame[game.height // 2 + 2, game.width // 2] - expected).max() < 12
    hold(game, 30, keys=["W"])
    assert np.hypot(game.player_pos[0] - c - 0.5, game.player_pos[1] - r - 0.5) >= 0.37


def facing(game, r, c):
    """Centre pixel seen from half a cell in front of wall cell (r, c), or None where no free cell faces it."""
    for angle, (dr, dc) in ((np.pi, (0, 1)), (0.0, (0, -1)), (-np.pi / 2, (1, 0)), (np.pi / 2, (-1, 0))):
        rr, cc = r + dr, c + dc
        if 0 <= rr < len(game.grid) and 0 <= cc < len(game.grid) and not game.grid[rr, cc] and \
                np.hypot(*(game.pillars - (cc + 0.5, rr + 0.5)).T).min() > 0.5:
            game._pos, game._angle = np.array([cc + 0.5, rr + 0.5]), angle
            return game.render()[game.height // 2 + 4, game.width // 2].astype(float)
    return None


def shaded(colours, distance=0.5):
    """What ``colours`` [N, 3] look like on a wall at ``distance``, on either side: [2N, 3]."""
    fog = np.exp(-0.16 * distance)
    return np.concatenate([np.asarray(colours) * side * fog + maze_mod.FOG * (1 - fog) for side in (1.0, 0.72)])


@pytest.mark.parametrize("kind", ["doors", "landmarks"])
def test_maze_doors_and_bright_landmark_walls_are_drawn(kind):
    game = make_game("maze")
    game.reset(0)
    if kind == "doors":
        cells, colours = np.argwhere(game._door), shaded([maze_mod.DOOR])
    else:
        bright = game._wall_rgb.max(-1) - game._wall_rgb.min(-1) > 100  # the quarters' wall colours are muted
        cells, colours = np.argwhere(bright & game.grid), shaded(maze_mod.LANDMARKS)
    seen = [p for p in (facing(game, r, c) for r, c in cells) if p is not None]
    assert len(seen) >= 4
    for pixel in seen:
        assert np.abs(colours - pixel).max(axis=1).min() < 3


def test_maze_landmarks_come_into_view_while_exploring():
    game, _, _, frames = play("maze", "heuristic", 5, 600)
    saturated = (frames.max(-1) - frames.min(-1)) > 100  # bright landmark walls and pillars; plain walls are muted
    assert saturated.any(axis=(1, 2)).mean() > 0.1


# ---- agents ----

class Buttons(Game):
    """A stand-in game with keys, mouse and buttons, to check that the random agent needs only the action space."""
    name = "buttons"

    @property
    def action_space(self):
        return ActionSpace(keys=("A", "B", "C"), mouse=True, buttons=("LEFT", "RIGHT"))

    def reset(self, seed):
        return self.render()

    def step(self, action):
        self.action_space.validate(action)
        return self.render()

    def render(self):
        return np.zeros((self.height, self.width, 3), np.uint8)


@pytest.mark.parametrize("game", [Buttons(), make_game("pong"), make_game("maze")], ids=lambda g: g.name)
def test_random_agent_is_sticky_valid_and_seeded(game):
    space = game.action_space

    def actions_of(seed):
        agent = make_agent("random", game, seed)
        return np.stack([agent.act() for _ in range(300)])

    actions = actions_of(1)
    assert np.array_equal(actions, actions_of(1)) and not np.array_equal(actions, actions_of(2))
    assert actions.dtype == np.float32 and actions.shape[1] == space.size
    n = len(space.keys)
    assert set(np.unique(actions[:, :n])) == {0.0, 1.0} and np.abs(actions).max() <= 1.0
    if space.mouse:
        assert np.abs(actions[:, n:n + 2]).max() > 0.1 and set(np.unique(actions[:, n + 2:])) <= {0.0, 1.0}
    repeats = np.all(actions[2:] == actions[1:-1], axis=1).mean()
    assert 0.5 < repeats < 0.98  # held for a while, then changed


def play(name, agent_name, seed, ticks):
    """``game, actions [T, A], cells visited, frames [T, H, W, 3] (int)`` of an agent playing ``ticks`` ticks."""
    game = make_game(name)
    game.reset(seed)
    agent = make_agent(agent_name, game, seed)
    actions, cells, frames = [], set(), []
    for _ in range(ticks):
        actions.append(agent.act())
        frames.append(game.step(actions[-1]))
        cells.add(getattr(game, "cell", None))
    return game, np.stack(actions), cells, np.stack(frames).astype(int)


def test_pong_heuristic_returns_more_balls_than_random_with_keys_and_mouse():
    heuristic, actions, _, _ = play("pong", "heuristic", 0, 900)
    random = play("pong", "random", 0, 900)[0]
    assert heuristic.returns >= 10 and heuristic.returns > 2 * random.returns
    assert heuristic.points[0] >= 1  # it also wins points: the opponent is beatable
    assert actions[:, :2].any() and np.abs(actions[:, 3]).max() > 0.2  # keys in some rallies, mouse in others
    again = play("pong", "heuristic", 0, 900)[1]
    assert np.array_equal(actions, again)


def test_maze_heuristic_explores_with_every_control():
    game, actions, cells, _ = play("maze", "heuristic", 1, 900)
    random_cells = play("maze", "random", 1, 900)[2]
    assert len(cells) >= 25 and len(cells) > len(random_cells)
    used = actions[:, :6].any(axis=0)
    assert used.all(), dict(zip(game.action_space.keys, used))
    assert (actions[:, 6] > 0.2).any() and (actions[:, 6] < -0.2).any()  # mouse turns both ways


def test_agent_follows_a_reset():
    game = make_game("maze")
    game.reset(1)
    agent = make_agent("heuristic", game, 1)
    first = [game.step(agent.act()) for _ in range(50)]
    game.reset(1)
    agent.rng = np.random.default_rng(1)
    assert np.array_equal(np.stack(first), np.stack([game.step(agent.act()) for _ in range(50)]))
