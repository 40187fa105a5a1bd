"""What a checkpoint says about the world model it holds, read once into typed fields.

A checkpoint's JSON metadata (``worldmodel.checkpoint``) is written by the trainer, the distiller and ``bundle``;
every reader goes through ``ModelInfo`` instead of chains of ``.get(...)``: the kind, the game it was recorded
from, the frame size and rate, the action space, the engine settings it was distilled for (a student) and the
held-out split of its data. The full dictionary stays available as ``raw`` for the few writers that copy it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from games.data.actions import ActionSpace


@dataclass(frozen=True)
class EngineSettings:
    """How a student was distilled to play: the rolling window, the attention sink and the ring of recent frames."""
    mode: str = "rolling"  # rolling | framewise | teacher (engine.config.MODES)
    window: int = 4  # W: frames in the rolling window = denoising steps per frame
    sink: int = 1  # S: first frames of a session kept in the cache forever (0: no sink, the paper's ablation)
    recent: int = 4  # C: recent clean frames in the ring

    @classmethod
    def from_dict(cls, d: dict) -> "EngineSettings":
        mode, sink = d.get("mode", cls.mode), int(d.get("sink", cls.sink))
        if mode == "rolling_nosink":  # older files said "no sink" as a mode of its own
            mode, sink = "rolling", 0
        return cls(str(mode), int(d.get("window", cls.window)), sink, int(d.get("recent", cls.recent)))


@dataclass(frozen=True)
class DataSplit:
    """The teacher's held-out data, as its training drew it (``train.data.split_recording``)."""
    val_fraction: float = 0.1
    seed: int = 0
    gap: int | None = None  # frames between training and held-out stretches; None: older teachers (whole episodes)


@dataclass(frozen=True)
class ModelInfo:
    kind: str  # teacher | student | codec
    action_space: ActionSpace
    game: str | None = None  # the game its data was recorded from ("pong", "gym:...", or an import's name)
    frame_size: tuple[int, int] | None = None  # (H, W) of its frames; None: older teachers that did not say
    fps: float = 30  # frames per second of its data (an imported video's rate may be fractional)
    engine: EngineSettings | None = None  # how it plays as distilled; None: a teacher (many-step sampling)
    split: DataSplit = field(default_factory=DataSplit)
    attention: str = "causal"  # the teacher's mask over a training clip: causal | bidirectional
    step: int = 0  # optimizer steps it was trained for
    train_config: dict = field(default_factory=dict)  # the teacher's training settings (clip_len, ...)
    distill: dict = field(default_factory=dict)  # a student's distillation: stage, ode_steps, dmd_steps, config
    raw: dict = field(default_factory=dict, repr=False)  # the whole metadata, as read

    @property
    def clip_len(self) -> int:
        """Frames in the teacher's training clips (its attention span)."""
        return int(self.train_config.get("clip_len", 8))

    @classmethod
    def from_metadata(cls, meta: dict) -> "ModelInfo":
        frame = meta.get("frame") or {}
        provenance = meta.get("provenance") or {}
        tcfg = provenance.get("train_config") or {}
        engine = meta.get("engine")
        return cls(
            kind=str(meta["kind"]), action_space=ActionSpace.from_dict(meta["action_space"]),
            game=provenance.get("game"),
            frame_size=(int(frame["height"]), int(frame["width"])) if "height" in frame else None,
            fps=frame.get("fps", 30),
            engine=None if engine is None else EngineSettings.from_dict(engine),
            split=DataSplit(float(tcfg.get("val_fraction", DataSplit.val_fraction)),
                            int(tcfg.get("seed", DataSplit.seed)),
                            None if tcfg.get("split_gap") is None else int(tcfg["split_gap"])),
            attention=str(meta.get("attention", "causal")), step=int(meta.get("step", 0)),
            train_config=dict(tcfg), distill=dict(meta.get("distill") or {}), raw=meta)
