"""Model commands: ``train`` (the teacher), ``train-codec``, ``distill`` and ``sample``."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import List, Optional

from omegaconf import OmegaConf

from games.data.errors import InputError


@dataclass
class SampleConfig:
    ckpt: str = "???"  # teacher checkpoint
    data: str = "???"  # dataset with the real frames and the recorded actions
    out: str = "???"  # mp4: real (left) and generated (right)
    png: Optional[str] = None  # also a PNG strip: real over generated at frames 1, 4, 9, 16, 32, 64... after the start
    episode: int = -1  # which episode (index; -1 = the last, usually held out)
    start: int = 16  # first generated frame; the frames before it are the real context
    frames: int = 64  # frames to generate
    steps: int = 16  # Euler steps per frame
    context_sigma: float = 0.2  # noise level the generated context frames are shown at (0 = clean; docs/teacher.md)
    seed: int = 0
    metrics: bool = True  # also report PSNR / SSIM by horizon on the held-out episodes (rollingworld eval's fidelity)
    horizons: List[int] = field(default_factory=lambda: [1, 4, 16])
    starts: int = 4  # rollout starts per held-out episode for the metrics (as many teacher-forced)
    threads: int = 0  # torch threads (0 = torch's default)


def to_dataclass(cls, values: dict):
    """``cls(**values)`` with each value checked against the field's type (a wrong type is an InputError)."""
    from omegaconf.errors import OmegaConfBaseException

    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"unknown setting(s) {', '.join(unknown)}")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), values))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise InputError((f"{key}: " if key else "") + str(e).splitlines()[0]) from None


def resumed(values: dict, overrides: list[str]) -> dict:
    """With ``resume=true`` and a run in ``out``: that run's saved settings, except those given on the command
    line now. A resumed run is the same run: its model, codec and data are not re-read from the defaults."""
    import json
    from pathlib import Path

    saved_path = Path(str(values["out"])) / "config.json"
    if not values.get("resume") or not saved_path.exists():
        return values
    try:
        saved = json.loads(saved_path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{saved_path} is unreadable ({e}); cannot resume") from None
    given = {ov.split("=", 1)[0].lstrip("+") for ov in overrides}
    return {**values, **{k: v for k, v in saved.items() if k in values and k not in given}}


def train(cfg, overrides=()) -> int:
    from worldmodel.train.teacher import TrainConfig, train as run_training

    path = run_training(to_dataclass(TrainConfig, resumed(OmegaConf.to_container(cfg), list(overrides))))
    print(f"teacher: {path}")
    return 0


def sample(cfg) -> int:
    import json

    import torch

    from games.data.recording import Recording
    from games.data.video import VideoWriter, hstack
    from worldmodel.engine.sampler import ManyStepSampler, load_teacher
    from worldmodel.eval.fidelity import fidelity
    from worldmodel.eval.metrics import psnr_per_frame
    from worldmodel.train.data import causing_actions, held_out_episodes

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rec = Recording(cfg.data)
    teacher = load_teacher(cfg.ckpt, action_space=rec.action_space)
    if not rec.episodes:
        raise InputError(f"{cfg.data} has no episodes")
    try:
        ep = rec[cfg.episode]
    except IndexError:
        raise InputError(f"episode {cfg.episode} out of range: {cfg.data} has {len(rec.episodes)}") from None
    ctx = teacher.clip_len - 1
    start, n = cfg.start, cfg.frames
    if start < 1 or start + n > ep.length:
        raise InputError(f"start={start} frames={n} does not fit episode {ep.name} of {ep.length} frames")
    frames, causing = ep.frames(), causing_actions(ep.actions())
    lo = max(0, start - ctx)
    sampler = ManyStepSampler(teacher, cfg.steps, cfg.context_sigma)
    gen = sampler.generate(frames[None, lo:start], causing[None, lo:start + n], n, cfg.seed)[0]
    with VideoWriter(cfg.out, fps=rec.fps, scale=4) as video:
        for real, fake in zip(frames[start:start + n], gen):
            video.write(hstack(real, fake))
    if cfg.png:
        _write_strip(cfg.png, frames[start:start + n], gen)
    scores = psnr_per_frame(gen, frames[start:start + n], 255.0)
    print(f"wrote {cfg.out}: episode {ep.name}, frames {start}..{start + n - 1}, {cfg.steps} steps a frame; "
          f"PSNR at 1/{min(4, n)}/{n}: {scores[0]:.2f}/{scores[min(4, n) - 1]:.2f}/{scores[-1]:.2f} dB")
    if cfg.metrics:  # the evaluator of ``rollingworld eval``, on the sampler of the video, from ctx real frames
        episodes = held_out_episodes(rec, teacher.metadata)
        count = cfg.starts * len(episodes)
        horizons = list(cfg.horizons)
        result = fidelity(sampler, episodes, count, max(horizons), count, start_frames=ctx, seed=cfg.seed)
        print(json.dumps({"steps": cfg.steps, **_at_horizons(result, horizons)}, indent=1))
    return 0


def _at_horizons(result: dict, horizons: list[int]) -> dict:
    """A fidelity result at the given horizons only (``rollingworld eval`` reports the whole curve)."""
    def pick(curve):
        return {h: curve[h - 1] for h in horizons}

    baselines = {k: {"psnr": pick(v["psnr"]), "ssim": pick(v["ssim"])} for k, v in result["baselines"].items()}
    return {"starts": result["starts"], "teacher_forced": result["teacher_forced"], "psnr": pick(result["psnr"]),
            "ssim": pick(result["ssim"]), "baselines": baselines}


def _write_strip(path, real, generated, horizons=(1, 4, 9, 16, 32, 64, 128, 256)) -> None:
    """A PNG with one column per horizon (frames after the start): real on top, generated below."""
    import numpy as np
    from PIL import Image

    from games.data.video import hstack, upscale

    cols = [np.concatenate([real[h - 1], np.full_like(real[0][:2], 255), generated[h - 1]], axis=0)
            for h in horizons if h <= len(generated)]
    Image.fromarray(upscale(hstack(*cols, gap=4), 3)).save(path)
    print(f"wrote {path}: real (top) and generated (bottom) at frames "
          f"{', '.join(str(h) for h in horizons if h <= len(generated))} after the start")


def train_codec(cfg, overrides=()) -> int:
    from worldmodel.train.codec import CodecTrainConfig, train_codec as run

    run(to_dataclass(CodecTrainConfig, resumed(OmegaConf.to_container(cfg), list(overrides))))
    return 0


def distill(cfg, overrides=()) -> int:
    from worldmodel.distill.distiller import DistillConfig, distill as run

    print(f"student: {run(to_dataclass(DistillConfig, resumed(OmegaConf.to_container(cfg), list(overrides))))}")
    return 0
