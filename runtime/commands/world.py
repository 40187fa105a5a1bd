"""World-model commands: ``dream`` (headless generation to mp4) and ``bench`` (engine speed)."""
from __future__ import annotations

import json
import os
import time

import numpy as np

from games.data.errors import InputError


def _torch(threads: int):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # measured: ACTIVE spinning collapses with a busy core
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    return torch


def _engine_config(cfg, ckpt=None):
    """The engine settings of ``cfg`` for the checkpoint ``ckpt`` (default ``cfg.ckpt``). ``mode``, ``window``,
    ``sink`` and ``recent`` left null are those it was distilled with (its ``engine`` metadata), else
    ``EngineConfig``'s."""
    from worldmodel.engine.session import EngineConfig

    ckpt = cfg.get("ckpt") if ckpt is None else ckpt
    given = {key: cfg.get(key) for key in ("window", "sink", "recent")}
    stored = {}
    if ckpt and (None in given.values() or cfg.get("mode") is None):  # read the header only: the weights are loaded once, with these settings
        from worldmodel.checkpoint import FORMAT, VERSION, parse_metadata, read_header

        stored = parse_metadata(ckpt, read_header(ckpt), FORMAT, VERSION, "checkpoint").get("engine") or {}
    layout = {key: int(value if value is not None else stored.get(key, getattr(EngineConfig, key)))
            for key, value in given.items()}
    mode = cfg.get("mode") or stored.get("mode", EngineConfig.mode)  # a student plays as it was trained
    return EngineConfig(mode=str(mode), **layout, teacher_steps=int(cfg.teacher_steps),
                        fuse_reencode=bool(cfg.get("fuse_reencode", True)), compile=bool(cfg.get("compile", False)))


def stored_start(session, seed: int) -> np.ndarray | None:
    """Start ``seed % K`` of the K start sequences stored in the session's checkpoint (uint8 [S, H, W, 3]: a
    bundled model's), or None when it holds none."""
    frames = session.start_frames
    return None if frames is None else frames[int(seed) % len(frames)]


def _start_frames(session, start: str, seed: int) -> np.ndarray:
    if start == "game":
        stored = stored_start(session, seed)
        if stored is not None:
            return stored
        from games import make_game

        game_name = session.metadata["provenance"].get("game")
        h, w = session.frame_size
        try:
            game = make_game(game_name, width=w, height=h)
        except InputError:
            raise InputError(f"the checkpoint's game {game_name!r} is not one of ours and it holds no start frames "
                             "(rollingworld bundle stores them): give start=IMAGE") from None
        return game.reset(seed)
    from PIL import Image, UnidentifiedImageError

    try:
        return np.asarray(Image.open(start).convert("RGB"))
    except (FileNotFoundError, UnidentifiedImageError, OSError) as e:
        raise InputError(f"cannot read start image {start}: {e}") from None


class _RandomPlayer:
    """Sticky random actions over an action space (the scripted ``random`` agent without a game)."""

    def __init__(self, space, seed: int):
        from games.agents import RandomAgent

        self.t = 0
        self.action_space = space
        self.agent = RandomAgent(self, seed)

    def act(self) -> np.ndarray:
        self.t += 1
        return self.agent.act()


def dream(cfg) -> int:
    _torch(cfg.threads)
    from games.data.video import VideoWriter
    from worldmodel.engine.session import WorldSession

    session = WorldSession.from_checkpoint(cfg.ckpt, _engine_config(cfg))
    space = session.action_space
    frames = int(cfg.frames)
    if cfg.actions == "random":
        player = _RandomPlayer(space, int(cfg.seed))
        actions = [player.act() for _ in range(frames)]
    else:
        from games.data.action_log import read_action_log

        log = read_action_log(cfg.actions, action_space=space)
        fps = session.metadata.get("frame", {}).get("fps", 30)
        actions = list(log.to_actions(frames, fps, fps))
    from tqdm import tqdm

    first = session.reset(_start_frames(session, cfg.start, int(cfg.seed)), seed=int(cfg.seed))
    fps = session.metadata.get("frame", {}).get("fps", 30)
    t0 = time.perf_counter()
    with VideoWriter(cfg.out, fps=fps, scale=int(cfg.scale)) as video:
        video.write(first)
        for action in tqdm(actions, unit="frame", desc="dream"):
            video.write(session.step(action))
    dt = time.perf_counter() - t0
    print(f"wrote {cfg.out}: {frames} frames, mode {session.cfg.mode}, {frames / dt:.1f} frames/s")
    return 0


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _random_session(cfg, torch):
    from games import make_game
    from worldmodel.nn.codec import make_codec
    from worldmodel.engine.session import WorldSession
    from worldmodel.nn.flow import Denoiser, NoiseSchedule
    from worldmodel.nn.dit import MODELS, make_model

    size = cfg.model.size
    if size not in MODELS:
        raise InputError(f"unknown model size {size!r}; choose from {', '.join(MODELS)}")
    game = make_game(cfg.game)
    if cfg.codec == "pixels":
        codec, patch = make_codec({"type": "pixels"}), int(cfg.model.patch)
    elif cfg.codec == "conv_ae":
        codec, patch = make_codec({"type": "conv_ae", "down": 4, "latent_channels": 4}), 4
    else:
        raise InputError(f"codec must be pixels or conv_ae, got {cfg.codec!r}")
    C, h, w = codec.latent_shape(game.height, game.width)
    torch.manual_seed(0)
    net = make_model(size, residual=bool(cfg.model.residual), channels=C, height=h, width=w, patch=patch, action_dim=game.action_space.size)
    session = WorldSession(Denoiser(net, NoiseSchedule()), codec, game.action_space, _engine_config(cfg),
                           (game.height, game.width))
    session.metadata = {"provenance": {"game": cfg.game}}
    return session, game.reset(0)


def _spin() -> None:
    while True:
        pass


def _busy_cores(n: int) -> list:
    """``n`` processes that each keep one core busy: what a player's window thread or another program does."""
    import multiprocessing

    procs = [multiprocessing.get_context("spawn").Process(target=_spin, daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    return procs


def bench(cfg) -> int:
    torch = _torch(cfg.threads)
    from worldmodel.engine.session import WorldSession
    from worldmodel.nn.dit import count_params

    if cfg.ckpt:
        session = WorldSession.from_checkpoint(cfg.ckpt, _engine_config(cfg))
        start = _start_frames(session, "game", 0)
        what = cfg.ckpt
    else:
        session, start = _random_session(cfg, torch)
        what = f"model={cfg.model.size} codec={cfg.codec} (random weights)"
    frames = int(cfg.frames)
    if frames < 200:
        raise InputError("bench needs frames >= 200")
    from tqdm import tqdm

    player = _RandomPlayer(session.action_space, 0)
    t_start = time.perf_counter()
    session.reset(start, seed=0)  # includes compiling the tick with compile=true
    startup_s = time.perf_counter() - t_start
    busy = _busy_cores(int(cfg.busy_cores))
    try:
        for _ in range(10):  # warm-up ticks, not measured
            session.step(player.act())
        tick_ms, rss = np.zeros(frames), {}
        for i in tqdm(range(frames), unit="tick", disable=not cfg.get("progress", True), mininterval=2.0):
            t0 = time.perf_counter()
            session.step(player.act())
            tick_ms[i] = (time.perf_counter() - t0) * 1000
            if i + 1 in (100, frames):
                rss[i + 1] = _rss_mb()
    finally:
        for p in busy:
            p.terminate()
    fps_100 = 1000 / tick_ms[:100].mean()
    fps_end = 1000 / tick_ms[-100:].mean()
    p50 = float(np.percentile(tick_ms, 50))
    result = {
        "model": what, "parameters": count_params(session.net), "mode": session.cfg.mode,
        "window": session.cfg.window,
        "sink": session.cfg.sink, "recent": session.cfg.recent, "fuse_reencode": bool(session.cfg.fuse_reencode),
        "compile": bool(session.cfg.compile), "threads": torch.get_num_threads(),
        "busy_cores": int(cfg.busy_cores), "frames": frames,
        "startup_s": startup_s,
        "tokens_per_frame": session.net.cfg.tokens_per_frame,
        "fps": float(1000 / tick_ms.mean()), "tick_ms_p50": p50, "tick_ms_p99": float(np.percentile(tick_ms, 99)),
        "latency_ticks": session.latency_ticks, "latency_ms": session.latency_ticks * p50,
        "rss_mb_at_100": rss[100], f"rss_mb_at_{frames}": rss[frames], "fps_at_100": float(fps_100),
        f"fps_at_{frames}": float(fps_end), "fps_ratio_end_over_100": float(fps_end / fps_100),
        # the whole run in blocks of ticks: a slowdown shows as a trend, a noisy neighbour as one bad block
        "fps_by_block": [round(float(1000 / b.mean()), 2) for b in np.array_split(tick_ms, max(1, frames // 1000))],
    }
    width = max(map(len, result))
    for k, v in result.items():
        print(f"{k:<{width}}  {v:.2f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if cfg.json:
        with open(cfg.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0
