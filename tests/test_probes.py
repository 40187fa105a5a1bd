"""Control probes (games.probes): the real games obey their keys, frames that ignore the keys score chance, and
the protocol waits out a source's latency."""
from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from games.agents import make_agent
from games.data.errors import InputError
from games.probes import PongProbe, ShuffledFrames, Trial, control_accuracy, probe_for
from games.registry import make_game

GAMES = ["pong", "maze"]
N = 48  # trials: every kind of probe 8 (maze) or 12 (pong) times


class Delayed:
    """The real game seen ``latency`` steps late, like a world model whose frames lag the actions: the effect of the
    action sent in one step() shows in the frame returned by the ``latency``-th step() from it."""

    def __init__(self, game, latency: int):
        self.game, self.latency_ticks, self.action_space = game, latency, game.action_space

    def reset(self, seed):
        frame = self.game.reset(seed)
        self.queue = deque([frame] * (self.latency_ticks - 1))
        return frame

    def step(self, action):
        self.queue.append(self.game.step(action))
        return self.queue.popleft()


def _recorded_frames(name: str, n: int = 600) -> np.ndarray:
    """Frames [n, 64, 64, 3] of the heuristic agent playing ``name``."""
    game = make_game(name)
    agent = make_agent("heuristic", game, 0)
    frames = [game.reset(0)]
    while len(frames) < n:
        frames.append(game.step(agent.act()))
    return np.stack(frames)


@pytest.mark.parametrize("name", GAMES)
def test_real_game_obeys_every_probed_action(name):
    result = control_accuracy(make_game(name), probe_for(name), N, seed=0)
    assert result["n"] == N and result["decided"] >= 0.75 * N, result
    assert result["accuracy"] >= 0.95, result
    for kind, r in result["by_kind"].items():
        assert r["decided"] >= 4 and r["accuracy"] >= 0.9, (kind, r)


@pytest.mark.parametrize("name", GAMES)
def test_frames_that_ignore_the_keys_score_chance(name):
    game = make_game(name)
    shuffled = ShuffledFrames(_recorded_frames(name), game.action_space, seed=1)
    result = control_accuracy(shuffled, probe_for(name), 2 * N, seed=0)
    assert result["decided"] >= 0.75 * 2 * N, result
    assert 0.3 <= result["accuracy"] <= 0.7, result


def test_noise_frames_are_undecidable_in_pong_and_chance_in_maze():
    noise = np.random.default_rng(0).integers(0, 256, (200, 64, 64, 3), dtype=np.uint8)
    pong = control_accuracy(ShuffledFrames(noise, make_game("pong").action_space), probe_for("pong"), N)
    assert pong["decided"] == 0 and np.isnan(pong["accuracy"])  # no paddle to read
    maze = control_accuracy(ShuffledFrames(noise, make_game("maze").action_space), probe_for("maze"), 2 * N)
    assert maze["decided"] == 2 * N and 0.3 <= maze["accuracy"] <= 0.7, maze


@pytest.mark.parametrize("name", GAMES)
def test_protocol_waits_out_the_sources_latency(name):
    probe = probe_for(name)
    waited = control_accuracy(Delayed(make_game(name), 4), probe, N, seed=0)
    assert waited["accuracy"] >= 0.95 and waited["decided"] >= 0.75 * N, waited
    hasty = control_accuracy(Delayed(make_game(name), 4), probe, N, seed=0, latency_ticks=1)
    assert hasty["accuracy"] < waited["accuracy"] - 0.15, (hasty, waited)


def test_pong_reads_the_paddle_and_leaves_the_wall_undecided():
    game, probe = make_game("pong"), probe_for("pong")
    game.reset(3)
    up = game.action_space.encode(keys=["UP"])
    for _ in range(40):  # every few ticks, and then pressed against the top wall
        frame = game.step(up)
        assert probe.paddle_y(frame) == pytest.approx(game.paddle_y, abs=0.5)
    trial = Trial("UP", [], up, expect=-1, hold=4)
    assert probe.score(frame, game.step(up), trial) is None
    down = Trial("DOWN", [], game.action_space.encode(keys=["DOWN"]), expect=1, hold=4)
    assert probe.score(frame, frame, down) is False  # a paddle that does not move does not obey
    assert probe.paddle_y(np.zeros_like(frame)) is None


def test_maze_reads_turns_in_degrees_and_walking_as_vertical_stretch():
    game, probe = make_game("maze"), probe_for("maze")
    before = game.reset(0)  # in the middle of a room, facing an open neighbour
    right = game.step(game.action_space.encode(dx=10.0))  # half deflection: 5 degrees
    for _ in range(2):
        right = game.step(game.action_space.encode(dx=10.0))
    assert probe.turn(before, right) == pytest.approx(15, abs=1)
    assert probe.turn(right, before) == pytest.approx(-15, abs=1)
    game.reset(0)
    for _ in range(6):
        ahead = game.step(game.action_space.encode(keys=["W"]))
    assert probe.stretch(before, ahead) > 1.05
    assert probe.stretch(ahead, before) < 1 / 1.05


def test_world_model_source_runs_the_same_protocol(tmp_path):
    """A world model (random weights) as the play loop's frame source: the protocol waits out its window."""
    from runtime.worlds import WorldSource
    from tests.conftest import tiny_checkpoint
    from worldmodel.engine.config import EngineConfig
    from worldmodel.engine.session import WorldSession

    class Counted(WorldSource):
        steps = 0

        def step(self, action):
            Counted.steps += 1
            return super().step(action)

    class NoLeadIn(PongProbe):  # the protocol without the lead-in, to keep the model's ticks few
        def trials(self, rng, n):
            return [Trial(t.kind, [], t.action, t.expect, t.hold) for t in super().trials(rng, n)]

    session = WorldSession.from_checkpoint(tiny_checkpoint(tmp_path / "tiny.safetensors"), EngineConfig(window=3))
    source = Counted(session)
    result = control_accuracy(source, NoLeadIn(), 2, seed=0)
    assert result["n"] == 2 and 0 <= result["decided"] <= 2
    assert Counted.steps == 2 * (3 + PongProbe.hold + 3 - 1)  # latency still, then hold + latency - 1 held


def test_unknown_game_has_no_probe():
    with pytest.raises(InputError, match="no control probe"):
        probe_for("gym:CartPole-v1")
