"""The plumbing of a training run, one copy for teacher training, codec training and distillation.

- ``step_generators``: the random sources of one draw, a pure function of (seed, rank, phase, step, sub). This is
  what makes ``resume=true`` exact: a run resumed from the state saved after step k draws what an uninterrupted run
  would have drawn, tensor for tensor.
- ``EMA``: the exponential moving average of a network's weights, the weights that ship.
- ``RunFolder``: the run's folder (settings, training state, shipped checkpoints). A folder that holds a run is
  continued with ``resume=true``, never trained over. ``MetricsLog``: its ``metrics.jsonl``.
- ``TrainingRun``: what teacher training and distillation start from: the processes and the folder.
- ``optimizer_step`` and ``warmup_lr``: one step of an optimizer, with gradient clipping (and averaging across
  processes for a network outside DDP); the linear warm-up of the learning rate.
- ``Cadence`` and ``Deadline``: a checkpoint every few minutes; the time limit of one invocation.
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from games.data.errors import InputError
from worldmodel.checkpoint import save_checkpoint
from worldmodel.train.processes import Processes, start_processes
from worldmodel.train.state import load_train_state, save_train_state


def step_generators(seed: int, rank: int, phase: str, step: int, sub: int = 0,
                    device: torch.device | str = "cpu") -> tuple[np.random.Generator, torch.Generator]:
    """The random sources of one draw of training: a numpy Generator (which clips, which levels) and a torch
    Generator on ``device`` (the noise), a pure function of (seed, rank, phase, step, sub), hence exact resume.

    ``phase`` names the draw's role (``teacher``, ``critic``, ``validation``...), ``sub`` numbers the draws of one
    step (the critic's steps within a student step). The key is hashed whole (SHA-256 of its repr), so distinct keys
    never share a seed; packing it into one number, like ``step * 1000 + sub``, made critic draw 1000 of step k
    the draw 0 of step k + 1."""
    key = repr((int(seed), int(rank), str(phase), int(step), int(sub)))
    digest = hashlib.sha256(key.encode()).digest()
    g = torch.Generator(device=device)
    g.manual_seed(int.from_bytes(digest[16:24], "little"))
    return np.random.default_rng(int.from_bytes(digest[:16], "little")), g


class EMA:
    """The exponential moving average of ``source``'s weights: a frozen copy, the weights a run ships. The decay
    warms up as min(decay, (1 + k) / (10 + k)) at update k, so that a short run still gets a useful average."""

    def __init__(self, source: nn.Module, decay: float):
        self.source, self.decay = source, decay
        self.net = copy.deepcopy(source).requires_grad_(False)

    @torch.no_grad()
    def restart(self) -> None:
        """Start the average afresh from the source's weights now (a new phase of training)."""
        for pe, p in zip(self.net.parameters(), self.source.parameters()):
            pe.copy_(p)

    @torch.no_grad()
    def update(self, k: int) -> None:
        decay = min(self.decay, (1 + k) / (10 + k))
        for pe, p in zip(self.net.parameters(), self.source.parameters()):
            pe.lerp_(p, 1.0 - decay)


class RunFolder:
    """The folder of one run: ``config.json`` (its settings, which ``resume=true`` reads back), ``state.safetensors``
    (all that exact resume needs: weights, optimizers, step counters) and the checkpoints it ships."""

    def __init__(self, path: str | Path, resume: bool):
        self.path, self.resume = Path(path), resume
        self.state = self.path / "state.safetensors"

    def load_state(self, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]) -> dict | None:
        """Resuming: load the saved run into ``modules`` and ``optimizers`` and return its ``extra`` dict. None
        when the folder holds no run; an InputError when it holds one and ``resume`` is false."""
        if not self.state.exists():
            return None
        if not self.resume:
            raise InputError(f"{self.path} already holds a run; resume=true continues it, or choose another out=")
        return load_train_state(self.state, modules, optimizers)

    def write_config(self, cfg) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "config.json").write_text(json.dumps(asdict(cfg), indent=2))

    def save_state(self, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                   extra: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        save_train_state(self.state, modules, optimizers, extra)

    def ship(self, name: str, metadata: dict, **groups: nn.Module) -> Path:
        """Write the checkpoint ``name`` atomically: ``metadata`` and the weights of each module under its group
        (``model=ema, codec=codec`` gives tensors ``model.*`` and ``codec.*``)."""
        tensors = {f"{group}.{k}": v for group, module in groups.items() for k, v in module.state_dict().items()}
        return save_checkpoint(self.path / name, tensors, metadata)


class MetricsLog:
    """``metrics.jsonl``: a JSON line for each row of the run's history. The first write rewrites the file from the
    history (a resumed run's history is the saved state's: rows logged after that state was saved go), later ones
    append the new rows."""

    def __init__(self, path: str | Path):
        self.path, self.logged = Path(path), None

    def write(self, history: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w" if self.logged is None else "a") as f:
            for row in history[self.logged or 0:]:
                f.write(json.dumps(row) + "\n")
        self.logged = len(history)


class TrainingRun:
    """A run under way (teacher training, distillation): its settings ``cfg``, the processes it trains in (one, or
    several under torchrun: ``rank``, ``world``, ``device``) and its ``folder``."""

    def __init__(self, cfg):
        self.cfg = cfg
        procs = self.procs = start_processes(cfg.device, cfg.threads)
        self.distributed, self.rank, self.world, self.device = procs.distributed, procs.rank, procs.world, procs.device
        self.folder = RunFolder(cfg.out, cfg.resume)
        self.out = self.folder.path


def optimizer_step(loss: torch.Tensor, net: nn.Module, opt: torch.optim.Optimizer, clip: float,
                   average_over: Processes | None = None) -> float:
    """Back-propagate ``loss`` and step ``opt`` with ``net``'s gradients clipped to norm ``clip``; returns the norm
    before clipping. ``average_over``: the processes whose gradients to average first, for a network that DDP does
    not wrap."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if average_over is not None and average_over.distributed:
        for p in net.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= average_over.world
    grad_norm = float(torch.nn.utils.clip_grad_norm_(net.parameters(), clip))
    opt.step()
    return grad_norm


def warmup_lr(lr: float, warmup: int, step: int) -> float:
    """The learning rate of ``step``: rising linearly to ``lr`` over the first ``warmup`` steps."""
    return lr * min(1.0, (step + 1) / max(warmup, 1))


class Cadence:
    """Something done every ``minutes`` of wall time (a checkpoint), counted from the end of the last time."""

    def __init__(self, minutes: float):
        self.seconds, self.last = minutes * 60, time.monotonic()

    def run(self, action) -> None:
        """Call ``action()`` if ``minutes`` have passed since it last finished (or since the start)."""
        if time.monotonic() - self.last > self.seconds:
            action()
            self.last = time.monotonic()


class Deadline:
    """The time limit of one invocation, ``minutes`` from now (0 = none)."""

    def __init__(self, minutes: float):
        self.at = time.monotonic() + minutes * 60 if minutes else None

    def passed(self) -> bool:
        return self.at is not None and time.monotonic() > self.at
