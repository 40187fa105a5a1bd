"""World-model commands: ``dream`` (headless generation to mp4) and ``bench`` (engine speed)."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Optional

from games.data.errors import InputError
from runtime.bench import RandomPlayer, measure_speed
from runtime.config import EngineChoice
from runtime.worlds import engine_config, game_name, start_frames, torch_device, torch_threads


@dataclass
class DreamConfig(EngineChoice):
    ckpt: str = "???"  # world model checkpoint (teacher or student)
    out: str = "???"  # mp4
    start: str = "game"  # game: the checkpoint's start frames (a bundled model's: start seed % K), else its game's
    #                      start screen; or an image file (PNG/JPG) of the right size
    actions: str = "random"  # random (sticky random keys and mouse), or a JSONL action log (one entry per frame)
    frames: int = 300  # frames to generate
    scale: int = 4  # video upscaling
    seed: int = 0
    threads: int = 0  # torch threads (0 = torch's default)


@dataclass
class BenchConfig(EngineChoice):
    ckpt: Optional[str] = None  # a checkpoint; None = the model bundled for game= (what play runs), or model=
    game: Any = None  # configs/game/<name>.yaml: the bundled model benchmarked (game=maze); with model=, its controls
    model: Optional[str] = None  # random weights of this size instead (worldmodel.nn.dit.MODELS: tiny, small, ...)
    width: int = 64  # frame size with model=
    height: int = 64
    # the denoiser's shape as in ``train`` (no torch import here: torch_threads sets OpenMP up before torch loads)
    patch: int = 8  # latent pixels per token side, with codec=pixels
    stack_prev: bool = True  # stack the previous frame into each frame's patches
    residual: bool = False  # predict the change from the previous frame
    codec: str = "pixels"  # pixels (patch=) or conv_ae (16x16x4 latents, patch 4) with model=
    compile: bool = True  # as play does: compile the rolling tick at start-up (start-up time is reported)
    frames: int = 10000  # ticks to run (figures at frame 100 and at the last frame)
    threads: int = 1  # torch threads (measured: 1 is faster than 2 here, docs/engine.md)
    busy_cores: int = 0  # keep this many cores busy meanwhile (a window thread, another program)
    progress: bool = True  # progress bar on stderr
    json: Optional[str] = None  # also write the figures to this JSON file


def dream(cfg) -> int:
    torch_threads(cfg.threads)
    from games.data.video import VideoWriter
    from worldmodel.engine.session import WorldSession

    session = WorldSession.from_checkpoint(cfg.ckpt, engine_config(cfg), device=torch_device(cfg.device))
    space = session.action_space
    frames = cfg.frames
    if cfg.actions == "random":
        player = RandomPlayer(space, cfg.seed)
        actions = [player.act() for _ in range(frames)]
    else:
        from games.data.action_log import read_action_log

        log = read_action_log(cfg.actions, action_space=space)
        fps = session.info.fps
        actions = list(log.to_actions(frames, fps, fps))
    from tqdm import tqdm

    first = session.reset(start_frames(session, cfg.start, cfg.seed), seed=cfg.seed)
    fps = session.info.fps
    t0 = time.perf_counter()
    with VideoWriter(cfg.out, fps=fps, scale=cfg.scale) as video:
        video.write(first)
        for action in tqdm(actions, unit="frame", desc="dream"):
            video.write(session.step(action))
    dt = time.perf_counter() - t0
    print(f"wrote {cfg.out}: {frames} frames, mode {session.cfg.mode}, {frames / dt:.1f} frames/s")
    return 0


def _random_session(cfg, torch):
    from games.registry import make_game
    from worldmodel.nn.codec import make_codec
    from worldmodel.engine.session import WorldSession
    from worldmodel.nn.flow import Denoiser, NoiseSchedule
    from worldmodel.metadata import ModelInfo
    from worldmodel.nn.dit import MODELS, make_model

    size = cfg.model
    if size not in MODELS:
        raise InputError(f"unknown model size {size!r}; choose from {', '.join(MODELS)}")
    game = make_game(game_name(cfg.game), width=cfg.width, height=cfg.height)
    if cfg.codec == "pixels":
        codec, patch = make_codec({"type": "pixels"}), cfg.patch
    elif cfg.codec == "conv_ae":
        codec, patch = make_codec({"type": "conv_ae", "down": 4, "latent_channels": 4}), 4
    else:
        raise InputError(f"codec must be pixels or conv_ae, got {cfg.codec!r}")
    C, h, w = codec.latent_shape(game.height, game.width)
    torch.manual_seed(0)
    net = make_model(size, stack_prev=cfg.stack_prev, residual=cfg.residual, channels=C, height=h, width=w, patch=patch,
                     action_dim=game.action_space.size)
    info = ModelInfo(kind="random", action_space=game.action_space, game=game_name(cfg.game),
                     frame_size=(game.height, game.width), fps=game.fps)
    device = torch_device(cfg.device)
    session = WorldSession(Denoiser(net, NoiseSchedule()).to(device), codec.to(device), game.action_space,
                           engine_config(cfg), info.frame_size, info)
    return session, game.reset(0)


def bench(cfg) -> int:
    torch = torch_threads(cfg.threads)
    from worldmodel.engine.session import WorldSession

    if cfg.ckpt or not cfg.model:
        from runtime.worlds import bundled_checkpoint

        ckpt = cfg.ckpt or str(bundled_checkpoint(game_name(cfg.game)))
        session = WorldSession.from_checkpoint(ckpt, engine_config(cfg, ckpt), device=torch_device(cfg.device))
        start = start_frames(session, "game", 0)
        what = ckpt
    else:
        session, start = _random_session(cfg, torch)
        what = f"model={cfg.model} codec={cfg.codec} (random weights)"
    result = measure_speed(session, start, cfg.frames, cfg.busy_cores, cfg.progress, what)
    width = max(map(len, result))
    for k, v in result.items():
        print(f"{k:<{width}}  {v:.2f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if cfg.json:
        with open(cfg.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0
