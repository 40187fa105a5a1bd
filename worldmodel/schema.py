"""What a checkpoint's metadata must say, checked once, before any model is built from it.

A checkpoint's JSON metadata (``worldmodel.checkpoint``) names the shapes of the networks its weights fill: the
denoiser (``model``), the codec (``codec``), the noise schedule, the action space, the frame and, for a student,
the engine settings it was distilled for. ``check_metadata`` checks each field's type and range, the cross-checks
between them (heads divide the width, the patch divides the latent grid, the action vector is the action space's)
and finally the metadata against the weights themselves: the networks are built on torch's ``meta`` device (no
memory, so a hostile ``dim`` cannot ask for terabytes) and their parameter shapes compared with the file's. What
fails is one ``CheckpointError`` line naming the field; nothing in the metadata is ever imported or called.
"""
from __future__ import annotations

from dataclasses import fields

import torch

from games.data.actions import ActionSpace
from games.data.errors import InputError
from worldmodel.metadata import EngineSettings

KINDS = ("teacher", "student", "codec")
# integer fields of the denoiser's config: (smallest, largest) it may take
MODEL_INTS = {"channels": (1, 64), "height": (1, 1024), "width": (1, 1024), "patch": (1, 64), "dim": (8, 4096),
              "depth": (1, 128), "heads": (1, 128), "action_dim": (1, 4096)}
MODEL_BOOLS = ("stack_prev", "residual", "null_action")


class MetadataError(InputError):
    """One thing wrong with a checkpoint's metadata (the caller adds which file)."""


def _int(value, name: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise MetadataError(f"{name} must be an integer in {low}..{high}, not {value!r:.40}")
    return value


def _number(value, name: str, low: float, high: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low < value <= high:
        raise MetadataError(f"{name} must be a number in ({low:g}, {high:g}], not {value!r:.40}")
    return float(value)


def _dict(meta: dict, key: str) -> dict:
    value = meta.get(key)
    if not isinstance(value, dict):
        raise MetadataError(f"{key} must be an object, not {value!r:.40}")
    return value


def check_frame(meta: dict) -> None:
    frame = meta.get("frame")
    if frame is None:
        return  # older teachers did not say
    if not isinstance(frame, dict):
        raise MetadataError(f"frame must be an object, not {frame!r:.40}")
    for key in ("height", "width"):
        if key in frame:
            _int(frame[key], f"frame.{key}", 1, 4096)
    if "fps" in frame:
        _number(frame["fps"], "frame.fps", 0, 1000)


def check_engine(meta: dict) -> None:
    from worldmodel.engine.config import MODES

    engine = meta.get("engine")
    if engine is None:
        return
    if not isinstance(engine, dict):
        raise MetadataError(f"engine must be an object, not {engine!r:.40}")
    unknown = sorted(set(engine) - {f.name for f in fields(EngineSettings)})
    if unknown:
        raise MetadataError(f"unknown engine setting(s) {', '.join(unknown)}")
    if "mode" in engine and engine["mode"] not in (*MODES, "rolling_nosink"):
        raise MetadataError(f"engine.mode must be one of {', '.join(MODES)}, not {engine['mode']!r:.40}")
    for key, (low, high) in {"window": (1, 64), "sink": (0, 64), "recent": (0, 256)}.items():
        if key in engine:
            _int(engine[key], f"engine.{key}", low, high)


def check_schedule(meta: dict) -> None:
    from worldmodel.nn.flow import NoiseSchedule

    schedule = _dict(meta, "schedule")
    known = {f.name: f for f in fields(NoiseSchedule)}
    unknown = sorted(set(schedule) - set(known))
    if unknown:
        raise MetadataError(f"unknown schedule setting(s) {', '.join(unknown)}")
    for key, value in schedule.items():
        if key == "prediction":
            if value not in ("x0", "v"):
                raise MetadataError(f"schedule.prediction must be x0 or v, not {value!r:.40}")
        elif not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
            raise MetadataError(f"schedule.{key} must be a number, not {value!r:.40}")


def model_config(meta: dict, space: ActionSpace):
    """The denoiser's ``DiTConfig`` from a teacher's or student's metadata, every field checked."""
    from worldmodel.nn.dit import DiTConfig

    model = _dict(meta, "model")
    known = {f.name for f in fields(DiTConfig)}
    unknown = sorted(set(model) - known - {"size"})
    if unknown:
        raise MetadataError(f"unknown model setting(s) {', '.join(unknown)}")
    missing = [k for k in MODEL_INTS if k not in model]
    if missing:
        raise MetadataError(f"model is missing {', '.join(missing)}")
    values = {k: _int(model[k], f"model.{k}", *MODEL_INTS[k]) for k in MODEL_INTS}
    for key in MODEL_BOOLS:
        if key in model and not isinstance(model[key], bool):
            raise MetadataError(f"model.{key} must be true or false, not {model[key]!r:.40}")
    if "mlp_ratio" in model:
        _number(model["mlp_ratio"], "model.mlp_ratio", 0, 16)
    if values["dim"] % values["heads"] or (values["dim"] // values["heads"]) % 2:
        raise MetadataError(f"model.heads ({values['heads']}) must divide model.dim ({values['dim']}) into an even "
                            "width per head")
    if values["height"] % values["patch"] or values["width"] % values["patch"]:
        raise MetadataError(f"model.patch ({values['patch']}) must divide the latent grid "
                            f"({values['height']}x{values['width']})")
    if values["action_dim"] != space.size:
        raise MetadataError(f"model.action_dim is {values['action_dim']} but the action space has {space.size} "
                            f"numbers ({', '.join(space.names)})")
    return DiTConfig.from_metadata(model)


def _compare(built: torch.nn.Module, shapes: dict[str, tuple], prefix: str, what: str) -> None:
    """The parameter shapes of ``built`` against those stored under ``prefix``."""
    want = {f"{prefix}{k}": tuple(v.shape) for k, v in built.state_dict().items()}
    have = {k: v for k, v in shapes.items() if k.startswith(prefix)}
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or extra:
        names = ", ".join((missing or extra)[:2])
        raise MetadataError(f"its {what} metadata does not match its weights: "
                            + (f"no weights for {names}" if missing else f"weights {names} that it has no place for"))
    for name, shape in want.items():
        if tuple(have[name]) != shape:
            raise MetadataError(f"its {what} metadata does not match its weights: {name} is "
                                f"{list(have[name])}, the metadata makes {list(shape)}")


def check_metadata(meta: dict, shapes: dict[str, tuple]) -> None:
    """Everything a command will build from a checkpoint's ``meta``, checked against the tensor ``shapes`` its file
    holds (name -> shape); a MetadataError names the first field that is wrong."""
    from worldmodel.nn.codec import make_codec
    from worldmodel.nn.dit import DiT

    if meta.get("kind") not in KINDS:
        raise MetadataError(f"kind must be one of {', '.join(KINDS)}, not {meta.get('kind')!r:.40}")
    try:
        space = ActionSpace.from_dict(meta["action_space"])
    except (InputError, TypeError, ValueError, KeyError, AttributeError) as e:
        raise MetadataError(f"bad action_space: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    check_frame(meta)
    check_engine(meta)
    codec_meta = meta.get("codec")
    if codec_meta is not None:
        with torch.device("meta"):
            codec = make_codec(codec_meta)
        _compare(codec, shapes, "codec.", "codec")
    if meta["kind"] == "codec":
        return
    check_schedule(meta)
    cfg = model_config(meta, space)
    try:
        with torch.device("meta"):
            net = DiT(cfg)
    except (ValueError, AssertionError, RuntimeError, ZeroDivisionError) as e:
        raise MetadataError(f"bad model settings: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    _compare(net, shapes, "model.", "model")
