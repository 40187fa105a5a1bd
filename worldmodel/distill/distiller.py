"""Rolling Forcing distillation: the many-step teacher becomes the few-step student that streams in real time.

``rollingworld distill teacher=FILE data=DIR out=DIR`` runs ``distill(DistillConfig)`` in three phases, each
resumable (``resume=true``) from the state saved in ``out``:

1. **ODE pairs** (``ode_pairs``): the teacher's many-step solutions for the W frames of a rolling window after real
   start frames with recorded actions (``losses.teacher_window``), written in chunks to ``out/ode_pairs/``.
2. **ODE init** (``ode_steps``): the student (the teacher's network and weights) regresses those solutions from
   the window's levels in its rolling attention pattern. Ships ``out/ode.safetensors`` (EMA).
3. **DMD** (``dmd_steps``): the student generates rollouts from its **own** history with the engine's rolling
   window, sink and ring (``rollout.Rollout``; ``rollout_frames`` longer than its attention span, so eviction
   and sink re-indexing happen), half rolling, half frame by frame (``framewise_fraction``). Gradient flows
   only through non-overlapping windows picked by a random offset, over the last ``rollout_frames`` frames: a
   prefix of up to ``prefix_frames`` frames before them is generated without gradient, so the student learns
   where a session lives (a self-generated ring, an old sink); ``stale_sink`` takes the sink from earlier in
   the episode. The graded frames are scored in clips of ``score_frames`` after the frames before them, and
   ``guidance`` guides the real score by the action. A critic (the fake score, initialised from
   the teacher) learns flow matching on the student's outputs, ``critic_steps`` times per student step; the
   frozen teacher is the real score (``losses.dmd_loss``). AdamW with beta1 = 0 for both. Ships
   ``out/student.safetensors``: the EMA of the student.

Every random draw comes from generators seeded by (seed, rank, phase, step, sub) (``train.run.step_generators``;
phases ``pairs``, ``ode``, ``critic``, ``student``; sub: a critic step within a student step), so a resumed run
repeats what an uninterrupted one would have done. Under ``torchrun`` every process generates its own rollouts
and the gradients of student and critic are averaged across processes before each optimizer step.
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from games.data.errors import InputError
from games.data.recording import Recording
from worldmodel.checkpoint import check_action_space, read_model_info
from worldmodel.train.data import ClipDataset, held_out_split, with_causing_actions
from worldmodel.distill.report import DistillReport
from worldmodel.distill.losses import critic_loss, dmd_loss, ode_loss, score_clips, teacher_window
from worldmodel.nn.flow import Denoiser, NoiseSchedule
from worldmodel.nn.dit import count_params
from worldmodel.engine.rollout import Rollout
from worldmodel.engine.sampler import load_teacher
from worldmodel.train.processes import end_processes
from worldmodel.train.run import EMA, Cadence, Deadline, TrainingRun, optimizer_step, step_generators


@dataclass
class DistillConfig:
    teacher: str = "???"  # the teacher checkpoint (rollingworld train)
    data: str = "???"  # the recording it was trained on (start frames and actions of rollouts)
    out: str = "???"  # run folder
    window: int = 4  # W: frames in the rolling window = denoising steps per frame
    sink: int = 1  # S: attention-sink frames
    recent: int = 4  # C: recent frames in the ring
    shift: float = 0.0  # level shift of the window (0 = the teacher's sampling shift)
    start_frames: int = 4  # real frames a rollout starts from (the first is the sink)
    ode_pairs: int = 256  # teacher windows solved for ODE init
    ode_teacher_steps: int = 8  # the teacher's Euler steps per frame (a multiple of window)
    ode_steps: int = 0  # ODE-init optimizer steps
    ode_batch: int = 8
    ode_lr: float = 5e-5
    dmd_steps: int = 0  # student (generator) steps of DMD
    batch: int = 4  # rollouts per DMD step and process
    rollout_frames: int = 8  # frames per rollout that carry gradient (a multiple of window)
    prefix_frames: int = 0  # at most this many frames generated without gradient before them (a multiple of
    #                          window; each rollout draws 0, W, 2W, ... up to it): the student learns from states
    #                          deep into its own generation, a fully self-generated ring and an old sink
    stale_sink: float = 0.0  # share of rollouts whose sink is a frame from earlier in the episode (from its first
    #                          frame to the clip's start), as a session's sink is its first frame, long gone by
    score_frames: int = 0  # generated frames the scorers noise together (0 = window; rollout_frames: the whole
    #                        graded clip jointly, after real context frames that are out of the loss)
    guidance: float = 1.0  # classifier-free guidance on the action in the real score (1 = none; needs a teacher
    #                        trained with action_dropout)
    lr: float = 2e-5  # student learning rate (DMD)
    critic_lr: float = 2e-5
    critic_steps: int = 5  # critic steps per student step
    dmd_shift: float = 0.0  # shift of the DMD/critic levels (0 = the teacher's)
    t_min: float = 0.02  # DMD levels are drawn in [t_min, t_max] before the shift
    t_max: float = 0.98
    framewise_fraction: float = 0.5  # rollouts generated frame by frame (the rest rolling)
    grad_clip: float = 1.0
    ema: float = 0.99  # EMA decay of the shipped student
    sample_every: int = 50  # DMD steps between sample videos
    checkpoint_minutes: float = 5.0
    minutes: float = 0.0  # time limit of this invocation (0 = none); the state is saved when it runs out
    threads: int = 0
    device: str = "auto"
    seed: int = 0
    resume: bool = False
    progress: bool = True


def check_config(cfg: DistillConfig) -> None:
    """An InputError naming the first setting that cannot work (before anything is loaded or written)."""
    if cfg.window < 1 or cfg.start_frames < 1 or not 0 <= cfg.sink <= cfg.start_frames:
        raise InputError(f"need window >= 1 and 0 <= sink <= start_frames; got window={cfg.window} "
                         f"sink={cfg.sink} start_frames={cfg.start_frames}")
    if cfg.ode_steps and cfg.ode_teacher_steps % cfg.window:
        raise InputError(f"ode_teacher_steps ({cfg.ode_teacher_steps}) must be a multiple of window "
                         f"({cfg.window}): the window's levels lie on the teacher's path")
    if cfg.dmd_steps and (cfg.rollout_frames % cfg.window or cfg.prefix_frames % cfg.window
                          or cfg.rollout_frames < 1 or cfg.prefix_frames < 0):
        raise InputError(f"rollout_frames ({cfg.rollout_frames}) and prefix_frames ({cfg.prefix_frames}) must be "
                         f"multiples of window ({cfg.window}), rollout_frames at least one")
    score = cfg.score_frames or cfg.window
    if cfg.dmd_steps and (score < 1 or cfg.rollout_frames % score):
        raise InputError(f"score_frames ({cfg.score_frames}) must divide rollout_frames ({cfg.rollout_frames})")
    if not 0 <= cfg.stale_sink <= 1 or cfg.guidance <= 0:
        raise InputError(f"need 0 <= stale_sink <= 1 and guidance > 0; got stale_sink={cfg.stale_sink} "
                         f"guidance={cfg.guidance}")
    if not 0 <= cfg.framewise_fraction <= 1 or not 0 < cfg.t_min < cfg.t_max < 1:
        raise InputError("need 0 <= framewise_fraction <= 1 and 0 < t_min < t_max < 1")
    if not (cfg.ode_steps or cfg.dmd_steps):
        raise InputError("say how long to distill: ode_steps=N and/or dmd_steps=M")


class Distiller(TrainingRun):
    def __init__(self, cfg: DistillConfig):
        check_config(cfg)
        kind = read_model_info(cfg.teacher).kind  # before any run folder is made
        if kind != "teacher":
            raise InputError(f"{cfg.teacher} is a {kind} checkpoint; distillation starts from a teacher "
                             "(rollingworld train makes one)")
        super().__init__(cfg)
        self.teacher_model = load_teacher(cfg.teacher, device=self.device)
        self.meta = self.teacher_model.metadata
        self._load_data()
        self._build()

    # -- set-up ---------------------------------------------------------------------------------------------------
    def _load_data(self):
        cfg = self.cfg
        self.recording = Recording(cfg.data)
        check_action_space(self.meta, self.recording.action_space)
        info = self.teacher_model.info
        # the teacher's own split: episodes it held out stay held out for the student too
        self.train_part, self.held_out = held_out_split(self.recording, self.meta)
        self.change_strength = float(info.train_config.get("change_weight", 0.0))
        self.clip_len = info.clip_len
        self.score_frames = cfg.score_frames or cfg.window
        if cfg.dmd_steps and self.score_frames >= self.clip_len:
            raise InputError(f"score_frames ({self.score_frames}) must be shorter than the teacher's clips "
                             f"({self.clip_len} frames): the scores see them after real context frames")
        if cfg.guidance != 1 and not self.teacher_model.denoiser.net.cfg.null_action:
            raise InputError(f"guidance={cfg.guidance} needs a teacher trained with action_dropout > 0 (this one "
                             f"has no null action); leave guidance=1")
        frames = cfg.start_frames + cfg.prefix_frames + max(cfg.rollout_frames + cfg.window - 1, cfg.window)
        self.clips = ClipDataset(self.recording, frames + 1, episodes=self.train_part)  # + 1: causing actions

    def _build(self):
        cfg, teacher = self.cfg, self.teacher_model.denoiser
        schedule = teacher.schedule
        shift = cfg.shift or schedule.shift
        self.schedule = NoiseSchedule(**{**schedule.to_dict(), "shift": shift})
        self.levels = self.schedule.levels(cfg.window).tolist()
        self.teacher_levels = self.schedule.levels(cfg.ode_teacher_steps).tolist()
        self.dmd_shift = cfg.dmd_shift or schedule.shift
        self.teacher = teacher  # frozen: the real score
        # student, its EMA and the critic all start as the teacher's network
        self.student, self.critic = (copy.deepcopy(teacher.net).requires_grad_(True) for _ in range(2))
        self.ema = EMA(self.student, cfg.ema)
        self.student_den = Denoiser(self.student, self.schedule)
        self.ema_den = Denoiser(self.ema.net, self.schedule)
        self.critic_den = Denoiser(self.critic, schedule)
        self.opt_ode = torch.optim.AdamW(self.student.parameters(), lr=cfg.ode_lr, betas=(0.9, 0.99),
                                         weight_decay=0.0)
        self.opt_student = torch.optim.AdamW(self.student.parameters(), lr=cfg.lr, betas=(0.0, 0.999),
                                             weight_decay=0.0)
        self.opt_critic = torch.optim.AdamW(self.critic.parameters(), lr=cfg.critic_lr, betas=(0.0, 0.999),
                                            weight_decay=0.0)
        self.steps = {"ode": 0, "dmd": 0}
        self.history: list[dict] = []
        extra = self.folder.load_state(self._modules(), self._optimizers())
        if extra is not None:
            self.steps, self.history = dict(extra["steps"]), list(extra.get("history", []))
        self.report = DistillReport(self.out, self.recording, self.teacher_model.codec, self.held_out,
                                    cfg.start_frames) if self.rank == 0 else None

    def _modules(self) -> dict:
        return {"student": self.student, "ema": self.ema.net, "critic": self.critic}

    def _optimizers(self) -> dict:
        return {"opt_ode": self.opt_ode, "opt_student": self.opt_student, "opt_critic": self.opt_critic}

    # -- data -------------------------------------------------------------------------------------------------------
    def _batch(self, rng: np.random.Generator, batch: int, stale_sink: float = 0.0):
        """Latents of ``batch`` recorded clips [B, L, C, h, w] and the action that produced each frame [B, L, A];
        with ``stale_sink``, that share of the clips has its first frame (a rollout's sink) replaced by a frame
        from earlier in its episode."""
        ids = self.clips.draw(rng, batch)
        frames, actions = with_causing_actions(*self.clips.stack(ids))
        if stale_sink > 0:
            for b, i in enumerate(ids):
                if rng.random() < stale_sink:
                    frames[b, 0] = self.clips.earlier_frame(i, rng)
        with torch.no_grad():
            x0 = self.teacher_model.codec.encode(torch.from_numpy(frames).to(self.device))
        return x0, torch.from_numpy(actions).to(self.device)

    # -- phase 1: ODE pairs -------------------------------------------------------------------------------------------
    def _pairs_dir(self) -> Path:
        return self.out / "ode_pairs"

    def _chunks(self) -> list[int]:
        n = math.ceil(self.cfg.ode_pairs / self.cfg.ode_batch)
        return list(range(n))

    def _chunk_path(self, i: int) -> Path:
        return self._pairs_dir() / f"chunk-{i:05d}.safetensors"

    def make_pairs(self, bar=None, deadline: Deadline | None = None) -> bool:
        """Solve the teacher's windows, one chunk of ``ode_batch`` at a time (written atomically; chunks already
        on disk are kept). Returns False if the time limit stopped it."""
        from safetensors.torch import save_file

        cfg, S, W = self.cfg, self.cfg.start_frames, self.cfg.window
        self._pairs_dir().mkdir(parents=True, exist_ok=True)
        for i in self._chunks():
            path = self._chunk_path(i)
            if i % self.world != self.rank or path.exists():
                continue
            if deadline is not None and deadline.passed():
                return False
            rng, g = step_generators(cfg.seed, 0, "pairs", i, device=self.device)
            x0, actions = self._batch(rng, cfg.ode_batch)
            inputs, targets = teacher_window(self.teacher, x0[:, :S], actions[:, :S], actions[:, S:S + W],
                                             self.teacher_levels, W, g, max_context=self.clip_len - 1)
            tmp = path.with_suffix(".tmp")
            save_file({"start": x0[:, :S].contiguous(), "actions": actions[:, S:S + W].contiguous(),
                       "inputs": inputs.contiguous(), "targets": targets.contiguous()}, str(tmp))
            os.replace(tmp, path)
            if bar is not None:
                bar.update(1)
        if self.distributed:
            dist.barrier()
        return True

    def _load_pairs(self) -> dict[str, torch.Tensor]:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        parts: dict[str, list] = {}
        for i in self._chunks():
            try:
                chunk = load_file(str(self._chunk_path(i)), device=str(self.device))
            except (OSError, SafetensorError) as e:
                raise InputError(f"ODE pair chunk {self._chunk_path(i)} is unreadable ({e}); delete it and "
                                 f"resume to solve it again") from None
            for k, v in chunk.items():
                parts.setdefault(k, []).append(v)
        return {k: torch.cat(v)[:self.cfg.ode_pairs] for k, v in parts.items()}

    # -- phase 2: ODE init --------------------------------------------------------------------------------------------
    def ode_step(self, pairs: dict[str, torch.Tensor]) -> dict:
        cfg = self.cfg
        rng, _ = step_generators(cfg.seed, self.rank, "ode", self.steps["ode"], device=self.device)
        idx = torch.from_numpy(rng.integers(0, len(pairs["start"]), cfg.ode_batch))
        b = {k: v[idx] for k, v in pairs.items()}
        loss = ode_loss(self.student_den, b["start"], b["inputs"], b["targets"], b["actions"], self.levels,
                        cfg.sink, cfg.recent, self.change_strength)
        grad_norm = self._update(loss, self.student, self.opt_ode)
        self.ema.update(self.steps["ode"])
        self.steps["ode"] += 1
        return {"phase": "ode", "step": self.steps["ode"], "ode_loss": loss.item(), "grad_norm": grad_norm}

    # -- phase 3: DMD ---------------------------------------------------------------------------------------------------
    def _rollout_inputs(self, rng: np.random.Generator):
        """(start latents [B, S, ...], actions of the clip [B, L, A], mode, prefix frames) of a rollout."""
        cfg = self.cfg
        x0, actions = self._batch(rng, cfg.batch, cfg.stale_sink)
        mode = "framewise" if rng.random() < cfg.framewise_fraction else "rolling"
        prefix = cfg.window * int(rng.integers(cfg.prefix_frames // cfg.window + 1)) if cfg.prefix_frames else 0
        return x0[:, :cfg.start_frames], actions, mode, prefix

    def _rollout(self, rng, g, with_grad: bool):
        """The student's rollout of a step: ``prefix`` frames without gradient, then ``rollout_frames`` whose
        predictions in their gradient windows (a random offset) are scored. Returns (score clips, stats)."""
        cfg = self.cfg
        start, actions, mode, prefix = self._rollout_inputs(rng)
        offset = int(rng.integers(cfg.window))
        n = prefix + cfg.rollout_frames
        with torch.set_grad_enabled(with_grad):
            result = Rollout(self.student_den, self.levels, mode, cfg.sink, cfg.recent).run(
                start, actions[:, cfg.start_frames:], n, g, grad_offset=offset, grad_from=prefix)
        S = cfg.start_frames
        context = torch.cat([start, result.frames], 1)
        n_ctx = min(S + prefix, self.clip_len - self.score_frames)
        clips = score_clips(context, actions[:, :S + n], result.outputs, actions[:, S + prefix:S + n],
                            self.score_frames, n_ctx)
        return clips, {"rollout_mode": mode, "offset": offset, "prefix": prefix}

    def critic_rollout(self, sub: int):
        """The student's rollout that critic step ``sub`` learns from, made as the student step makes its own (a
        random offset of the gradient windows, here without gradient): returns (generator, score clips). The
        critic learns the distribution DMD scores: each frame's clean prediction inside its window (from level
        1.0, 0.9, 0.75 or 0.5), not the emitted frames, which only the context shows."""
        cfg = self.cfg
        rng, g = step_generators(cfg.seed, self.rank, "critic", self.steps["dmd"], sub, self.device)
        return g, self._rollout(rng, g, with_grad=False)[0]

    def critic_step(self, sub: int) -> float:
        cfg = self.cfg
        g, (ctx, ctx_act, blk, blk_act) = self.critic_rollout(sub)
        loss = critic_loss(self.critic_den, ctx, ctx_act, blk, blk_act, self.dmd_shift, cfg.t_min, cfg.t_max, g,
                           self.change_strength)
        self._update(loss, self.critic, self.opt_critic)
        return loss.item()

    def student_step(self) -> tuple[torch.Tensor, dict]:
        """One DMD step of the student on a fresh rollout with gradient windows; returns (loss, stats)."""
        cfg = self.cfg
        rng, g = step_generators(cfg.seed, self.rank, "student", self.steps["dmd"], device=self.device)
        (ctx, ctx_act, blk, blk_act), rollout = self._rollout(rng, g, with_grad=True)
        loss, stats = dmd_loss(self.teacher, self.critic_den, ctx, ctx_act, blk, blk_act, self.dmd_shift,
                               cfg.t_min, cfg.t_max, g, cfg.guidance)
        stats.update(rollout)
        return loss, stats

    def dmd_step(self) -> dict:
        critic = [self.critic_step(i) for i in range(self.cfg.critic_steps)]
        loss, stats = self.student_step()
        if self.steps["dmd"] == 0:  # the shipped student averages DMD steps only, none of the ODE init's
            self.ema.restart()
        grad_norm = self._update(loss, self.student, self.opt_student)
        self.ema.update(self.steps["dmd"])
        self.steps["dmd"] += 1
        row = {"phase": "dmd", "step": self.steps["dmd"], "grad_norm": grad_norm,
               "clipped": grad_norm > self.cfg.grad_clip,
               "critic_loss": float(np.mean(critic)) if critic else float("nan")}
        row.update({k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in stats.items()})
        return row

    # -- shared -----------------------------------------------------------------------------------------------------
    def _update(self, loss: torch.Tensor, net: torch.nn.Module, opt: torch.optim.Optimizer) -> float:
        """An optimizer step of ``net`` (student or critic; no DDP: gradients averaged across processes here)."""
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"distillation loss is {loss.item()}: lower the learning rates")
        return optimizer_step(loss, net, opt, self.cfg.grad_clip, average_over=self.procs)

    def metadata(self, stage: str) -> dict:
        cfg = self.cfg
        meta = json.loads(json.dumps(self.meta))
        meta["kind"] = "student"
        meta["schedule"] = self.schedule.to_dict()
        # how it plays: trained only frame by frame (the Self-Forcing way) it plays frame by frame
        mode = "framewise" if cfg.framewise_fraction == 1 else "rolling"
        meta["engine"] = {"window": cfg.window, "sink": cfg.sink, "recent": cfg.recent, "mode": mode}
        meta["distill"] = {"stage": stage, "ode_steps": self.steps["ode"], "dmd_steps": self.steps["dmd"],
                           "teacher": str(Path(cfg.teacher).resolve()), "config": asdict(cfg),
                           "processes": self.world, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        return meta

    def save(self) -> None:
        if self.rank != 0:
            return
        self.folder.save_state(self._modules(), self._optimizers(), {"steps": self.steps, "history": self.history})
        weights = {"model": self.ema.net, "codec": self.teacher_model.codec}
        if self.steps["ode"] and not self.steps["dmd"]:
            self.folder.ship("ode.safetensors", self.metadata("ode"), **weights)
        if self.steps["dmd"]:
            self.folder.ship("student.safetensors", self.metadata("dmd"), **weights)


def distill(cfg: DistillConfig) -> Path:
    """Run (or resume) the distillation; returns the path of the shipped student (or the ODE-init student when
    ``dmd_steps`` is 0)."""
    from tqdm import tqdm

    d = Distiller(cfg)
    if d.rank == 0:
        d.folder.write_config(cfg)
        print(f"student {count_params(d.student) / 1e6:.2f}M parameters, window {cfg.window}, sink {cfg.sink}, "
              f"recent {cfg.recent}, levels {[round(s, 3) for s in d.levels]}; ODE {d.steps['ode']}/{cfg.ode_steps}, "
              f"DMD {d.steps['dmd']}/{cfg.dmd_steps} steps done; {d.world} process(es) on {d.device}")
    deadline, checkpoints = Deadline(cfg.minutes), Cadence(cfg.checkpoint_minutes)
    show = cfg.progress and d.rank == 0

    def checkpoint() -> None:
        d.save()
        if d.rank == 0:
            d.report.write_log(d.history)

    try:
        if cfg.ode_steps and d.steps["ode"] < cfg.ode_steps and d.steps["dmd"] == 0:
            todo = sum(1 for i in d._chunks() if not d._chunk_path(i).exists())
            with tqdm(total=len(d._chunks()), initial=len(d._chunks()) - todo, disable=not show, unit="chunk",
                      desc="ODE pairs", dynamic_ncols=True) as bar:
                finished = d.make_pairs(bar, deadline)
            if finished:
                pairs = d._load_pairs()
                with tqdm(total=cfg.ode_steps, initial=d.steps["ode"], disable=not show, unit="step",
                          desc="ODE init", dynamic_ncols=True) as bar:
                    while d.steps["ode"] < cfg.ode_steps and not deadline.passed():
                        row = d.ode_step(pairs)
                        d.history.append(row)
                        bar.update(1)
                        bar.set_postfix(loss=f"{row['ode_loss']:.4f}")
                        checkpoints.run(checkpoint)
                if d.steps["ode"] >= cfg.ode_steps:
                    d.save()  # ode.safetensors: the student before DMD
        if cfg.dmd_steps and (d.steps["ode"] >= cfg.ode_steps) and not deadline.passed():
            with tqdm(total=cfg.dmd_steps, initial=d.steps["dmd"], disable=not show, unit="step", desc="DMD",
                      dynamic_ncols=True) as bar:
                while d.steps["dmd"] < cfg.dmd_steps and not deadline.passed():
                    row = d.dmd_step()
                    d.history.append(row)
                    bar.update(1)
                    bar.set_postfix(dmd=f"{row['dmd_loss']:.4f}", critic=f"{row['critic_loss']:.4f}")
                    if d.rank == 0 and (d.steps["dmd"] % cfg.sample_every == 0 or d.steps["dmd"] == cfg.dmd_steps):
                        d.report.write(d.ema_den, d.levels, cfg, d.history, d.steps["dmd"])
                    checkpoints.run(checkpoint)
    finally:
        checkpoint()  # also on Ctrl-C: nothing done is lost
        end_processes(d.procs, d.student, "student's weights")
    return d.out / ("student.safetensors" if d.steps["dmd"] else "ode.safetensors")
