"""The typed settings of the commands: one dataclass per command, registered with hydra as ``schema/<command>``;
and the settings several commands share (the engine, the window, a recording plan, a game's config entry).

A command's dataclass holds each of its settings once, with its type, its default and a comment of intent. Its
``configs/<command>.yaml`` starts its defaults list with ``schema/<command>`` and then holds only what differs: the
config groups it takes (``game``, ``budget``, ``runtime``) and presets. Hydra checks every value against the
field's type as it composes, so ``steps=abc`` is a one-line error before the command starts, and the command gets
a typed config (``cfg.frames`` is an int). Commands not listed here are composed from their YAML alone.

A config group shared by several commands can be a dataclass too: ``RuntimeSettings`` is the group ``runtime``'s
option ``default`` (stored here, no YAML), so ``runtime.scale=4`` is checked like any other setting.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from omegaconf import OmegaConf

from games.registry import make_game
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
    "game": "runtime.commands.game:GameCommandConfig",
    "replay": "runtime.commands.replay:ReplayConfig",
}


def register(command: str) -> None:
    """Store the group option ``runtime/default`` and ``command``'s dataclass, if it has one, as the config
    ``schema/<command>`` (at the config's root)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(group="runtime", name="default", node=RuntimeSettings)
    if command not in SCHEMAS:
        return
    module, name = SCHEMAS[command].split(":")
    node = getattr(importlib.import_module(module), name)
    store.store(group="schema", name=command, node=node, package="_global_")


@dataclass
class RuntimeSettings:
    """The window and its fixed tick, for the commands that show frames (``game``, ``play``, ``kiosk``,
    ``replay``): the config group ``runtime`` (``runtime.scale=4``)."""
    fps: Optional[float] = None  # ticks per second; None = the frame source's own rate
    scale: int = 8  # window size = frame size x scale (integer scaling keeps pixels square)
    filter: str = "nearest"  # nearest | linear texture filtering when scaling up
    fullscreen: bool = False  # start fullscreen (the fullscreen control toggles it)
    vsync: bool = False  # show each frame at the display's refresh (no tearing, up to a refresh of latency)
    # action key -> a pygame key name or a list of them, e.g. {UP: [up, k]}; unset keys keep the game's defaults
    bindings: Optional[Dict[str, Any]] = field(default_factory=dict)
    hud: bool = True  # show the HUD over the picture: fps, tick time, key-to-frame latency, held keys, overruns
    screenshots: str = "screenshots"  # folder for screenshots (the clean frame at the window's scale, PNG)
    # play control -> pygame key names (runtime.input.CONTROLS); a key the game binds cannot be a control
    controls: Optional[Dict[str, Any]] = field(default_factory=lambda: {
        "quit": ["escape"],
        "pause": ["p", "pause"],
        "reset": ["r"],  # restart with a new seed; Shift+R: from a new start
        "hud": ["f1", "h"],
        "help": ["f2", "?"],
        "screenshot": ["f12"],
        "fullscreen": ["f11"],
    })


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
    device: str = "cpu"  # cpu | cuda | auto (cuda where torch sees one); cpu unless asked, never cuda by accident


@dataclass
class RecordingPlan:
    """What a scripted agent records (``games.record.record_dataset``); the pipeline's record stage too."""
    agent: str = "auto"  # auto (the game's heuristic agent where it has one, else random) | heuristic | random
    episodes: int = 10
    frames: int = 1000  # frames per episode
    chunk_frames: int = 256  # frames per chunk file; a crash loses at most the chunk being written


def build_game(game_cfg):
    """The game a ``game`` config group entry describes."""
    params = {k: v for k, v in OmegaConf.to_container(game_cfg).items() if k not in ("name", "width", "height")}
    name = f"gym:{params.pop('env_id')}" if game_cfg.name == "gym" else game_cfg.name
    return make_game(name, width=int(game_cfg.width), height=int(game_cfg.height), **params)
