"""Teacher training: flow matching with diffusion forcing on clips of gameplay recordings.

``rollingworld train data=DIR model=small out=DIR`` runs ``train(TrainConfig)``. The loop owns: random clips from
the training episodes, the codec (frozen), AdamW with warm-up and gradient clipping, an EMA of the weights (what
ships), bf16 autocast, a progress bar, validation on held-out episodes, a PNG of samples next to the truth and a
loss plot, atomic checkpoints every few minutes and exact resume.

Exact resume: every random draw of step ``k`` (clips, noise levels, noise) comes from generators seeded by
``(seed, rank, "teacher", k)`` (``run.step_generators``), so a run resumed from the state saved after step ``k``
repeats exactly what an uninterrupted run would have done. Several processes under ``torchrun`` train one model
with DDP (gloo on CPU, NCCL on CUDA).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from games.data.errors import InputError
from games.data.recording import Recording
from worldmodel.checkpoint import Checkpoint, check_action_space, load_checkpoint, read_header
from worldmodel.nn.codec import make_codec
from worldmodel.train.data import ClipDataset, split_recording, with_causing_actions
from worldmodel.nn.flow import Denoiser, NoiseSchedule, flow_matching_loss
from worldmodel.nn.dit import MODELS, DiT, DiTConfig, count_params
from worldmodel.train.processes import end_processes
from worldmodel.train.report import TrainReport
from worldmodel.train.run import EMA, Cadence, Deadline, TrainingRun, optimizer_step, step_generators, warmup_lr


@dataclass
class TrainConfig:
    data: str = "???"  # dataset folder (a recording)
    out: str = "???"  # run folder: state, checkpoints, samples, plots
    model: str = "small"  # a size from worldmodel.nn.dit.MODELS
    patch: int = 8  # latent pixels per token side
    codec: str = "pixels"  # "pixels", or a codec checkpoint from train-codec
    init: str = ""  # fine-tune: a teacher checkpoint whose network, weights and codec a fresh run starts from
    clip_len: int = 8  # frames per training clip
    batch: int = 8  # clips per step (per process)
    steps: int = 0  # optimizer steps (0 = until the time budget ends)
    minutes: float = 0.0  # time budget for this invocation (0 = until ``steps``)
    lr: float = 3e-4
    warmup: int = 200  # linear warm-up steps
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema: float = 0.999  # EMA decay of the shipped weights
    attention: str = "causal"  # clip mask of the teacher: causal | bidirectional
    stack_prev: bool = True  # direct path from the previous frame (see model.DiTConfig)
    residual: bool = False  # predict the change from the previous frame (see model.DiTConfig)
    change_weight: float = 10.0  # extra loss weight where frames change (0 = plain MSE)
    prediction: str = "x0"  # network output: x0 | v
    train_shift: float = 3.0  # shift of the training levels toward noise (the sampler's 3: the rolling window's
    #                           newest frames sit at levels 1.0 and 0.9; 1 = unshifted, 1.4 % of levels above 0.9)
    action_dropout: float = 0.1  # clips trained without their actions (the null action, for action guidance)
    val_fraction: float = 0.1  # held out for validation: whole episodes, or stretches of too few (split_recording)
    split_gap: int = 64  # frames left out on each side of a held-out stretch cut inside an episode
    val_every: int = 200  # steps between validation losses
    sample_every: int = 1000  # steps between sample grids (PNG)
    sample_steps: int = 16  # Euler steps of the many-step sampler in the grid
    checkpoint_minutes: float = 5.0  # minutes between checkpoints
    bf16: bool = False  # autocast matmuls to bfloat16 (CPU with AVX512-BF16/AMX, or CUDA)
    threads: int = 0  # torch threads (0 = leave torch's default)
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    resume: bool = False  # continue the run in ``out`` from its last state
    progress: bool = True

    def __post_init__(self):
        if self.model not in MODELS:
            raise InputError(f"unknown model size {self.model!r}; choose from {', '.join(MODELS)}")
        if self.attention not in ("causal", "bidirectional"):
            raise InputError(f"attention must be causal or bidirectional, got {self.attention!r}")


def load_codec(spec: str | Checkpoint):
    """``pixels`` (plain pixel patches), or the codec inside a checkpoint (a path written by ``train-codec``, or a
    loaded checkpoint: the teacher a fine-tune starts from)."""
    if spec == "pixels":
        return make_codec({"type": "pixels"})
    from worldmodel.engine.sampler import codec_from_checkpoint

    return codec_from_checkpoint(spec if isinstance(spec, Checkpoint) else load_checkpoint(spec)).requires_grad_(False)


def load_init(cfg: TrainConfig, action_space) -> tuple[Checkpoint, TrainConfig]:
    """The teacher checkpoint ``cfg.init`` that a fine-tune starts from, and ``cfg`` with the settings that fix
    the network's shape and the meaning of its output taken from it (size, patch, previous-frame path, residual,
    prediction, attention): the weights only fit the network they were trained in. Its codec comes with it."""
    if cfg.codec != "pixels":
        raise InputError("init= brings its own codec (the checkpoint's); leave codec= out")
    ckpt = load_checkpoint(cfg.init, expect="teacher")
    check_action_space(ckpt.metadata, action_space)
    meta = ckpt.metadata
    model = meta["model"]
    return ckpt, replace(cfg, model=model.get("size", cfg.model), patch=int(model["patch"]),
                         stack_prev=bool(model["stack_prev"]), residual=bool(model["residual"]),
                         prediction=meta["schedule"].get("prediction", cfg.prediction),
                         attention=meta.get("attention", cfg.attention))


class Trainer(TrainingRun):
    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self._load_data()
        self._build()

    # -- set-up ---------------------------------------------------------------------------------------------------
    def _load_data(self):
        cfg = self.cfg
        self.recording = Recording(cfg.data)
        train, val = split_recording(self.recording, cfg.val_fraction, seed=cfg.seed, gap=cfg.split_gap)
        # clips of L + 1 recorded frames give L frames, each with the action that produced it
        self.train_set = ClipDataset(self.recording, cfg.clip_len + 1, episodes=train)
        self.val_set = ClipDataset(self.recording, cfg.clip_len + 1, episodes=val) if val else None
        if len(self.train_set) == 0:
            raise InputError(f"{cfg.data}: no training clip of {cfg.clip_len} frames")

    def _build(self):
        cfg = self.cfg
        init, self.init_provenance = None, {}
        if cfg.init:  # fine-tune: the network, the meaning of its output and the codec are the checkpoint's
            init, cfg = load_init(cfg, self.recording.action_space)
            self.cfg = cfg
            self.init_provenance = {"init": {"path": str(init.path.resolve()), "step": init.metadata["step"],
                                             "data_sha256": read_header(init.path).get("data_sha256", "")}}
        self.codec = load_codec(init or cfg.codec).to(self.device).eval()
        C, h, w = self.codec.latent_shape(self.recording.height, self.recording.width)
        if init is None:
            self.model_cfg = DiTConfig(**{**MODELS[cfg.model], "channels": C, "height": h, "width": w,
                                          "patch": cfg.patch, "action_dim": self.recording.action_space.size,
                                          "stack_prev": cfg.stack_prev, "residual": cfg.residual,
                                          "null_action": cfg.action_dropout > 0})
            self.schedule = NoiseSchedule(prediction=cfg.prediction, train_shift=cfg.train_shift)
        else:
            self.model_cfg = DiTConfig.from_metadata(init.metadata["model"])
            self.schedule = NoiseSchedule(**{**init.metadata["schedule"], "train_shift": cfg.train_shift})
            m = self.model_cfg
            if (m.channels, m.height, m.width) != (C, h, w):
                raise InputError(f"{cfg.init} was trained on latents {m.channels}x{m.height}x{m.width}; the "
                                 f"frames of {cfg.data} give {C}x{h}x{w}")
        # a network without a null action (a fine-tune of an older teacher) always sees its actions
        self.action_dropout = cfg.action_dropout if self.model_cfg.null_action else 0.0
        torch.manual_seed(cfg.seed)
        self.net = DiT(self.model_cfg).to(self.device)
        self.ema = EMA(self.net, cfg.ema)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, betas=(0.9, 0.99),
                                     weight_decay=cfg.weight_decay)
        self.step = 0
        self.history: list[dict] = []
        extra = self.folder.load_state(self._modules(), {"opt": self.opt})
        if extra is not None:
            self.step, self.history = int(extra["step"]), list(extra.get("history", []))
        elif init is not None:  # a fresh fine-tune: network and EMA start from the checkpoint's (EMA) weights
            weights = init.group("model.")
            self.net.load_state_dict(weights)
            self.ema.net.load_state_dict(weights)
        train_net = self.net
        if self.distributed:
            train_net = DistributedDataParallel(self.net, device_ids=[self.device.index] if self.device.index
                                                is not None else None)
        self.denoiser = Denoiser(train_net, self.schedule)
        self.ema_denoiser = Denoiser(self.ema.net, self.schedule)
        self.report = TrainReport(self.out, self.recording, self.codec, self.val_set) if self.rank == 0 else None

    def _modules(self) -> dict:
        return {"net": self.net, "ema": self.ema.net}

    # -- one step ---------------------------------------------------------------------------------------------------
    def _batch(self, dataset: ClipDataset, rng: np.random.Generator):
        frames, actions = with_causing_actions(*dataset.sample_batch(rng, self.cfg.batch))
        frames = torch.from_numpy(frames).to(self.device)  # uint8 [B, L, H, W, 3]; actions float32 [B, L, A]
        with torch.no_grad():
            x0 = self.codec.encode(frames)  # [B, L, C, h, w]
        return x0, torch.from_numpy(actions).to(self.device)

    def train_step(self) -> dict:
        cfg = self.cfg
        rng, g = step_generators(cfg.seed, self.rank, "teacher", self.step, device=self.device)
        x0, actions = self._batch(self.train_set, rng)
        lr = warmup_lr(cfg.lr, cfg.warmup, self.step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            loss, stats = flow_matching_loss(self.denoiser, x0, actions, self.schedule, cfg.attention,
                                             cfg.change_weight, generator=g, action_dropout=self.action_dropout)
        grad_norm = optimizer_step(loss, self.net, self.opt, cfg.grad_clip)  # DDP averaged the gradients
        self.ema.update(self.step)
        self.step += 1
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"loss is {loss.item()} at step {self.step}: lower lr= or disable bf16")
        return {"step": self.step, "loss": loss.item(), "grad_norm": grad_norm, "lr": lr}

    @torch.no_grad()
    def validate(self, batches: int = 4) -> float:
        """Mean flow-matching loss of the EMA weights on held-out episodes (fixed draws, comparable over time)."""
        if self.val_set is None:
            return float("nan")
        losses = []
        for i in range(batches):
            rng, g = step_generators(self.cfg.seed, 0, "validation", 0, i, self.device)
            x0, actions = self._batch(self.val_set, rng)
            loss, _ = flow_matching_loss(self.ema_denoiser, x0, actions, self.schedule, self.cfg.attention,
                                         self.cfg.change_weight, generator=g)
            losses.append(loss.item())
        return float(np.mean(losses))

    # -- checkpoints ------------------------------------------------------------------------------------------------
    def metadata(self) -> dict:
        rec = self.recording
        return {"kind": "teacher", "model": {"size": self.cfg.model, **self.model_cfg.to_dict()},
                "action_space": rec.action_space.to_dict(), "codec": self.codec.config(),
                "schedule": self.schedule.to_dict(), "step": self.step, "attention": self.cfg.attention,
                "frame": {"height": rec.height, "width": rec.width, "fps": rec.fps},
                "provenance": {"data": str(Path(self.cfg.data).resolve()), "game": rec.game,
                               "episodes": len(rec.episodes), "frames": rec.total_frames,
                               "train_config": asdict(self.cfg), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                               "processes": self.world, **self.init_provenance}}

    def save(self) -> None:
        if self.rank != 0:
            return
        self.folder.save_state(self._modules(), {"opt": self.opt}, {"step": self.step, "history": self.history})
        self.folder.ship("teacher.safetensors", self.metadata(), model=self.ema.net, codec=self.codec)


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) a teacher; returns the path of the shipped checkpoint (EMA weights)."""
    if not cfg.steps and not cfg.minutes:
        raise InputError("say how long to train: steps=N or minutes=M")
    trainer = Trainer(cfg)
    cfg = trainer.cfg  # with init=, the network's settings come from the checkpoint
    if trainer.rank == 0:
        trainer.folder.write_config(cfg)
        print(f"teacher {cfg.model}: {count_params(trainer.net) / 1e6:.2f}M parameters, "
              f"{trainer.model_cfg.tokens_per_frame} tokens a frame, {len(trainer.train_set)} training clips, "
              f"step {trainer.step}, {trainer.world} process(es) on {trainer.device}")
    from tqdm import tqdm

    deadline, checkpoints = Deadline(cfg.minutes), Cadence(cfg.checkpoint_minutes)
    bar = tqdm(total=cfg.steps or None, initial=trainer.step, disable=not (cfg.progress and trainer.rank == 0),
               unit="step", dynamic_ncols=True)
    frames_per_step = cfg.batch * cfg.clip_len * trainer.world
    try:
        while (not cfg.steps or trainer.step < cfg.steps) and not deadline.passed():
            t0 = time.monotonic()
            stats = trainer.train_step()
            stats["frames_per_s"] = frames_per_step / max(time.monotonic() - t0, 1e-9)
            if trainer.step % cfg.val_every == 0:
                stats["val_loss"] = trainer.validate()
            if trainer.rank == 0:
                trainer.history.append(stats)
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.4f}", fps=f"{stats['frames_per_s']:.0f}")
                if trainer.step % cfg.sample_every == 0:
                    trainer.report.write(trainer.ema_denoiser, trainer.history, trainer.step, cfg.sample_steps)
            checkpoints.run(trainer.save)
    finally:
        bar.close()
        trainer.save()  # also on Ctrl-C: nothing done is lost
        if trainer.rank == 0:
            trainer.report.write(trainer.ema_denoiser, trainer.history, trainer.step, cfg.sample_steps)
        end_processes(trainer.procs, trainer.net, "weights")
    return trainer.out / "teacher.safetensors"
