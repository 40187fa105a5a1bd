"""Control for any game: an inverse-dynamics model reads from frames which keys caused them.

A game without a hand-written control probe (``games.probes``) still has its recording: frames and the actions
that made them. A small convolutional network (``InverseDynamics``) is trained on the recording's training part to
tell, from a few consecutive frames, which keys were held when the middle one was shown (the action that produced
the next frame): ``CONTEXT`` frames up to frame t and ``AFTER`` frames from t + 1 on. It is trained on the real
frames through the world model's codec, the best picture the model could show, so that its blur is not held
against the model.

Its scores are the share of frames whose held keys it names exactly (all of them, and no others), and per key the
balanced accuracy (presses read as presses and releases as releases, averaged: 50 % is chance). Three readings on
the same held-out starts, with the same actions:

- ``real``: the real held-out frames through the codec: the ceiling (some keys change nothing on screen: a paddle
  at the wall, fire while a shot is in flight);
- ``model``: the world model's frames, generated from the same starts with the same actions;
- ``chance``: the real frames paired with the actions of another start: what the network gets from knowing which
  keys are common.

Mouse motion, where the game has it, is read too (its sign along each axis, on frames where the mouse moved),
reported apart from the keys.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

CONTEXT = 2  # frames t - 1 and t: where things were and how they moved
AFTER = 2  # frames t + 1 and t + 2: what the keys held at t did (a game may show it a frame late)
WINDOW = CONTEXT + AFTER


class InverseDynamics(nn.Module):
    """Frames uint8 [B, WINDOW, H, W, 3] -> key logits [B, K] and mouse motion [B, 2] (tanh), any H, W."""

    def __init__(self, keys: int, mouse: bool, width: int = 32):
        super().__init__()
        self.keys, self.mouse = int(keys), bool(mouse)
        c = 3 * WINDOW + 3 * (WINDOW - 1)  # the frames and their differences
        self.body = nn.Sequential(
            nn.Conv2d(c, width, 5, stride=2, padding=2), nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.GELU())
        self.head = nn.Linear(4 * width * 2, self.keys + (2 if self.mouse else 0))

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = frames.float().div(127.5).sub(1.0)  # [B, T, H, W, 3]
        diffs = x[:, 1:] - x[:, :-1]
        x = torch.cat([x, diffs], 1).permute(0, 1, 4, 2, 3).flatten(1, 2)  # [B, C, H, W]
        h = self.body(x)
        h = torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)  # mean and max pooling: any frame size
        out = self.head(h)
        keys = out[:, :self.keys]
        return keys, (torch.tanh(out[:, self.keys:]) if self.mouse else None)


def windows(frames: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every window of a run of frames [T, H, W, 3] with the recorded actions [T, A] (row t held while frame t was
    shown): frames [N, WINDOW, H, W, 3] and the action each window asks about [N, A] (that of its frame
    ``CONTEXT - 1``)."""
    n = len(frames) - WINDOW + 1
    if n < 1:
        return frames[:0, None].repeat(WINDOW, 1), actions[:0]
    idx = np.arange(n)[:, None] + np.arange(WINDOW)[None]
    return frames[idx], actions[CONTEXT - 1:CONTEXT - 1 + n]


@dataclass
class IdmSettings:
    steps: int = 2000  # training steps
    batch: int = 32  # windows a step
    lr: float = 5e-4  # measured on Enduro (held-out real frames, raw): 2e-3 collapsed to one answer for every frame
    #                   (50.0 % balanced), 5e-4 learned (65.2 %: LEFT 69 %, RIGHT 74 %)
    width: int = 32


def _targets(actions: torch.Tensor, keys: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Held keys (multi-hot, 0/1) [B, K] and mouse motion [B, 2] of action vectors [B, A]."""
    return (actions[:, :keys] > 0.5).float(), actions[:, keys:keys + 2]


def training_runs(parts, frames: int, run: int = 256, seed: int = 0, roundtrip=None) -> list[tuple]:
    """About ``frames`` frames of the recording's training ``parts`` (episodes or stretches) in runs of ``run``
    consecutive frames at seeded places, each frame through ``roundtrip`` (uint8 [N, H, W, 3] -> the same) when
    given: [(frames [T, H, W, 3], actions [T, A])]. Passing each frame through the codec once, not once per window
    it appears in, is most of the training's speed."""
    rng = np.random.default_rng(seed)
    parts = [p for p in parts if p.length >= WINDOW]
    if not parts:
        raise ValueError(f"no training part has {WINDOW} frames")
    weights = np.array([p.length for p in parts], np.float64)
    runs, total = [], 0
    while total < frames:
        p = parts[int(rng.choice(len(parts), p=weights / weights.sum()))]
        n = min(run, p.length)
        a = int(rng.integers(0, p.length - n + 1))
        f = p.frames(a, a + n)
        runs.append((roundtrip(f) if roundtrip is not None else f, p.actions(a, a + n)))
        total += n
    return runs


def train_inverse(runs: list[tuple], keys: int, mouse: bool, settings: IdmSettings, seed: int = 0,
                  progress=None) -> InverseDynamics:
    """An InverseDynamics trained on random windows of ``runs`` (``training_runs``). ``progress(k)`` is called as
    steps finish."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    idm = InverseDynamics(keys, mouse, settings.width)
    opt = torch.optim.AdamW(idm.parameters(), lr=settings.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, settings.lr, total_steps=max(1, settings.steps), pct_start=0.1)
    sizes = np.array([len(f) - WINDOW + 1 for f, _ in runs], np.float64)
    for step in range(settings.steps):
        picks = rng.choice(len(runs), settings.batch, p=sizes / sizes.sum())
        starts = [int(rng.integers(0, len(runs[r][0]) - WINDOW + 1)) for r in picks]
        frames = np.stack([runs[r][0][t:t + WINDOW] for r, t in zip(picks, starts)])
        actions = np.stack([runs[r][1][t + CONTEXT - 1] for r, t in zip(picks, starts)])
        held, motion = _targets(torch.from_numpy(actions), keys)
        logits, move = idm(torch.from_numpy(frames))
        loss = F.binary_cross_entropy_with_logits(logits, held)
        if mouse:
            loss = loss + F.mse_loss(move, motion)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None and (step + 1) % 50 == 0:
            progress(50)
    return idm.eval()


@torch.no_grad()
def read_actions(idm: InverseDynamics, frames: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray | None]:
    """The keys the network reads as held [N, K] (bool) and the mouse motion [N, 2] (or None) of windows
    [N, WINDOW, H, W, 3]."""
    keys, moves = [], []
    for i in range(0, len(frames), batch):
        logits, move = idm(torch.from_numpy(np.ascontiguousarray(frames[i:i + batch])))
        keys.append((logits > 0).numpy())
        if move is not None:
            moves.append(move.numpy())
    return np.concatenate(keys), (np.concatenate(moves) if moves else None)


def accuracy(idm: InverseDynamics, frames: np.ndarray, actions: np.ndarray, names=None) -> dict:
    """How well the network reads the actions [N, A] from windows [N, WINDOW, H, W, 3]:

    - ``keys``: the share of windows whose held keys it names exactly (all of them and no others: harsh where
      several keys are held at random, as a random agent does);
    - ``balanced``: per key, the mean of the share of its presses read as pressed and of its releases read as
      released, averaged over the keys that are both pressed and released in these windows (chance: 50 %);
      ``by_key`` holds each key's (named by ``names`` where given);
    - ``mouse``: the share of mouse motions, on windows where the mouse moved, whose sign it reads on both axes
      (None for a game without a mouse, or no motion); ``n``: windows."""
    held = actions[:, :idm.keys] > 0.5
    read, move = read_actions(idm, frames)
    out = {"keys": float((read == held).all(1).mean()) if len(held) else float("nan"), "n": int(len(held))}
    by_key = {}
    for k in range(idm.keys):
        on, off = held[:, k], ~held[:, k]
        if on.any() and off.any():
            name = names[k] if names is not None else str(k)
            by_key[name] = float((read[on, k].mean() + (~read[off, k]).mean()) / 2)
    out["balanced"] = float(np.mean(list(by_key.values()))) if by_key else float("nan")
    out["by_key"] = by_key
    out["mouse"] = None
    if move is not None:
        true = actions[:, idm.keys:idm.keys + 2]
        moved = np.abs(true).max(1) > 0.05
        if moved.any():
            out["mouse"] = float((np.sign(move[moved]) == np.sign(true[moved])).all(1).mean())
    return out
