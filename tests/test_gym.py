"""Gymnasium environments as Games: frames, action vectors, determinism, automatic resets, and refusals."""
from __future__ import annotations

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")

from games.data.errors import InputError  # noqa: E402
from games.gym_game import GymGame  # noqa: E402
from games.data.recording import Recording  # noqa: E402
from games.data.writer import RecordingWriter  # noqa: E402
from tests.conftest import assert_one_line_error  # noqa: E402


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
    assert game.action_space.keys == ("B0", "B1", "B2") and not game.exclusive_keys
    assert game.default_bindings == {"B0": ("1",), "B1": ("2",), "B2": ("3",)}  # bits are held together
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


def test_a_plugin_package_registers_its_ids_when_named_module_colon_id(cli, tmp_path):
    # a fresh process: the id exists only once the module named before the colon is imported
    r = cli("record", "game=gym:tests.plugin_envs:RollingPlugin/Dial-v0", "episodes=1", "frames=60",
            f"out={tmp_path}/dial", "progress=false")
    assert r.returncode == 0, r.stderr
    rec = Recording(tmp_path / "dial")
    assert rec.action_space.keys == tuple(f"A{i}" for i in range(20))
    actions = rec[0].actions()
    assert rec[0].agent == "random"  # the default agent, auto: this game has no heuristic one
    assert (actions.sum(1) == 1).all()  # it holds one of the 20 keys at a time
    assert len(np.unique(actions.argmax(1))) > 3
    assert_one_line_error(cli("record", "game=gym:RollingPlugin/Dial-v0", "episodes=1", "frames=4",
                              f"out={tmp_path}/x", "progress=false"), "RollingPlugin", "gym:<module>:")
    assert_one_line_error(cli("record", "game=gym:rw_no_such_plugin:Foo-v0", "episodes=1", "frames=4",
                              f"out={tmp_path}/y", "progress=false"), "pip install rw-no-such-plugin")
    assert_one_line_error(cli("record", "game=gym:ALE/Pong-v5", "episodes=1", "frames=4", f"out={tmp_path}/z",
                              "progress=false", env={"PYTHONNOUSERSITE": "1"}), "ALE")


def test_twenty_discrete_actions_get_twenty_keys_that_no_play_control_uses():
    from runtime.config import RuntimeSettings
    from runtime.input import Controls, resolve_bindings

    game = GymGame("tests.plugin_envs:RollingPlugin/Dial-v0", width=20, height=20)
    assert game.exclusive_keys and len(game.action_space.keys) == 20
    codes = resolve_bindings(game.action_space, game.default_bindings)
    assert len(codes) == 20 and sorted(codes.values()) == sorted(game.action_space.keys)
    Controls(RuntimeSettings().controls, codes)  # would raise if a game key were also a play control
    game.reset(0)
    for i in (0, 7, 19):
        frame = game.step(game.action_space.encode([f"A{i}"]))
        assert frame[:, i].min() == 255 and frame.sum() == 255 * 3 * 20
    game.close()
    named = GymGame("tests.plugin_envs:RollingPlugin/Named-v0", width=20, height=20)  # keys named as the env says
    assert named.action_space.keys == ("NOOP", "JUMP", "TURN_LEFT") and named.exclusive_keys
    assert named.to_env_action(named.action_space.encode(["TURN_LEFT"])) == 2
    named.close()


def test_a_joystick_named_discrete_space_is_played_with_held_moves_and_fire():
    from tests.plugin_envs import STICK

    game = GymGame("tests.plugin_envs:RollingPlugin/Stick-v0", width=20, height=20)
    space = game.action_space
    assert space.keys == ("UP", "DOWN", "LEFT", "RIGHT", "FIRE") and not game.exclusive_keys
    assert game.default_bindings["UP"] == ("up", "w") and game.default_bindings["FIRE"] == ("space",)
    named = {(): "NOOP", ("FIRE",): "FIRE", ("UP", "RIGHT"): "UPRIGHT", ("DOWN", "LEFT", "FIRE"): "DOWNLEFTFIRE",
             ("UP", "DOWN"): "UP", ("LEFT", "RIGHT", "FIRE"): "RIGHTFIRE"}  # impossible pairs: the first named move
    for held, name in named.items():
        assert STICK[game.to_env_action(space.encode(list(held)))] == name, held
    game.reset(0)
    frame = game.step(space.encode(["DOWN", "RIGHT", "FIRE"]))
    assert frame[11, 11].min() == 255 and frame[0, :, 0].min() == 255
    game.close()


def test_a_game_named_in_a_file_never_imports_a_module(tmp_path):
    import sys

    from games.registry import make_named_game

    assert make_named_game("pong", 32, 32).width == 32
    sys.modules.pop("this", None)
    with pytest.raises(InputError, match="command line"):
        make_named_game("gym:this:X-v0")
    assert "this" not in sys.modules  # the Zen of Python was not printed: nothing was imported
