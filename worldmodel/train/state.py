"""The full state of a training run, for a bit-exact ``resume=true``: weights, optimizers, random generators.

One safetensors file (format ``rollingworld-train-state``), written atomically like a checkpoint and never
unpickled. Tensors are named by where they come from:

- ``<module>.<state_dict key>`` for every module (network, EMA copy, critic, ...),
- ``<optimizer>.state.<param index>.<field>`` for per-parameter optimizer state (AdamW: ``step``, ``exp_avg``,
  ``exp_avg_sq``), and ``<optimizer>.param_groups.<i>.<key>`` for the rare hyper-parameter held as a tensor,
- ``extra.<path>`` for tensors inside ``extra`` (e.g. the torch RNG state from ``rng_state``).

Everything else (the param groups' hyper-parameters, the ``extra`` dict: step counters, Python and numpy RNG
states, the data order) is JSON in the ``rollingworld`` metadata. JSON keeps floats exact (shortest repr) and
Python's arbitrary-size integers (numpy's 128-bit PCG64 state), which is what makes the resume bit-exact.

Typical use in a training loop::

    save_train_state(run / "state.safetensors", {"model": model, "ema": ema}, {"opt": opt},
                     {"step": step, "rng": rng_state({"data": data_rng})})
    ...
    extra = load_train_state(run / "state.safetensors", {"model": model, "ema": ema}, {"opt": opt})
    restore_rng_state(extra["rng"], {"data": data_rng})
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from worldmodel.checkpoint import (FORMAT_NAMES, CheckpointError, _one_line, parse_metadata, read_header,
                                   read_tensors, write_safetensors)

FORMAT = "rollingworld-train-state"
VERSION = 1
WHAT = FORMAT_NAMES[FORMAT]  # "training state", in messages
TENSOR = "__tensor__"  # marks where a tensor stood in the JSON: {"__tensor__": "<tensor name>"}


def _jsonable(obj, prefix: str, tensors: dict[str, torch.Tensor]):
    """``obj`` as JSON-able data, moving each tensor into ``tensors`` under its dotted path."""
    if isinstance(obj, torch.Tensor):
        if prefix in tensors:
            raise ValueError(f"two tensors would be named {prefix!r}: give modules and optimizers distinct names")
        tensors[prefix] = obj
        return {TENSOR: prefix}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _restore(obj, tensors: dict[str, torch.Tensor], path):
    """Inverse of ``_jsonable``: put the tensors back where their markers stand."""
    if isinstance(obj, dict):
        if set(obj) == {TENSOR}:
            try:
                return tensors[obj[TENSOR]]
            except KeyError:
                raise CheckpointError(f"{WHAT} {path} is corrupt: tensor {obj[TENSOR]!r} is missing") from None
        return {k: _restore(v, tensors, path) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore(v, tensors, path) for v in obj]
    return obj


def save_train_state(path, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                     extra: dict | None = None) -> Path:
    """Write the weights of ``modules``, the state of ``optimizers`` and ``extra`` (JSON-able data and tensors,
    any nesting) to ``path`` atomically."""
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        _jsonable(dict(module.state_dict()), name, tensors)
    saved_optimizers = {}
    for name, optimizer in optimizers.items():
        state = optimizer.state_dict()
        saved_optimizers[name] = {
            "state": {str(i): _jsonable(fields, f"{name}.state.{i}", tensors) for i, fields in state["state"].items()},
            "param_groups": [_jsonable(g, f"{name}.param_groups.{i}", tensors)
                             for i, g in enumerate(state["param_groups"])],
        }
    body = {"modules": sorted(modules), "optimizers": saved_optimizers,
            "extra": _jsonable(dict(extra or {}), "extra", tensors)}
    header = {"format": FORMAT, "version": str(VERSION), "rollingworld": json.dumps(body)}
    return write_safetensors(path, tensors, header)


def _load_module(path, name: str, module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if f"{name}.{k}" not in tensors]
    unexpected = [k[len(name) + 1:] for k in tensors
                  if k.startswith(f"{name}.") and k[len(name) + 1:] not in expected]
    wrong = [f"{k} {tuple(tensors[f'{name}.{k}'].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k not in missing and tensors[f"{name}.{k}"].shape != v.shape]
    for label, items in (("lacks", missing), ("has unknown", unexpected), ("has other shapes for", wrong)):
        if items:
            more = f" (+{len(items) - 1} more)" if len(items) > 1 else ""
            raise CheckpointError(f"{WHAT} {path} does not fit module {name!r}: it {label} {items[0]}{more}")
    try:
        module.load_state_dict({k: tensors[f"{name}.{k}"] for k in expected}, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{WHAT} {path} does not fit module {name!r}: {_one_line(e)}") from None


def _load_optimizer(path, name: str, optimizer: torch.optim.Optimizer, saved: dict,
                    tensors: dict[str, torch.Tensor]) -> None:
    try:
        state = {int(i): _restore(fields, tensors, path) for i, fields in saved["state"].items()}
        groups = [_restore(g, tensors, path) for g in saved["param_groups"]]
    except (KeyError, TypeError, ValueError, AttributeError):
        raise CheckpointError(f"{WHAT} {path} is corrupt: bad state for optimizer {name!r}") from None
    # JSON turned tuples (AdamW's betas) into lists; give them back the type the optimizer uses
    for group, current in zip(groups, optimizer.param_groups):
        for key, value in group.items():
            if isinstance(current.get(key), tuple) and isinstance(value, list):
                group[key] = tuple(value)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{WHAT} {path} does not fit optimizer {name!r}: {_one_line(e)}") from None


def load_train_state(path, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]) -> dict:
    """Load weights into ``modules`` and state into ``optimizers`` (built as for a fresh run, optimizers over
    these modules' parameters) from ``path``; return the ``extra`` dict that was saved with them."""
    path = Path(path)
    header = read_header(path, WHAT)
    body = parse_metadata(path, header, FORMAT, VERSION, WHAT)
    tensors = read_tensors(path, header, WHAT)
    saved_modules, saved_optimizers = body.get("modules", []), body.get("optimizers", {})
    if sorted(saved_modules) != sorted(modules) or sorted(saved_optimizers) != sorted(optimizers):
        raise CheckpointError(f"{WHAT} {path} holds modules {sorted(saved_modules)} and optimizers "
                              f"{sorted(saved_optimizers)}; this run has {sorted(modules)} and {sorted(optimizers)}")
    for name, module in modules.items():
        _load_module(path, name, module, tensors)
    for name, optimizer in optimizers.items():
        _load_optimizer(path, name, optimizer, saved_optimizers[name], tensors)
    return _restore(body.get("extra", {}), tensors, path)


def rng_state(np_generators: dict[str, np.random.Generator] | None = None) -> dict:
    """Every random generator a training step draws from: torch's CPU generator (a uint8 tensor), CUDA's when
    present (tensors), Python's ``random`` and the named numpy Generators (JSON). Put it in ``extra``."""
    state = {
        "torch": torch.get_rng_state(),
        "python": _jsonable(random.getstate(), "", {}),
        "numpy": {name: _jsonable(g.bit_generator.state, "", {}) for name, g in (np_generators or {}).items()},
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict, np_generators: dict[str, np.random.Generator] | None = None) -> None:
    """Put back what ``rng_state`` captured; ``np_generators`` are set in place and must all have been saved."""
    np_generators = np_generators or {}
    missing = [name for name in np_generators if name not in state.get("numpy", {})]
    if missing:
        raise CheckpointError(f"the saved random state has no numpy generator {missing[0]!r}")
    try:
        torch.set_rng_state(state["torch"].to("cpu", torch.uint8))
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
        for name, generator in np_generators.items():
            generator.bit_generator.state = state["numpy"][name]
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise CheckpointError(f"the saved random state is not usable: {_one_line(e)}") from None
    cuda = state.get("torch_cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([t.to("cpu", torch.uint8) for t in cuda])
