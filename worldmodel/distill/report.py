"""What a distillation run shows while it goes: sample videos of the student, a loss plot, a metrics log."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from worldmodel.engine.rollout import Rollout
from worldmodel.train.run import MetricsLog
from worldmodel.eval.metrics import psnr
from worldmodel.train.data import causing_actions


class DistillReport:
    """Writes ``samples/step-N.mp4`` (real | student, rolling window, from a held-out start with the recorded
    actions), ``samples.jsonl`` (PSNR of those frames by horizon), ``metrics.jsonl`` and ``loss.png``."""

    def __init__(self, out: Path, recording, codec, held_out: list, start_frames: int, frames: int = 64):
        self.out, self.codec, self.start_frames = Path(out), codec, start_frames
        self.metrics = MetricsLog(self.out / "metrics.jsonl")
        ep = max(list(held_out) or list(recording), key=lambda e: e.length)  # the longest held-out stretch
        n = min(frames, ep.length - start_frames - 8)
        self.clip = None
        if n >= 8:
            lo = 1
            real = ep.frames()[lo:lo + start_frames + n + 8]
            acts = causing_actions(ep.actions())[lo:lo + start_frames + n + 8]  # acts[t] produced real[t]
            self.clip = (real, acts, n)
        self.fps = recording.fps

    @torch.no_grad()
    def write(self, denoiser, levels: list[float], cfg, history: list[dict], step: int) -> None:
        self.write_log(history)
        if self.clip is None:
            return
        from games.data.video import hstack, write_mp4

        real, acts, n = self.clip
        S = self.start_frames
        gen = Rollout(denoiser, levels, "rolling", cfg.sink, cfg.recent).generate_uint8(
            self.codec, real[:S], acts[S:], n)
        truth = real[S:S + n]
        folder = self.out / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        write_mp4(folder / f"step-{step:06d}.mp4", (hstack(t, g) for t, g in zip(truth, gen)), fps=self.fps, scale=4)
        scores = {h: psnr(gen[h - 1], truth[h - 1], 255.0) for h in (1, 8, 32) if h <= n}
        with open(self.out / "samples.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "psnr_by_horizon": scores}) + "\n")

    def write_log(self, history: list[dict]) -> None:
        self.metrics.write(history)
        self._plot(history)

    def _plot(self, history: list[dict]) -> None:
        series = {key: [(i, h[key]) for i, h in enumerate(history) if key in h and np.isfinite(h[key])]
                  for key in ("ode_loss", "dmd_loss", "critic_loss")}
        series = {k: v for k, v in series.items() if v}
        if not series:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(series), figsize=(4.5 * len(series), 3.6), squeeze=False)
        for ax, (key, points) in zip(axes[0], series.items()):
            x, y = zip(*points)
            ax.plot(x, y, lw=0.6, alpha=0.5)
            k = max(1, len(y) // 30)
            ax.plot(x[k - 1:], np.convolve(y, np.ones(k) / k, mode="valid"), lw=1.5)
            ax.set_title(key.replace("_", " "))
            ax.set_xlabel("logged step")
            ax.set_yscale("log")
        fig.tight_layout()
        fig.savefig(self.out / "loss.png", dpi=90)
        plt.close(fig)
