"""The typed settings of the commands: one dataclass per command, registered with hydra as ``schema/<command>``.

A command's dataclass holds each of its settings once, with its type, its default and a comment of intent. Its
``configs/<command>.yaml`` starts its defaults list with ``schema/<command>`` and then holds only what differs: the
config groups it takes (``game``, ``budget``, ``runtime``) and presets. Hydra checks every value against the
field's type as it composes, so ``steps=abc`` is a one-line error before the command starts, and the command gets
a typed config (``cfg.frames`` is an int). Commands not listed here are composed from their YAML alone.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Optional

from worldmodel.engine.config import EngineConfig

# command -> "module:Class" of its settings (imported only when that command is composed: several import torch)
SCHEMAS: dict[str, str] = {
    "train": "worldmodel.train.teacher:TrainConfig",
    "train-codec": "worldmodel.train.codec:CodecTrainConfig",
    "distill": "worldmodel.distill.distiller:DistillConfig",
    "pipeline": "runtime.commands.pipeline:PipelineConfig",
    "dream": "runtime.commands.world:DreamConfig",
    "bench": "runtime.commands.world:BenchConfig",
    "record": "runtime.commands.data:RecordConfig",
    "check": "runtime.commands.data:CheckConfig",
    "import": "runtime.commands.data:ImportConfig",
    "export": "runtime.commands.data:ExportConfig",
    "bundle": "runtime.commands.bundle:BundleConfig",
    "sample": "runtime.commands.model:SampleConfig",
    "kiosk": "runtime.commands.kiosk:KioskSettings",
    "eval": "runtime.evaluation:EvalConfig",
    "play": "runtime.commands.play:PlayConfig",
}


def register(command: str) -> None:
    """Store ``command``'s dataclass, if it has one, as the config ``schema/<command>`` (at the config's root)."""
    if command not in SCHEMAS:
        return
    from hydra.core.config_store import ConfigStore

    module, name = SCHEMAS[command].split(":")
    node = getattr(importlib.import_module(module), name)
    ConfigStore.instance().store(group="schema", name=command, node=node, package="_global_")


@dataclass
class EngineChoice:
    """How a command runs a world model (``worldmodel.engine.config.EngineConfig``); ``mode``, ``window``, ``sink``
    and ``recent`` left None are those the checkpoint was distilled with (``runtime.worlds.engine_config``)."""
    mode: Optional[str] = None  # rolling | framewise | teacher; None: as the checkpoint was distilled (else rolling)
    window: Optional[int] = None  # frames in the rolling window = denoising steps; None: as distilled, else 4
    sink: Optional[int] = None  # attention-sink frames; None: as distilled, else 1; 0 = no sink
    recent: Optional[int] = None  # recent frames in the KV cache; None: as distilled, else 4
    teacher_steps: int = EngineConfig.teacher_steps  # steps per frame in teacher mode
    fuse_reencode: bool = EngineConfig.fuse_reencode  # compute the emitted frame's clean keys/values in the next pass
    compile: bool = EngineConfig.compile  # torch.compile the fixed-shape rolling tick at start-up
