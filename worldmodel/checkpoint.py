"""Shipping checkpoints: safetensors weights plus a JSON header that says what they are.

A checkpoint is one safetensors file. Its string metadata holds ``format`` (``FORMAT``), ``version``, ``data_sha256``
(a checksum of the tensors, so flipped bits are caught) and ``rollingworld``: one JSON object with the model config,
the action space, the codec, the noise schedule, the training step and the provenance of the data (read through
``metadata.ModelInfo``). Loading never unpickles and never instantiates a class named in the file: the metadata is
plain JSON that the caller reads, and the weights are plain tensors.

Files are written atomically (a hidden ``.<name>.partial`` in the same folder, fsync, rename, fsync of the folder),
so a crash leaves either the old file or the new one. Anything wrong with a file the user points at is a one-line
``CheckpointError``. The file layer (``write_safetensors``, ``read_header``, ``read_tensors``) is shared with
``worldmodel.train.state``.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from games.data.actions import ActionSpace
from games.data.errors import InputError
from worldmodel.metadata import ModelInfo

FORMAT = "rollingworld-checkpoint"
VERSION = 1
# every checkpoint's metadata has these fields, of these types
REQUIRED = {"kind": str, "model": dict, "action_space": dict, "codec": dict, "schedule": dict, "step": int,
            "provenance": dict}
# the formats this project writes, by what a user would call them (so a mix-up gets a precise message)
FORMAT_NAMES = {FORMAT: "checkpoint", "rollingworld-train-state": "training state"}
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit on the JSON header


class CheckpointError(InputError):
    """A checkpoint or training-state file that is missing, foreign, corrupt, too new, or does not fit its use."""


@dataclass
class Checkpoint:
    path: Path
    tensors: dict[str, torch.Tensor]  # name -> tensor, e.g. "model.blocks.0.attn.qkv.weight"
    metadata: dict  # the JSON metadata: kind, model, action_space, codec, schedule, step, provenance, ...

    @property
    def info(self) -> ModelInfo:
        return ModelInfo.from_metadata(self.metadata)

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors under ``prefix`` (e.g. "model."), named without it: a module's state dict."""
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}


# ---------------------------------------------------------------------------------------------------- file layer

def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``tensors`` in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _prepare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors, none sharing memory with another (safetensors refuses shared storage,
    e.g. tied weights or a view of a larger tensor, so those are cloned)."""
    out, seen = {}, set()
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name!r} is a {type(t).__name__}, not a tensor")
        t = t.detach().to("cpu").contiguous()
        storage = t.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != t.numel() * t.element_size():
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[str(name)] = t
    return out


def _fsync_folder(folder: Path) -> None:
    if not hasattr(os, "O_DIRECTORY"):  # Windows cannot open a folder; the rename is still atomic there
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_safetensors(path, tensors: dict[str, torch.Tensor], header: dict[str, str]) -> Path:
    """Write ``tensors`` with string metadata ``header`` (plus ``data_sha256``) to ``path`` atomically."""
    path = Path(path)
    prepared = _prepare(tensors)
    header = {**header, "data_sha256": tensor_digest(prepared)}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        save_file(prepared, str(partial), metadata=header)
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        os.replace(partial, path)
    except (OSError, SafetensorError) as e:  # a full disk, say: the old file stays, and the message names this one
        partial.unlink(missing_ok=True)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else _one_line(e)
        raise OSError(getattr(e, "errno", None) or errno.EIO, reason, str(path)) from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def read_header(path, what: str = "checkpoint", shapes: dict | None = None) -> dict[str, str]:
    """The string metadata of the safetensors file ``path``, after checking that its header is sound and that the
    file holds exactly the bytes the header promises (so a truncated file is caught before any data is read).
    ``shapes``: a dict that receives each tensor's name -> shape, as the header lists them."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{what} {path} is not a file")
    size = path.stat().st_size
    not_ours = CheckpointError(f"{path} is not a safetensors file (a rollingworld {what} is one)")
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{what} {path} is truncated or not a safetensors file ({size} bytes)"
                                  if size else f"{what} {path} is empty")
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > MAX_HEADER_BYTES:
            raise not_ours
        if 8 + n > size:
            raise CheckpointError(f"{what} {path} is truncated: it ends inside its header ({size:,} bytes)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
        ends = [int(info["data_offsets"][1]) for name, info in header.items() if name != "__metadata__"]
        meta = header.get("__metadata__") or {}
        if shapes is not None:
            shapes.update({name: tuple(int(n) for n in info["shape"]) for name, info in header.items()
                           if name != "__metadata__"})
    except (UnicodeDecodeError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise not_ours from None
    if not isinstance(meta, dict):
        raise not_ours
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        raise CheckpointError(f"{what} {path} is truncated: {size:,} of {expected:,} bytes")
    if size > expected:
        raise CheckpointError(f"{what} {path} is corrupt: {size - expected:,} stray bytes after its data")
    return meta


def read_tensors(path, header: dict[str, str], what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """All tensors of ``path`` on the CPU, checked against the ``data_sha256`` in ``header`` when it has one."""
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"{what} {path} is corrupt: {_one_line(e)}") from None
    digest = header.get("data_sha256")
    if digest is not None and tensor_digest(tensors) != digest:
        raise CheckpointError(f"{what} {path} is corrupt: its tensors do not match the checksum written with them")
    return tensors


def parse_metadata(path, header: dict[str, str], fmt: str, version: int, what: str) -> dict:
    """The JSON metadata of a file of format ``fmt``, or a CheckpointError saying what the file is instead."""
    found = header.get("format")
    if found is None:
        raise CheckpointError(f"{path} is a safetensors file but not a rollingworld {what}")
    if found != fmt:
        if found in FORMAT_NAMES:
            raise CheckpointError(f"{path} is a rollingworld {FORMAT_NAMES[found]}, not a {what}")
        raise CheckpointError(f"{path} is a safetensors file but not a rollingworld {what} (format {found!r})")
    try:
        found_version = int(header.get("version", ""))
    except ValueError:
        raise CheckpointError(f"{what} {path} is corrupt: bad version {header.get('version')!r}") from None
    if found_version > version:
        raise CheckpointError(f"{what} {path} has version {found_version}, newer than this rollingworld reads "
                              f"({version}): update rollingworld")
    try:
        body = json.loads(header["rollingworld"])
    except (KeyError, ValueError):
        raise CheckpointError(f"{what} {path} is corrupt: its metadata is missing or not JSON") from None
    if not isinstance(body, dict):
        raise CheckpointError(f"{what} {path} is corrupt: its metadata is not a JSON object")
    return body


# ---------------------------------------------------------------------------------------------- checkpoints

def _missing_or_wrong(metadata: dict) -> str | None:
    """What is wrong with the required fields of ``metadata``, or None."""
    missing = [k for k in REQUIRED if k not in metadata]
    if missing:
        return f"missing metadata field{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
    for key, kind in REQUIRED.items():
        value = metadata[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"metadata field {key!r} should be a {kind.__name__}, not {value!r:.60}"
    return None


def save_checkpoint(path, tensors: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Write a checkpoint atomically. ``metadata`` must hold the ``REQUIRED`` fields and be JSON-able."""
    problem = _missing_or_wrong(metadata)
    if problem:
        raise ValueError(f"cannot save checkpoint {path}: {problem}")
    header = {"format": FORMAT, "version": str(VERSION), "rollingworld": json.dumps(metadata)}
    return write_safetensors(path, tensors, header)


def _checked_metadata(path: Path, validate: bool = True) -> tuple[dict, dict]:
    """(the header, the metadata) of the checkpoint ``path`` with its required fields present and, with
    ``validate``, everything a command builds from it checked against its weights' shapes (``worldmodel.schema``);
    else a one-line CheckpointError."""
    from worldmodel.schema import check_metadata

    shapes: dict = {}
    header = read_header(path, shapes=shapes)
    metadata = parse_metadata(path, header, FORMAT, VERSION, "checkpoint")
    problem = _missing_or_wrong(metadata)
    if problem:
        raise CheckpointError(f"checkpoint {path} is incomplete: {problem}")
    if validate:
        try:
            check_metadata(metadata, shapes)
        except InputError as e:
            raise CheckpointError(f"checkpoint {path} has bad metadata: {e}") from None
    return header, metadata


def load_checkpoint(path, device="cpu", expect: str | None = None, validate: bool = True) -> Checkpoint:
    """Read and validate a checkpoint; ``expect`` is the kind the caller needs ("teacher", "student", "codec").
    ``validate=False`` checks the file and its required fields only, not that a model can be built from it (the
    file format's own tests, with made-up metadata)."""
    path = Path(path)
    header, metadata = _checked_metadata(path, validate)
    if expect is not None and metadata["kind"] != expect:
        raise CheckpointError(f"{path} is a {metadata['kind']} checkpoint; a {expect} checkpoint is needed here")
    tensors = read_tensors(path, header)
    if torch.device(device).type != "cpu":
        tensors = {name: t.to(device) for name, t in tensors.items()}
    return Checkpoint(path=path, tensors=tensors, metadata=metadata)


def read_model_info(path) -> ModelInfo:
    """What the checkpoint ``path`` says of its model, from its header alone (the weights are not read), checked
    as ``load_checkpoint`` checks it."""
    return ModelInfo.from_metadata(_checked_metadata(Path(path))[1])


def check_recording_fits(info: ModelInfo, recording, data, same_game: bool = True) -> None:
    """An InputError unless ``recording`` (of the folder ``data``) shows the model's game (by name, with
    ``same_game``) at its frame size and controls."""
    if same_game and info.game is not None and recording.game != info.game:
        raise InputError(f"{data} is a recording of {recording.game!r}, the checkpoint's game is {info.game!r}")
    want = info.frame_size
    if want is not None and (recording.height, recording.width) != want:
        raise InputError(f"{data} has {recording.width}x{recording.height} frames, the checkpoint makes "
                         f"{want[1]}x{want[0]}")
    try:
        check_action_space(info, recording.action_space)
    except CheckpointError as e:
        raise InputError(f"{data} does not fit the checkpoint: {e}") from None


def describe_action_space(space: ActionSpace, scale: bool = False) -> str:
    """"keys UP, DOWN + mouse (buttons LEFT)": the controls in words, in vector order."""
    text = f"keys {', '.join(space.keys)}" if space.keys else "no keys"
    if space.mouse:
        text += " + mouse"
        if space.buttons:
            text += f" (buttons {', '.join(space.buttons)})"
        if scale:
            text += f" at {space.mouse_scale:g} px per tick"
    return text


def check_action_space(checkpoint_metadata, action_space: ActionSpace) -> None:
    """Raise a CheckpointError naming the difference if the checkpoint (a ``Checkpoint``, its ``ModelInfo`` or
    its metadata) was trained on other controls."""
    if isinstance(checkpoint_metadata, ModelInfo):
        trained = checkpoint_metadata.action_space
    else:
        meta = checkpoint_metadata.metadata if isinstance(checkpoint_metadata, Checkpoint) else checkpoint_metadata
        try:
            trained = ActionSpace.from_dict(meta["action_space"])
        except (KeyError, TypeError, InputError):
            raise CheckpointError("the checkpoint does not say which actions it was trained on") from None
    if trained == action_space:
        return
    theirs, ours = describe_action_space(trained), describe_action_space(action_space)
    if theirs == ours:  # only the mouse scale differs, which changes what a vector entry means
        theirs, ours = describe_action_space(trained, scale=True), describe_action_space(action_space, scale=True)
    raise CheckpointError(f"checkpoint was trained on {theirs}; these actions have {ours}")


# ------------------------------------------------------------------------------------------------- describe

def _count(n: float, units=(("B", 1e9), ("M", 1e6), ("K", 1e3)), last: str = "") -> str:
    """7412345 -> "7.41M" (parameters); with byte units, "7.41 MB"."""
    for unit, size in units:
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return f"{int(n)}{last}"


BYTE_UNITS = ((" GB", 1e9), (" MB", 1e6), (" KB", 1e3))


def _flat(d: dict, skip=(), prefix: str = "") -> str:
    """"a=1, b.c=2": a nested config on one line."""
    parts = []
    for key, value in d.items():
        if key in skip:
            continue
        if isinstance(value, dict) and value:
            parts.append(_flat(value, prefix=f"{prefix}{key}."))
            continue
        text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
        parts.append(f"{prefix}{key}={text if len(text) <= 60 else text[:57] + '...'}")
    return ", ".join(parts) or "-"


def describe_checkpoint(path, validate: bool = True) -> list[str]:
    """What a checkpoint is, as lines for ``rollingworld check ckpt=FILE`` (after loading and verifying it)."""
    ckpt = load_checkpoint(path, validate=validate)
    meta = ckpt.metadata
    numel: dict[str, int] = {}
    for name, t in ckpt.tensors.items():
        group = name.split(".", 1)[0] if "." in name else "(top level)"
        numel[group] = numel.get(group, 0) + t.numel()
    model = meta["model"]
    size = model.get("size") or model.get("name") or "custom"
    try:
        actions = ActionSpace.from_dict(meta["action_space"])
        action_line = f"{describe_action_space(actions, scale=True)} ({actions.size} entries)"
    except InputError:
        action_line = f"unreadable: {meta['action_space']!r:.80}"
    lines = [
        f"checkpoint: {ckpt.path} ({_count(ckpt.path.stat().st_size, BYTE_UNITS, ' bytes')} on disk, "
        "checksum verified)",
        f"kind: {meta['kind']}",
        f"model: {size}, {_count(numel.get('model', 0))} parameters",
        f"config: {_flat(model, skip=('size', 'name'))}",
        f"weights: {', '.join(f'{g} {_count(n)}' for g, n in sorted(numel.items())) or 'none'}"
        f" in {len(ckpt.tensors)} tensors",
        f"actions: {action_line}",
        f"codec: {_flat(meta['codec'])}",
        f"schedule: {_flat(meta['schedule'])}",
        f"step: {meta['step']:,}",
        "provenance:",
    ]
    lines += [f"  {key}: {_flat(value) if isinstance(value, dict) else value}"
              for key, value in meta["provenance"].items()] or ["  (none recorded)"]
    lines += [f"{key}: {_flat(value) if isinstance(value, dict) else value}"
              for key, value in meta.items() if key not in REQUIRED]
    return lines
