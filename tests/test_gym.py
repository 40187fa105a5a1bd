"""Gymnasium environments as Games: frames, action vectors, determinism, automatic resets, and refusals."""
from __future__ import annotations

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")

from games.data.errors import InputError  # noqa: E402
from games.gym_game import GymGame  # noqa: E402
from games.data.recording import Recording  # noqa: E402
from games.data.writer import RecordingWriter  # noqa: E402


def play(game: GymGame, seed: int, steps: int, action_seed: int = 0):
    """Frames [steps + 1, H, W, 3] and actions [steps, A] of a random one-key-at-a-time player."""
    rng = np.random.default_rng(action_seed)
    frames, actions = [game.reset(seed)], []
    for _ in range(steps):
        held = [game.action_space.keys[rng.integers(game.action_space.size)]] if rng.random() < 0.8 else []
        a = game.action_space.encode(held)
        actions.append(a)
        frames.append(game.step(a))
    return np.stack(frames), np.stack(actions)


def test_cartpole_records_frames_and_actions(tmp_path):
    game = GymGame("CartPole-v1", width=48, height=32)
    assert game.action_space.keys == ("A0", "A1") and game.default_bindings == {"A0": ("1",), "A1": ("2",)}
    frames, actions = play(game, seed=3, steps=80)
    # Record like any game: the action stored with a frame is the one held while it was shown.
    with RecordingWriter(tmp_path / "cp", game.name, game.action_space, game.fps, 32, 48) as w:
        with w.begin_episode(seed=3, agent="random") as ep:
            for f, a in zip(frames[:-1], actions):
                ep.append(f, a)
    rec = Recording(tmp_path / "cp")
    got = rec.episodes[0].frames(0, 80)
    assert got.shape == (80, 32, 48, 3) and got.dtype == np.uint8
    for a in rec.episodes[0].actions(0, 80):
        game.action_space.validate(a)
    assert game.episode >= 1, "80 random steps should end at least one CartPole episode and reset automatically"
    assert frames.std(axis=0).max() > 0  # the picture moves
    game.close()


def test_cartpole_is_deterministic_for_a_seed():
    a, b, c = (GymGame("CartPole-v1") for _ in range(3))
    fa, _ = play(a, seed=7, steps=60)
    fb, _ = play(b, seed=7, steps=60)
    fc, _ = play(c, seed=8, steps=60)
    np.testing.assert_array_equal(fa, fb)  # across automatic resets too
    assert a.episode >= 1
    assert not np.array_equal(fa, fc)


def test_discrete_key_mapping():
    game = GymGame("CartPole-v1")
    space = game.action_space
    assert game.to_env_action(space.noop()) == 0  # nothing held: action 0
    assert game.to_env_action(space.encode(["A1"])) == 1
    assert game.to_env_action(space.encode(["A0", "A1"])) == 0  # a tie: the first held key
    with pytest.raises(InputError):
        game.to_env_action(np.zeros(5, np.float32))
    game.close()


class _Lights(gym.Env):
    """A MultiBinary(3) toy: each held bit lights one third of the picture."""
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode=None):
        self.action_space = gym.spaces.MultiBinary(3)
        self.observation_space = gym.spaces.MultiBinary(3)
        self.render_mode, self.bits = render_mode, np.zeros(3, np.int8)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.bits[:] = 0
        return self.bits.copy(), {}

    def step(self, action):
        self.bits = np.asarray(action, np.int8)
        return self.bits.copy(), 0.0, False, False, {}

    def render(self):
        img = np.zeros((30, 30, 3), np.uint8)
        for i, bit in enumerate(self.bits):
            img[:, 10 * i:10 * i + 10, i] = 255 * int(bit)
        return img


class _Blind(_Lights):
    metadata = {"render_modes": [], "render_fps": 10}


gym.register(id="rollingworld-test/Lights-v0", entry_point=_Lights)
gym.register(id="rollingworld-test/Blind-v0", entry_point=_Blind)


def test_multibinary_keys_drive_the_env():
    game = GymGame("rollingworld-test/Lights-v0", width=30, height=30)
    assert game.action_space.keys == ("B0", "B1", "B2") and game.default_bindings == {}
    assert game.fps == 10
    game.reset(0)
    frame = game.step(game.action_space.encode(["B0", "B2"]))
    assert frame[:, :10, 0].min() == 255 and frame[:, 10:20].max() == 0 and frame[:, 20:, 2].min() == 255


@pytest.mark.parametrize("env_id,why", [
    ("Pendulum-v1", "not supported"),  # Box actions
    ("NoSuchGame-v0", "cannot make"),
    ("CartPole-v99", "cannot make"),
    ("rollingworld-test/Blind-v0", "rgb_array"),
])
def test_unusable_envs_are_input_errors(env_id, why):
    with pytest.raises(InputError, match=why) as err:
        GymGame(env_id)
    assert "\n" not in str(err.value)
