"""Fidelity: how close a world model's frames stay to the real game's under the same actions, by horizon.

From real start frames of held-out episodes (``train.data.held_out_episodes``), with the recorded actions
(``train.data.causing_actions``), the model generates ``horizon`` frames; each is scored against the real frame at
its horizon 1..H: PSNR (pooled: the PSNR of the mean squared error over the starts) and SSIM, data range 255
(``eval.metrics``). Beside them, two trivial baselines on the same frames: repeat the last start frame, and the
episode's mean frame. **Teacher-forced** next-frame PSNR is horizon 1 from many more starts: always real history,
one generated frame.

Given a state reader (``games.readers``, passed in by ``rollingworld eval``), the same frames are also scored on the
game state they show (``eval.state``: the ball, the score, the wall heights), beside three references read the same
way: the real frames through the model's codec (the floor: the best the model could show), the real frames of
another start at the same horizon (chance: a real-looking frame of the wrong moment) and the repeated last start
frame.

The one fidelity evaluator: ``rollingworld eval`` scores an ``eval.model.EvalModel`` (the engine's tick),
``rollingworld sample`` the teacher's many-step sampler (``engine.sampler.ManyStepSampler``). Any ``model`` with
``lookahead`` and ``generate(start, actions, n, seed)`` (see ``EvalModel.generate``) can be measured.
"""
from __future__ import annotations

import numpy as np

from games.data.errors import InputError
from worldmodel.eval.metrics import mse_per_frame, pooled_psnr, ssim
from worldmodel.eval.state import state_by_horizon
from worldmodel.train.data import causing_actions

DATA_RANGE = 255.0  # uint8 frames


def pick_starts(episodes, n: int, start_frames: int, span: int, rng: np.random.Generator) -> list[tuple]:
    """``n`` (episode, first generated frame) with ``start_frames`` real frames before and ``span`` after."""
    fits = [ep for ep in episodes if ep.length >= start_frames + span]
    if not fits:
        raise InputError(f"no held-out episode is long enough: need {start_frames + span} frames")
    picks = []
    for _ in range(n):
        ep = fits[int(rng.integers(len(fits)))]
        picks.append((ep, int(rng.integers(start_frames, ep.length - span + 1))))
    return picks


def _sessions(picks, start_frames: int, n: int, lookahead: int):
    """Start frames [B, S, H, W, 3], the actions that produced every frame from the first start frame on
    [B, S + n + lookahead, A], and the real frames the model should make [B, n, H, W, 3]."""
    S = start_frames
    start = np.stack([ep.frames(s - S, s) for ep, s in picks])
    actions = np.stack([causing_actions(ep.actions())[s - S:s + n + lookahead] for ep, s in picks])
    real = np.stack([ep.frames(s, s + n) for ep, s in picks])
    return start, actions, real


def _scores(frames: np.ndarray, real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(MSE, SSIM) [B, n] of frames [B, n, H, W, 3] against the real ones."""
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731  [B*n, H, W, 3]
    shape = real.shape[:2]
    return (mse_per_frame(flat(frames), flat(real)).reshape(shape),
            ssim(flat(frames), flat(real), data_range=DATA_RANGE).reshape(shape))


def _summary(mse: list, ssim_: list) -> dict:
    """Pooled PSNR and mean SSIM by horizon of per-start rows [B, n] gathered batch by batch."""
    return {"psnr": pooled_psnr(np.concatenate(mse), DATA_RANGE).tolist(),
            "ssim": np.concatenate(ssim_).mean(0).tolist()}


def _state(reader, codec_roundtrip, gen: np.ndarray, real: np.ndarray, last: np.ndarray) -> dict:
    """State error by horizon of the model's frames gen [B, n, H, W, 3] and of the references on the same real
    frames [B, n, H, W, 3]: the real frames through the codec (if ``codec_roundtrip`` is given), the real frames of the
    next start (rolled along the starts: chance, as long as there are two starts), the last start frames
    [B, 1, H, W, 3] repeated."""
    sources = {"model": gen}
    if codec_roundtrip is not None:
        sources["real_through_codec"] = codec_roundtrip(real.reshape(-1, *real.shape[2:])).reshape(real.shape)
    sources["shuffled"] = np.roll(real, 1, 0)
    sources["repeat_last"] = np.repeat(last, real.shape[1], 1)
    return {name: state_by_horizon(reader, frames, real) for name, frames in sources.items()}


def fidelity(model, episodes, starts: int, horizon: int, teacher_forced: int, start_frames: int = 4,
             seed: int = 0, batch: int = 8, progress=None, reader=None, codec_roundtrip=None) -> dict:
    """PSNR / SSIM by horizon 1..``horizon`` over ``starts`` held-out starts, the baselines, and teacher-forced
    next-frame PSNR / SSIM over ``teacher_forced`` starts. ``progress(n)``: called after each batch. The result's
    ``samples`` holds the first start's frames (start, real, generated) for a picture. With a state ``reader``, the
    result's ``state`` holds the state error by horizon (``_state``); ``codec_roundtrip``: frames [N, H, W, 3] ->
    the same through the model's codec (``drift.through_codec``), for the floor of the state error and the
    ``codec`` baseline (the real frames through the codec: the ceiling of the model's PSNR)."""
    rng = np.random.default_rng(seed)
    look, S = model.lookahead, start_frames
    rows = {k: ([], []) for k in ("model", "repeat_last", "mean_frame")}  # name: (MSE rows, SSIM rows)
    kept = ([], [], [])  # generated, real, last start frame for the state reader: chance needs the other starts
    samples = None
    picks = pick_starts(episodes, starts, S, horizon + look, rng)
    for b0 in range(0, len(picks), batch):
        chunk = picks[b0:b0 + batch]
        start, actions, real = _sessions(chunk, S, horizon, look)
        gen = model.generate(start, actions, horizon, seed + b0)
        mean = np.stack([np.repeat(ep.frames().mean(0, keepdims=True).round().astype(np.uint8), horizon, 0)
                         for ep, _ in chunk])
        made = [("model", gen), ("repeat_last", np.repeat(start[:, -1:], horizon, 1)), ("mean_frame", mean)]
        if codec_roundtrip is not None:  # the real frames through the codec: the most the model could show
            made.append(("codec", codec_roundtrip(real.reshape(-1, *real.shape[2:])).reshape(real.shape)))
        for name, frames in made:
            for into, score in zip(rows.setdefault(name, ([], [])), _scores(frames, real)):
                into.append(score)
        if reader is not None:
            for into, frames in zip(kept, (gen, real, start[:, -1:])):
                into.append(frames)
        if samples is None:
            samples = {"start": start[0], "real": real[0], "generated": gen[0]}
        if progress:
            progress(len(chunk))
    tf = ([], [])
    picks = pick_starts(episodes, teacher_forced, S, 1 + look, rng)
    for b0 in range(0, len(picks), 4 * batch):
        chunk = picks[b0:b0 + 4 * batch]
        start, actions, real = _sessions(chunk, S, 1, look)
        for into, score in zip(tf, _scores(model.generate(start, actions, 1, seed + 10_000 + b0), real)):
            into.append(score)
        if progress:
            progress(len(chunk))
    model_scores = _summary(*rows["model"])
    teacher_forced_scores = _summary(*tf)
    state = {"state": _state(reader, codec_roundtrip, *map(np.concatenate, kept))} if reader is not None else {}
    return {
        "starts": sum(len(x) for x in rows["model"][0]), "horizons": list(range(1, horizon + 1)),
        "data_range": int(DATA_RANGE), **model_scores,
        "baselines": {name: _summary(*rows[name]) for name in rows if name != "model"},
        "teacher_forced": {"starts": sum(len(x) for x in tf[0]), "psnr": teacher_forced_scores["psnr"][0],
                           "ssim": teacher_forced_scores["ssim"][0]},
        "samples": samples, **state,
    }
