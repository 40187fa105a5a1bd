"""Drift over a long session: Q of the model's frames early and late in a session driven by real actions.

The real game is played for ``minutes`` by someone else (``rollingworld eval``: a scripted agent, ``games.scripted``);
its actions drive the model from the session's first real frames through the engine (``session.WorldSession``: the
session a player gets). Q (``quality.FrameQuality``, FD-pix; lower is better) is scored on blocks of a few seconds
spread over the session, the first and the last included, and dDrift = Q(last) - Q(first) (positive: it got
worse). The same blocks of the real game, raw and through the model's codec, are scored beside the model's: the
codec's own loss then shows apart from what the world model adds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from games.data.errors import InputError
from worldmodel.train.data import causing_actions


def block_starts(n_frames: int, block: int, count: int) -> list[int]:
    """``count`` evenly spread starts of ``block``-frame blocks in a session of ``n_frames``, first and last
    included (the first 5 s and the last 5 s of dDrift)."""
    if n_frames < 2 * block:
        raise InputError(f"a drift session needs at least two blocks: {2 * block} frames, got {n_frames}")
    return sorted({int(round(x)) for x in np.linspace(0, n_frames - block, max(2, count))})


SNAPSHOT_SECONDS = (0, 1, 5, 30, 60, 300, 600)  # times of the session shown side by side with the real game


def snapshot_frames(n_frames: int, fps: int, seconds=SNAPSHOT_SECONDS) -> tuple[tuple[float, int], ...]:
    """(time in seconds, generated frame index) of each of ``seconds`` that falls inside a session of
    ``n_frames``, then its last frame, shown as the session's end (600 s of a 10-minute session)."""
    inside = [(float(t), int(round(t * fps))) for t in seconds if round(t * fps) < n_frames - 1]
    return tuple(inside) + ((n_frames / fps, n_frames - 1),)


@dataclass(frozen=True)
class DriftPlan:
    """A drift session: ``frames`` generated after ``start_frames`` real ones, the blocks of ``block`` frames
    Q scores, starting at ``starts`` (0: the first generated frame), and the single frames ``snapshots`` (time,
    frame index) shown beside the real game's."""
    frames: int
    block: int
    starts: tuple[int, ...]
    start_frames: int
    fps: int
    snapshots: tuple[tuple[float, int], ...] = ()

    @classmethod
    def of(cls, minutes: float, fps: int, block_seconds: float = 5.0, blocks: int = 11,
           start_frames: int = 4) -> "DriftPlan":
        n, block = int(round(minutes * 60 * fps)), int(round(block_seconds * fps))
        return cls(n, block, tuple(block_starts(n, block, blocks)), start_frames, fps, snapshot_frames(n, fps))

    @property
    def real_frames(self) -> int:
        """Steps of the real session after its first frame: the model starts from frames 0 .. S-1 and makes the
        frames S .. S + n - 1 of it."""
        return self.start_frames + self.frames

    def kept(self) -> set[int]:
        """Indices of the real session's frames that the model starts from or Q scores."""
        S = self.start_frames
        return (set(range(S)) | {S + s + i for s in self.starts for i in range(self.block)}
                | {S + t for _, t in self.snapshots})


def drift_session(em, plan: DriftPlan, actions: np.ndarray, real: dict, seed: int = 0, compile: bool = False,
                  progress=None) -> dict:
    """The model ``em`` (``eval.model.EvalModel``) in the engine along a real session: ``actions``
    [plan.real_frames, A] as the game recorded them (row t held while real frame t was shown), ``real``
    {index: frame} holding at least ``plan.kept()``. Returns the frames Q is scored on: ``model`` and ``real``
    uint8 [blocks, block frames, H, W, 3], the blocks' start times in seconds, and the snapshots:
    ``snapshot_seconds`` [K], ``snapshot_model`` and ``snapshot_real`` uint8 [K, H, W, 3]."""
    S, n, block = plan.start_frames, plan.frames, plan.block
    want = {s + i for s in plan.starts for i in range(block)} | {t for _, t in plan.snapshots}
    caused = causing_actions(actions)  # row t: the action that produced real frame t
    session = em.session(compile)
    session.reset(np.stack([real[i] for i in range(S)]), seed=seed)
    gen = {}
    for t in range(n):
        f = session.step(caused[S + t])  # generated frame t stands for real frame S + t
        if t in want:
            gen[t] = f
        if progress and (t + 1) % 100 == 0:
            progress(100)
    return {"frames": n, "fps": plan.fps, "block_frames": block, "block_seconds": [s / plan.fps for s in plan.starts],
            "model": np.stack([np.stack([gen[s + i] for i in range(block)]) for s in plan.starts]),
            "real": np.stack([np.stack([real[S + s + i] for i in range(block)]) for s in plan.starts]),
            "snapshot_seconds": np.array([t for t, _ in plan.snapshots], np.float64),
            "snapshot_model": np.stack([gen[i] for _, i in plan.snapshots]),
            "snapshot_real": np.stack([real[S + i] for _, i in plan.snapshots])}


def through_codec(codec, frames: np.ndarray, batch: int = 256) -> np.ndarray:
    """Frames uint8 [N, H, W, 3] encoded and decoded by ``codec``: what the model could show at best."""
    with torch.no_grad():
        return np.concatenate([codec.to_uint8(codec.decode(codec.encode(torch.from_numpy(frames[i:i + batch]))))
                               .numpy() for i in range(0, len(frames), batch)])


def drift_scores(quality, blocks: dict) -> dict:
    """Q of every block of each kind of frames in ``blocks`` (name -> blocks: the model's, the real game's and the
    real game's through the codec); dDrift = Q(last block) - Q(first block) of each, and the spread (standard
    deviation) of Q over the blocks: a dDrift inside the spread is noise, not drift."""
    curves = {name: [quality.score(b) for b in frames] for name, frames in blocks.items()}
    return {"q": curves, "drift": {k: {"first": v[0], "last": v[-1], "ddrift": v[-1] - v[0],
                                       "spread": float(np.std(v))} for k, v in curves.items()}}
