"""Control for any game: the inverse-dynamics reading, and the recording replayed as a drift session."""
from __future__ import annotations

import numpy as np
import pytest

from games.data.recording import Recording
from games.record import record_dataset
from games.registry import make_game


@pytest.fixture(scope="module")
def pong(tmp_path_factory):
    root = tmp_path_factory.mktemp("inverse") / "pong"
    record_dataset(root, lambda: make_game("pong"), "heuristic", 3, 500, progress=False)
    return Recording(root)


def test_the_inverse_dynamics_network_reads_real_pong_keys_far_above_chance(pong):
    from worldmodel.eval import inverse
    from worldmodel.train.data import Stretch

    runs = inverse.training_runs([Stretch(pong[0]), Stretch(pong[1])], 1000, run=250, seed=0)
    assert sum(len(f) for f, _ in runs) == 1000 and all(len(f) == len(a) == 250 for f, a in runs)
    # a short run at a higher rate than the eval's (its 2,000 steps at 5e-4): the same network, quicker
    idm = inverse.train_inverse(runs, keys=2, mouse=True, settings=inverse.IdmSettings(steps=250, lr=2e-3), seed=0)
    frames, actions = inverse.windows(pong[2].frames(), pong[2].actions())  # an episode it never saw
    assert len(frames) == 500 - inverse.WINDOW + 1
    np.testing.assert_array_equal(actions, pong[2].actions()[inverse.CONTEXT - 1:][:len(frames)])
    real = inverse.accuracy(idm, frames, actions)
    chance = inverse.accuracy(idm, frames, np.roll(actions, 97, 0))  # the frames with other moments' keys
    held = (actions[:, :2] > 0.5).any(1).mean()
    assert real["keys"] > chance["keys"] + 0.15 and real["keys"] > 1 - held / 2, (real, chance, held)
    assert real["balanced"] > 0.75 and abs(chance["balanced"] - 0.5) < 0.1 and set(real["by_key"]) == {"0", "1"}
    # frames that say nothing about the keys (every window the same frame) are read no better than chance
    still = np.repeat(frames[:, :1], inverse.WINDOW, 1)
    assert inverse.accuracy(idm, still, actions)["keys"] < real["keys"] - 0.1


def test_the_recording_replayed_is_a_session_of_its_actions_and_frames_looped(pong):
    from games.scripted import replayed_play
    from worldmodel.train.data import Stretch

    parts = [Stretch(pong[2], 100, 400), Stretch(pong[0], 0, 50)]
    actions, kept = replayed_play(parts, 700, keep={0, 299, 300, 349, 350, 700})
    assert actions.shape == (700, pong.action_space.size)
    np.testing.assert_array_equal(actions[:300], pong[2].actions(100, 400))
    np.testing.assert_array_equal(actions[300:350], pong[0].actions(0, 50))
    np.testing.assert_array_equal(actions[350:650], pong[2].actions(100, 400))  # from the start again
    np.testing.assert_array_equal(kept[0], pong[2].frames(100, 101)[0])
    np.testing.assert_array_equal(kept[300], pong[0].frames(0, 1)[0])
    np.testing.assert_array_equal(kept[350], pong[2].frames(100, 101)[0])
    np.testing.assert_array_equal(kept[700], pong[2].frames(100, 101)[0])  # 700 = 2 x 350: the start again
    np.testing.assert_array_equal(kept[349], pong[0].frames(49, 50)[0])
