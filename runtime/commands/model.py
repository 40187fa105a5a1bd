"""Model commands: ``train`` (the teacher) and ``check ckpt=``."""
from __future__ import annotations

from dataclasses import fields

from omegaconf import OmegaConf

from games.data.errors import InputError


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


# settings given as ``model.<key>=`` on the command line that the training config keeps flat
_MODEL_KEYS = {"model": "model", "model.size": "model", "model.patch": "patch", "model.stack_prev": "stack_prev",
               "model.residual": "residual"}


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
    given = {_MODEL_KEYS.get(key, key) for key in (ov.split("=", 1)[0].lstrip("+") for ov in overrides)}
    return {**values, **{k: v for k, v in saved.items() if k in values and k not in given}}


def train(cfg, overrides=()) -> int:
    from worldmodel.train.teacher import TrainConfig, train as run_training

    values = OmegaConf.to_container(cfg)
    model = values.pop("model")
    values.update(model=model["size"], patch=model["patch"], stack_prev=model["stack_prev"],
                  residual=model.get("residual", False))
    path = run_training(to_dataclass(TrainConfig, resumed(values, list(overrides))))
    print(f"teacher: {path}")
    return 0


def sample(cfg) -> int:
    import json

    import numpy as np
    import torch

    from games.data.recording import Recording
    from games.data.video import VideoWriter, hstack
    from worldmodel.train.data import split_episodes
    from worldmodel.engine.sampler import fidelity, load_teacher, psnr, rollout

    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    rec = Recording(cfg.data)
    teacher = load_teacher(cfg.ckpt, action_space=rec.action_space)
    if not rec.episodes:
        raise InputError(f"{cfg.data} has no episodes")
    try:
        ep = rec[int(cfg.episode)]
    except IndexError:
        raise InputError(f"episode {cfg.episode} out of range: {cfg.data} has {len(rec.episodes)}") from None
    ctx = teacher.clip_len - 1
    start, n = int(cfg.start), int(cfg.frames)
    if start < 1 or start + n > ep.length:
        raise InputError(f"start={start} frames={n} does not fit episode {ep.name} of {ep.length} frames")
    frames, actions = ep.frames(), ep.actions()
    causing = np.concatenate([np.zeros_like(actions[:1]), actions[:-1]])
    lo = max(0, start - ctx)
    gen = rollout(teacher, frames[lo:start], causing[start:start + n], steps=int(cfg.steps), seed=int(cfg.seed),
                  start_actions=causing[lo:start], context_sigma=float(cfg.context_sigma))
    with VideoWriter(cfg.out, fps=rec.fps, scale=4) as video:
        for real, fake in zip(frames[start:start + n], gen):
            video.write(hstack(real, fake))
    if cfg.png:
        _write_strip(cfg.png, frames[start:start + n], gen)
    scores = [psnr(g, r) for g, r in zip(gen, frames[start:start + n])]
    print(f"wrote {cfg.out}: episode {ep.name}, frames {start}..{start + n - 1}, {cfg.steps} steps a frame; "
          f"PSNR at 1/{min(4, n)}/{n}: {scores[0]:.2f}/{scores[min(4, n) - 1]:.2f}/{scores[-1]:.2f} dB")
    if cfg.metrics:
        tc = teacher.metadata["provenance"].get("train_config", {})
        _, val = split_episodes(rec, float(tc.get("val_fraction", 0.1)), seed=int(tc.get("seed", 0)))
        result = fidelity(teacher, rec, val, horizons=tuple(cfg.horizons), starts=int(cfg.starts),
                          steps=int(cfg.steps), seed=int(cfg.seed), context_sigma=float(cfg.context_sigma))
        print(json.dumps(result, indent=1))
    return 0


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
