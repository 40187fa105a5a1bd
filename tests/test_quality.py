"""FD-pix (worldmodel.eval.quality): real clips score low and alike; every corruption raises Q steadily with its strength.

Recorded with the heuristic agents: the reference is fitted on some episodes, the clips scored come from others. The
maze is varied (a new map every episode, wall colours by quarter), so its reference gets more episodes.
"""
from __future__ import annotations

import numpy as np
import pytest

from games.data.recording import Recording
from games.pong import BACKGROUND, BALL, PLAYER
from games.record import record_dataset
from games.registry import make_game
from worldmodel.eval.quality import FrameQuality, corrupt, drift

CLIP = 150  # 5 s at 30 fps, the length dDrift scores
FIT_EPISODES = {"pong": 4, "maze": 10}
HELD_OUT = 2  # episodes of 2 clips each
LEVELS = {  # increasing strengths, the weakest one already visible
    "blur": (0.6, 1.0, 1.5, 2.5),  # sigma, pixels
    "noise": (4, 8, 16, 32),  # sigma, grey levels
    "colour": (16, 24, 32, 64),  # channel offsets, grey levels
    "freeze": (2, 3, 5, 10),  # every frame held this many times
}


@pytest.fixture(scope="module", params=["pong", "maze"])
def game(request, tmp_path_factory):
    """(name, fitted FrameQuality, held-out real clips [CLIP, 64, 64, 3])."""
    name = request.param
    root = tmp_path_factory.mktemp("quality") / name
    fit = FIT_EPISODES[name]
    record_dataset(root, lambda: make_game(name), "heuristic", fit + HELD_OUT, 2 * CLIP, progress=False)
    rec = Recording(root)
    quality = FrameQuality([rec[i].frames() for i in range(fit)])
    held = [rec[i].frames(s, s + CLIP) for i in range(fit, fit + HELD_OUT) for s in (0, CLIP)]
    return name, quality, held


def test_real_clips_score_low_and_alike(game):
    name, quality, held = game
    scores = [quality.score(c) for c in held]
    assert max(scores) < 3.0, (name, scores)
    assert max(scores) < 4 * min(scores), (name, scores)


@pytest.mark.parametrize("kind", sorted(LEVELS))
def test_q_rises_steadily_with_each_corruption(game, kind):
    name, quality, held = game
    worst_real = max(quality.score(c) for c in held)
    for clip in held:
        real = quality.score(clip)
        scores = [quality.score(corrupt(clip, kind, s)) for s in LEVELS[kind]]
        assert all(b > a for a, b in zip(scores, scores[1:])), (name, kind, real, scores)
        assert scores[0] > 1.3 * real, (name, kind, real, scores)  # the weakest level is seen in its own clip
        assert scores[1] > worst_real, (name, kind, worst_real, scores)  # and beyond the spread of real clips


def test_frozen_clip_scores_above_every_real_clip(game):
    name, quality, held = game
    worst_real = max(quality.score(c) for c in held)
    for clip in held:
        frozen = np.repeat(clip[:1], len(clip), axis=0)
        assert quality.parts(frozen)["motion"] > 5.0
        assert quality.score(frozen) > 2 * worst_real, (name, worst_real, quality.score(frozen))


def test_lost_sprites_raise_q():
    """Pong's sprites are a few dozen pixels on a flat field: erasing the ball or the player's paddle is seen."""
    frames = _play("pong", seeds=range(5), n=300)
    quality = FrameQuality(frames[:4])
    clip = frames[4][:CLIP]

    def erase(colour):
        out = clip.copy()
        out[(out == np.array(colour, np.uint8)).all(-1)] = BACKGROUND
        return out

    real = quality.score(clip)
    assert quality.score(erase(BALL)) > 2 * real
    assert quality.score(erase(PLAYER)) > 2 * real


def test_drift_is_last_minus_first_and_sees_a_session_that_degrades():
    frames = _play("pong", seeds=range(4), n=300)
    quality = FrameQuality(frames[:3])
    session = frames[3]  # 10 s of real play
    steady = drift(quality, session, fps=30)
    assert steady["ddrift"] == pytest.approx(steady["last"] - steady["first"])
    assert abs(steady["ddrift"]) < 1.5
    decaying = session.copy()
    decaying[CLIP:] = corrupt(session[CLIP:], "blur", 1.0)
    worse = drift(quality, decaying, fps=30)
    assert worse["first"] == pytest.approx(steady["first"])
    assert worse["ddrift"] > 10 * max(abs(steady["ddrift"]), 1.0)


def test_codec_latents_add_a_family():
    from worldmodel.nn.codec import make_codec

    frames = _play("pong", seeds=range(3), n=200)
    plain, with_codec = FrameQuality(frames[:2]), FrameQuality(frames[:2], codec=make_codec({"type": "pixels"}))
    assert with_codec.name == "FD-pix+enc" and plain.name == "FD-pix"
    clip = frames[2]
    parts = with_codec.parts(clip)
    assert set(parts) == {"gamut", "palette", "structure", "motion", "latent", "total"}
    assert with_codec.parts(corrupt(clip, "colour", 32))["latent"] > 10 * parts["latent"]


def test_q_is_deterministic():
    frames = _play("maze", seeds=range(3), n=120)
    a, b = FrameQuality(frames[:2]), FrameQuality(frames[:2])
    assert a.score(frames[2]) == b.score(frames[2])


def _play(name: str, seeds, n: int) -> list[np.ndarray]:
    """Clips [n, 64, 64, 3] of the heuristic agent playing ``name`` from each seed (without writing a dataset)."""
    from games.agents import make_agent

    clips = []
    for seed in seeds:
        g = make_game(name)
        agent = make_agent("heuristic", g, seed)
        frames = [g.reset(seed)]
        while len(frames) < n:
            frames.append(g.step(agent.act()))
        clips.append(np.stack(frames))
    return clips
