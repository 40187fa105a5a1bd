"""``rollingworld bundle ckpt=FILE data=DIR out=FILE``: ship a student in ``assets/``.

A bundled model is one checkpoint file that plays on its own:

- ``model.``: the denoiser's weights in ``dtype`` (float16: half the size; loading casts them back to float32);
- ``codec.``: the codec as it was, in float32 (tens of thousands of parameters: halving them saves little and
  rounds every decoded pixel);
- ``start.frames`` uint8 [K, S, H, W, 3]: the first S real frames of K episodes of the recording (or of K places
  spread through fewer, longer episodes: one long recording gives K starts too). A session starts
  from start ``seed % K`` (``play``, ``dream``, ``bench``), so the model needs neither its game's code nor a
  recording. S is the number of start frames it was distilled with.

``metadata["bundle"]`` says what it was made from (checkpoint and its sha256, recording, episodes, dtype, date).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from games.data.errors import InputError

DTYPES = ("float16", "bfloat16", "float32")
START_FRAMES = 4  # start frames of a sequence when the checkpoint does not say (DistillConfig.start_frames)


@dataclass
class BundleConfig:
    ckpt: str = "???"  # the checkpoint to ship (rollingworld distill's student.safetensors)
    data: str = "???"  # a recording of its game: the start frames are the first frames of its episodes
    out: str = "???"  # the bundled checkpoint, e.g. assets/pong.safetensors
    dtype: str = "float16"  # the denoiser's weights: float16 | bfloat16 | float32 (the codec stays float32)
    starts: int = 8  # start sequences, one episode each; a session's start seed picks one (seed % starts)
    start_frames: Optional[int] = None  # frames in a start sequence; None = as distilled (START_FRAMES if unsaid)
    max_mb: float = 20.0  # refuse to write a file this large or larger (bundled models ship with the code)


def start_frames(rec, starts: int, length: int) -> tuple[np.ndarray, list[int], list[int]]:
    """``starts`` sequences of ``length`` real frames: the first frames of each of the first ``starts`` episodes of
    ``rec`` that are that long; when there are fewer such episodes (one long recording), the rest start further
    into them, spread evenly over each. uint8 [K, S, H, W, 3] with K <= starts (fewer only when the episodes are
    too short to hold ``starts`` different ones), the episode of each and its first frame."""
    long_enough = [ep for ep in rec if ep.length >= length]
    if not long_enough:
        raise InputError(f"{rec.root} has no episode of at least {length} frames to start from")
    chosen = long_enough[:starts]
    count = {ep.index: 0 for ep in chosen}
    for k in range(starts):  # round robin: each episode gets its share of the starts
        count[chosen[k % len(chosen)].index] += 1
    picks = []
    for ep in chosen:
        room = ep.length - length  # the last frame a start may begin at
        offsets = sorted({round(j * room / count[ep.index]) for j in range(count[ep.index])})
        picks += [(ep, o) for o in offsets]
    return (np.stack([ep.frames(o, o + length) for ep, o in picks]), [ep.index for ep, _ in picks],
            [o for _, o in picks])


def _file_bytes(tensors: dict, metadata: dict) -> int:
    """An upper bound of the safetensors file's size: the tensors' bytes plus a generous header."""
    data = sum(t.numel() * t.element_size() for t in tensors.values())
    header = 2 * len(json.dumps(metadata)) + sum(len(name) + 160 for name in tensors) + 1024
    return data + header


def without_machine_paths(value):
    """``value`` (metadata) with every absolute path cut to its last name: a shipped file says what it was made
    from (names, sha256) without the folders of the machine that built it."""
    if isinstance(value, dict):
        return {k: without_machine_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_machine_paths(v) for v in value]
    if isinstance(value, str) and value.startswith("/") and len(value) > 1:
        return Path(value).name
    return value


def run(cfg) -> int:
    import torch

    from games.data.recording import Recording
    from runtime.session_record import file_sha256
    from worldmodel.checkpoint import check_recording_fits, load_checkpoint, save_checkpoint

    if cfg.dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {cfg.dtype!r}")
    if cfg.starts < 1:
        raise InputError(f"starts must be at least 1, got {cfg.starts}")
    source = Path(cfg.ckpt)
    ckpt = load_checkpoint(source)
    meta, info = ckpt.metadata, ckpt.info
    rec = Recording(cfg.data)
    check_recording_fits(info, rec, cfg.data)
    distilled = info.distill.get("config", {})
    length = cfg.start_frames or int(distilled.get("start_frames", START_FRAMES))
    least = max(info.engine.sink if info.engine else 1, 1)  # the sink is filled from the start frames
    if length < least:
        raise InputError(f"start_frames must be at least {least} (the checkpoint's sink frames), got {length}")
    frames, episodes, offsets = start_frames(rec, cfg.starts, length)

    dtype = getattr(torch, cfg.dtype)
    tensors = {name: t.to(dtype) if name.startswith("model.") and t.is_floating_point() else t
               for name, t in ckpt.tensors.items() if not name.startswith("start.")}  # a re-bundle replaces them
    tensors["start.frames"] = torch.from_numpy(np.ascontiguousarray(frames))  # [K, S, H, W, 3] uint8
    meta = {**meta, "bundle": {
        "source": str(source.resolve()), "source_sha256": file_sha256(source), "dtype": cfg.dtype,
        "data": str(Path(cfg.data).resolve()), "game": rec.game, "start_episodes": episodes,
        "start_offsets": offsets, "start_frames": length, "time": time.strftime("%Y-%m-%d %H:%M:%S")}}
    meta = without_machine_paths(meta)
    size = _file_bytes(tensors, meta)
    if size >= cfg.max_mb * 1e6:
        raise InputError(f"{cfg.out} would be {size / 1e6:.1f} MB, more than max_mb={cfg.max_mb:g}: use a smaller "
                         "dtype or fewer starts, or raise max_mb")
    out = save_checkpoint(cfg.out, tensors, meta)
    note = f" (the recording's episodes are too short for more)" if len(episodes) < cfg.starts else ""
    print(f"wrote {out}: {out.stat().st_size / 1e6:.2f} MB (from {source.stat().st_size / 1e6:.2f} MB), "
          f"denoiser {cfg.dtype}, codec as trained, {len(episodes)} starts of {length} frames{note}")
    return 0
