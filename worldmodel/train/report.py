"""What a training run shows while it goes: a PNG of samples next to the truth, a loss plot, a metrics log."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from worldmodel.train.data import with_causing_actions
from worldmodel.nn.flow import sample_next_frame
from worldmodel.train.run import MetricsLog
from worldmodel.eval.metrics import psnr


class TrainReport:
    """Writes ``samples.png``, ``loss.png`` and ``metrics.jsonl`` into the run folder."""

    def __init__(self, out: Path, recording, codec, val_set, clips: int = 4):
        self.out = Path(out)
        self.codec = codec
        source = val_set if val_set is not None and len(val_set) else None
        self.clips = None
        if source is not None:
            rng = np.random.default_rng(1234)  # the same clips every time, so grids are comparable
            self.clips = with_causing_actions(*source.sample_batch(rng, clips))  # [n, L, H, W, 3], [n, L, A]
        self.metrics = MetricsLog(self.out / "metrics.jsonl")

    @torch.no_grad()
    def sample_grid(self, denoiser, steps: int) -> tuple[np.ndarray, float]:
        """Rows: last context frame | true next frame | sampled next frame. Returns (grid uint8, mean PSNR)."""
        frames, actions = self.clips
        device = next(denoiser.parameters()).device
        x0 = self.codec.encode(torch.from_numpy(frames).to(device))  # [n, L, C, h, w]
        act = torch.from_numpy(actions).to(device)
        g = torch.Generator(device=device).manual_seed(0)
        pred = sample_next_frame(denoiser, x0[:, :-1], act[:, :-1], act[:, -1], steps, generator=g)
        pred = self.codec.to_uint8(self.codec.decode(pred)).cpu().numpy()  # [n, H, W, 3]
        rows, scores = [], []
        for i in range(len(frames)):
            truth = frames[i, -1]
            scores.append(psnr(pred[i], truth, 255.0))
            rows.append(np.concatenate([frames[i, -2], truth, pred[i]], axis=1))
        return np.concatenate(rows, axis=0), float(np.mean(scores))

    def write(self, denoiser, history: list[dict], step: int, steps: int) -> None:
        from PIL import Image

        self.metrics.write(history)
        if self.clips is not None and step > 0:
            was_training = denoiser.training
            denoiser.eval()
            grid, score = self.sample_grid(denoiser, steps)
            denoiser.train(was_training)
            Image.fromarray(np.repeat(np.repeat(grid, 4, 0), 4, 1)).save(self.out / "samples.png")
            with open(self.out / "samples.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "next_frame_psnr": score, "sample_steps": steps}) + "\n")
        self._plot(history)

    def _plot(self, history: list[dict]) -> None:
        if not history:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [h["step"] for h in history]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(steps, [h["loss"] for h in history], lw=0.6, alpha=0.5, label="train loss")
        k = max(1, len(steps) // 50)
        smooth = np.convolve([h["loss"] for h in history], np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, lw=1.5, label=f"train loss (mean of {k})")
        val = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h and np.isfinite(h["val_loss"])]
        if val:
            ax.plot(*zip(*val), "o-", label="held-out loss (EMA)")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.legend()
        fig.tight_layout()
        fig.savefig(self.out / "loss.png", dpi=90)
        plt.close(fig)
