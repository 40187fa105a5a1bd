"""The collapse detector: real frames of a game pass, a flat field and colour noise are caught."""
import numpy as np
import pytest

from games.agents import make_agent
from games.registry import make_game
from worldmodel.eval.collapse import CollapseDetector


def _play(name, n, seed):
    game = make_game(name)
    agent = make_agent("random", game, seed)
    frames = [game.reset(seed)]
    for _ in range(n - 1):
        frames.append(game.step(agent.act()))
    return np.stack(frames)


@pytest.mark.parametrize("name", ["pong", "maze"])
def test_real_frames_pass_and_collapsed_ones_are_caught(name):
    # fitted as the eval fits it: frames of many episodes (a maze's colours vary from one layout to the next)
    detector = CollapseDetector(np.concatenate([_play(name, 200, seed) for seed in range(16)]))
    other = np.concatenate([_play(name, 100, seed) for seed in (41, 42)])  # episodes it was not fitted on
    assert detector.collapsed(other) <= 0.02
    flat = np.zeros_like(other[:20])
    flat[..., 1] = 200  # the bright-green field a collapsed maze ends in
    assert detector.collapsed(flat) == 1.0
    noise = np.random.default_rng(0).integers(0, 256, other[:20].shape, dtype=np.uint8)
    assert detector.collapsed(noise) == 1.0
    assert detector.off_palette(noise).mean() > 0.5 and detector.off_palette(other).mean() < 0.01
    # half collapsed, half real: the share is what it says
    assert detector.collapsed(np.concatenate([flat, other[:20]])) == pytest.approx(0.5, abs=0.05)
