"""The world model under evaluation: a checkpoint and how it generates (mode, levels, sink, ring).

``EvalModel.generate`` is what ``eval.fidelity`` measures: B sessions from real start frames, in lockstep, through
the engine's tick (``rollout.Rollout``), with the action of every frame given; ``session`` is the one player's
session (``session.WorldSession``, with the same ``cfg``) that the drift session and the control probes play.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from games.data.errors import InputError
from worldmodel.engine.config import MODES, EngineConfig
from worldmodel.engine.rollout import Rollout
from worldmodel.metadata import ModelInfo

EVAL_MODES = ("auto", *MODES)  # auto: a student as distilled, a teacher many-step


@dataclass
class EvalModel:
    """A checkpoint and how it generates (``cfg``: mode, window, sink, ring; see ``engine.config``)."""
    path: str
    model: object  # sampler.Teacher: denoiser, codec, metadata
    info: ModelInfo
    cfg: EngineConfig

    @classmethod
    def load(cls, path: str, mode: str = "auto", teacher_steps: int = 16, **layout) -> "EvalModel":
        """``layout``: window, sink or recent overriding the checkpoint's (None keeps it; sink=0: no sink)."""
        from worldmodel.engine.sampler import load_teacher

        if mode not in EVAL_MODES:
            raise InputError(f"unknown mode {mode!r}; choose from {', '.join(EVAL_MODES)} (no attention sink: sink=0)")
        model = load_teacher(path)
        info = model.info
        if mode == "auto":  # a student plays as it was distilled; a teacher samples with many steps
            mode = "teacher" if info.engine is None else None
        return cls(str(path), model, info, EngineConfig.for_model(info, mode=mode, teacher_steps=teacher_steps,
                                                                  **layout))

    @property
    def mode(self) -> str:
        return self.cfg.mode

    @property
    def frame_size(self) -> tuple[int, int]:
        """(H, W) of the frames it makes."""
        return self.info.frame_size or (64, 64)

    @property
    def lookahead(self) -> int:
        """Actions a generation needs past its last frame (frames entered into the window but never emitted)."""
        return self.rollout().lookahead

    def describe(self) -> str:
        c = self.cfg
        sink = f"sink {c.sink}" if c.sink else "no sink"
        what = {"rolling": f"rolling window W={c.window}, {sink}, ring {c.recent}",
                "framewise": f"frame by frame, {c.window} steps a frame, {sink}, ring {c.recent}",
                "teacher": f"frame by frame, {c.teacher_steps} steps a frame (many-step sampling)"}[c.mode]
        return f"{self.info.kind}, {what}"

    def rollout(self) -> Rollout:
        levels = self.model.denoiser.schedule.levels(self.cfg.steps).tolist()
        mode = "rolling" if self.cfg.rolling else "framewise"  # teacher: frame by frame with its many levels
        return Rollout(self.model.denoiser, levels, mode, self.cfg.sink, self.cfg.recent)

    def session(self, compile: bool = False):
        """The engine's session of one player, as ``rollingworld play`` would run this model."""
        from worldmodel.engine.session import WorldSession

        return WorldSession(self.model.denoiser, self.model.codec, self.info.action_space,
                            replace(self.cfg, compile=compile), self.frame_size, self.info)

    @torch.no_grad()
    def generate(self, start: np.ndarray, actions: np.ndarray, n: int, seed: int) -> np.ndarray:
        """``n`` frames uint8 [B, n, H, W, 3] after real ``start`` [B, S, H, W, 3], B sessions in lockstep.
        ``actions`` [B, >= S + n + lookahead, A]: row t produced frame t of the session, start frames first (the
        engine starts its cache without them, as a played session does)."""
        rollout, codec = self.rollout(), self.model.codec
        device = next(self.model.denoiser.parameters()).device
        S = start.shape[1]
        z = codec.encode(torch.from_numpy(start).to(device))  # [B, S, C, h, w]
        acts = torch.from_numpy(np.asarray(actions[:, S:S + n + rollout.lookahead], np.float32)).to(device)
        frames = rollout.run(z, acts, n, torch.Generator(device=device).manual_seed(seed)).frames
        return codec.to_uint8(codec.decode(frames)).cpu().numpy()
