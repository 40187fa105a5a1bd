"""Codec training (optional stage 1): a conv autoencoder on frames of a recording.

``rollingworld train-codec data=DIR out=RUN minutes=15`` trains ``ConvAutoencoder`` on pairs of consecutive frames
(the pair gives the "changed since the previous frame" loss weights), with a progress bar, atomic checkpoints
every few minutes and exact resume (each step's random draws are seeded by (seed, "codec", step): ``run.py``).
It writes ``RUN/codec.safetensors`` (kind ``codec``: calibrated weights + config) which ``train codec=...`` uses,
and reports reconstruction PSNR on held-out episodes next to the mean-frame baseline.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from games.data.errors import InputError
from games.data.recording import Recording
from worldmodel.nn.codec import ConvAutoencoder, evaluate
from worldmodel.train.data import ClipDataset, split_recording
from worldmodel.train.run import Cadence, Deadline, RunFolder, optimizer_step, step_generators, warmup_lr


@dataclass
class CodecTrainConfig:
    data: str = "???"  # dataset folder
    out: str = "???"  # run folder
    down: int = 4  # spatial downsampling: 64x64 frames -> 16x16 latents
    latent_channels: int = 4
    width: int = 16  # channels at half resolution
    blocks: int = 1  # residual blocks per level
    batch: int = 8  # pairs of consecutive frames per step
    lr: float = 2e-3
    warmup: int = 100
    steps: int = 0  # optimizer steps (0 = until the time budget ends); with target_psnr, the most it may take
    minutes: float = 0.0  # time budget of this invocation
    # train until the held-out reconstruction reaches this PSNR (dB), checked every check_every steps (0: off): the
    # codec is the ceiling of every frame the world model shows, so its length is chosen from a measurement
    target_psnr: float = 0.0
    check_every: int = 500
    checkpoint_minutes: float = 3.0
    val_fraction: float = 0.1  # held out as the teacher's (split_recording), for the reconstruction scores
    split_gap: int = 64
    threads: int = 0
    seed: int = 0
    resume: bool = False
    progress: bool = True


def _codec_metadata(codec, rec: Recording, cfg: CodecTrainConfig, step: int, scores: dict,
                    reached: bool = False) -> dict:
    return {"kind": "codec", "model": {"size": "codec"}, "action_space": rec.action_space.to_dict(),
            "codec": codec.config(), "schedule": {}, "step": step,
            "provenance": {"data": str(Path(cfg.data).resolve()), "game": rec.game, "frames": rec.total_frames,
                           "train_config": asdict(cfg), "held_out": scores, "target_reached": reached,
                           "time": time.strftime("%Y-%m-%d %H:%M:%S")}}


def train_codec(cfg: CodecTrainConfig) -> dict:
    """Train (or resume) the autoencoder; returns the held-out scores of the saved codec."""
    if not cfg.steps and not cfg.minutes:
        raise InputError("say how long to train: steps=N or minutes=M")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rec = Recording(cfg.data)
    train, val = split_recording(rec, cfg.val_fraction, seed=cfg.seed, gap=cfg.split_gap)
    pairs = ClipDataset(rec, 2, episodes=train)
    val_frames = torch.from_numpy(np.concatenate([s.frames()[::4] for s in val])) if val else None
    torch.manual_seed(cfg.seed)
    codec = ConvAutoencoder(down=cfg.down, latent_channels=cfg.latent_channels, width=cfg.width, blocks=cfg.blocks)
    opt = torch.optim.AdamW(codec.parameters(), lr=cfg.lr, weight_decay=0.0)
    folder = RunFolder(cfg.out, cfg.resume)
    extra = folder.load_state({"codec": codec}, {"opt": opt})
    step = int(extra["step"]) if extra is not None else 0
    reached = bool(extra.get("reached", False)) if extra is not None else False
    folder.write_config(cfg)
    if cfg.target_psnr and val_frames is None:
        raise InputError("target_psnr needs held-out frames to measure (val_fraction > 0)")

    def save() -> dict:
        folder.save_state({"codec": codec}, {"opt": opt}, {"step": step, "reached": reached})
        calib_rng, _ = step_generators(cfg.seed, 0, "calibration", 0)
        codec.calibrate(torch.from_numpy(pairs.sample_batch(calib_rng, 512)[0][:, 0]))
        scores = evaluate(codec, val_frames) if val_frames is not None else {}
        folder.ship("codec.safetensors", _codec_metadata(codec, rec, cfg, step, scores, reached), codec=codec)
        return scores

    from tqdm import tqdm

    bar = tqdm(total=cfg.steps or None, initial=step, unit="step", disable=not cfg.progress, dynamic_ncols=True)
    deadline, checkpoints = Deadline(cfg.minutes), Cadence(cfg.checkpoint_minutes)
    try:
        while (not cfg.steps or step < cfg.steps) and not deadline.passed() and not reached:
            rng, _ = step_generators(cfg.seed, 0, "codec", step)
            for g in opt.param_groups:
                g["lr"] = warmup_lr(cfg.lr, cfg.warmup, step)
            frames, _ = pairs.sample_batch(rng, cfg.batch)  # uint8 [B, 2, H, W, 3]
            codec.train()
            loss, stats = codec.loss(torch.from_numpy(frames))
            optimizer_step(loss, codec, opt, 1.0)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.4f}", psnr=f"{stats['psnr']:.1f}")
            if cfg.target_psnr and step % cfg.check_every == 0:
                codec.eval()
                held = evaluate(codec, val_frames)["psnr"]
                bar.write(f"codec: step {step}: held-out psnr {held:.2f} dB (target {cfg.target_psnr:g})")
                reached = held >= cfg.target_psnr
            checkpoints.run(save)
    finally:
        bar.close()
        codec.eval()
        scores = save()
    target = ("" if not cfg.target_psnr else f" (target {cfg.target_psnr:g} dB "
              f"{'reached' if reached else 'not reached'})")
    print(f"codec: {folder.path / 'codec.safetensors'} after {step} steps{target}; held-out " +
          ", ".join(f"{k} {v:.2f}" for k, v in scores.items() if isinstance(v, float)))
    return scores
