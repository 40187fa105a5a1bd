"""Opening a world model for a command: torch's threads, the engine settings, the session, its start frames, and
the world model as the play loop's frame source (``WorldSource``).

``play``, ``kiosk``, ``dream``, ``bench``, ``replay`` and ``eval`` all open a checkpoint the same way: torch on a
set number of threads (OpenMP told not to spin), the engine settings the checkpoint was distilled with unless the
command line overrides them (``EngineConfig.for_model``), and a session that starts from the frames stored in the
checkpoint (a bundled model's) or from the real game's start screen.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from games.data.errors import InputError
from runtime.compare import CompareSource
from runtime.source import FrameSource


def compile_cache_dir() -> Path:
    """Where torch keeps the compiled tick between runs: ``$TORCHINDUCTOR_CACHE_DIR`` if set, else
    ``$XDG_CACHE_HOME/rollingworld/inductor-<torch version>`` (``~/.cache``): private to the user (mode 0700) and
    kept across reboots, unlike torch's default under /tmp, so a kiosk restarts warm. Torch keys every entry by
    its own version and the compiled graph, so a changed model is compiled anew; the version in the name keeps
    caches of different torch builds apart."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    from importlib.metadata import PackageNotFoundError, version

    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "unknown"
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rollingworld"
    return root / f"inductor-{torch_version}"


def torch_threads(threads: int):
    """torch, with ``threads`` threads (0: torch's default). Imported here so that the wait policy and the compile
    cache's place are set first."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # measured: spinning OpenMP threads collapse on a busy core
    cache = compile_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache))
    except OSError:  # a read-only home: torch's own default place
        pass
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    return torch


def engine_config(cfg, ckpt=None, background_compile: bool = False, info=None):
    """The engine settings of the command config ``cfg`` (a ``runtime.config.EngineChoice``) for the checkpoint
    ``ckpt`` (default ``cfg.ckpt``): ``mode``, ``window``, ``sink`` and ``recent`` left None are those it was
    distilled with. ``background_compile``: with ``compile``, tick eager at once while the tick compiles (what
    a player or a kiosk wants); else the first reset waits for the compiler (what a measurement wants). ``info``:
    the checkpoint's ``ModelInfo`` when the caller has read it already."""
    from worldmodel.checkpoint import read_model_info
    from worldmodel.engine.config import EngineConfig

    ckpt = cfg.get("ckpt") if ckpt is None else ckpt
    if info is None and ckpt:
        info = read_model_info(ckpt)  # the header only: the weights are loaded once, later
    return EngineConfig.for_model(info, mode=cfg.mode, window=cfg.window, sink=cfg.sink, recent=cfg.recent,
                                  teacher_steps=cfg.teacher_steps, fuse_reencode=cfg.fuse_reencode,
                                  compile=cfg.compile, background_compile=background_compile)


def torch_device(name: str) -> str:
    """The device of an engine command's ``device=`` (``worldmodel.train.processes.resolve_device``)."""
    from worldmodel.train.processes import resolve_device

    return resolve_device(name, "cpu, cuda or auto")  # cpu first: the engine's default


def load_session(ckpt, engine_cfg, threads: int, device: str = "cpu"):
    """The ``WorldSession`` of ``ckpt`` on ``device`` (``torch_device``) with torch on ``threads`` threads (0:
    torch's default)."""
    torch_threads(threads)
    from worldmodel.engine.session import WorldSession

    return WorldSession.from_checkpoint(ckpt, engine_cfg, device=torch_device(device))


def checkpoint_game(session):
    """The real game the session's checkpoint was trained on, at the model's frame size (or an InputError): one of
    the games written here, never code a file's words choose (``games.registry.make_named_game``)."""
    from games.registry import make_named_game

    name = session.info.game
    h, w = session.frame_size
    try:
        return make_named_game(name, width=w, height=h)
    except InputError as e:
        raise InputError(f"cannot build the checkpoint's game {name!r}: {e}") from None


def stored_start(session, seed: int) -> np.ndarray | None:
    """Start ``seed % K`` of the K start sequences stored in the session's checkpoint (uint8 [S, H, W, 3]: a
    bundled model's), or None when it holds none."""
    frames = session.start_frames
    return None if frames is None else frames[int(seed) % len(frames)]


def start_frames(session, start: str, seed: int) -> np.ndarray:
    """The frames a session starts from: ``start="game"``: the stored ones, else the real game's start screen;
    otherwise ``start`` names an image file."""
    if start == "game":
        stored = stored_start(session, seed)
        if stored is not None:
            return stored
        from games.registry import make_named_game

        game_name = session.info.game
        h, w = session.frame_size
        try:
            game = make_named_game(game_name, width=w, height=h)
        except InputError:
            raise InputError(f"the checkpoint's game {game_name!r} is not one of ours and it holds no start frames "
                             "(rollingworld bundle stores them): give start=IMAGE") from None
        return game.reset(seed)
    from PIL import Image, UnidentifiedImageError

    try:
        return np.asarray(Image.open(start).convert("RGB"))
    except (FileNotFoundError, UnidentifiedImageError, OSError) as e:
        raise InputError(f"cannot read start image {start}: {e}") from None


def _assets() -> Path:
    """The folder of the bundled models: ``assets/`` beside the packages in a checkout (and an editable install,
    never the working folder), else where ``pip install`` put them: ``<prefix>/share/rollingworld/assets``
    (``pyproject.toml``'s data-files; the user's base for ``--user``)."""
    checkout = Path(__file__).resolve().parents[1] / "assets"
    if checkout.is_dir():
        return checkout
    import site

    for prefix in (sys.prefix, site.getuserbase()):
        installed = Path(prefix) / "share" / "rollingworld" / "assets"
        if installed.is_dir():
            return installed
    return checkout


ASSETS = _assets()


def bundled_checkpoint(game: str) -> Path:
    """``<assets>/<game>.safetensors``: the world model bundled for ``game``, or an InputError naming those there
    are."""
    path = ASSETS / f"{game}.safetensors"
    if not path.is_file():
        have = sorted(p.stem for p in ASSETS.glob("*.safetensors"))
        raise InputError(f"no world model is bundled for {game!r} (bundled: {', '.join(have) or 'none'}; "
                         f"in {ASSETS}): give ckpt=FILE")
    return path


def game_name(game_cfg) -> str:
    """The name a ``game`` config group entry goes by: ``pong``, ``maze``, ``gym:<env id>``."""
    return f"gym:{game_cfg.env_id}" if game_cfg.name == "gym" else game_cfg.name


class WorldSource(FrameSource):
    """A world model as a frame source for the play loop: ``reset(seed)`` starts from the start frames stored in
    the checkpoint, else from its game's start screen."""

    def __init__(self, session):
        self.session = session
        self.game_name = session.info.game or "world"
        self.name = f"{self.game_name} (world model)"
        self.height, self.width = session.frame_size
        self.fps = int(session.info.fps)
        self.action_space = session.action_space
        self.default_bindings = {}
        self.game = None  # a world model alone: no real game steps beside it
        try:
            self._start_game = checkpoint_game(session)  # makes the start screens when the checkpoint stores none
            self.default_bindings = self._start_game.default_bindings
        except InputError:
            self._start_game = None
        self.t = 0  # ticks since the last reset

    @property
    def latency_ticks(self) -> int:
        return self.session.latency_ticks

    def reset(self, seed: int, start_seed: int | None = None) -> np.ndarray:
        """Start from start ``start_seed`` (default ``seed``), sampling noise from ``seed``: the checkpoint's stored
        start sequence ``start_seed % K``, else the game's start screen of ``start_seed``."""
        pick = seed if start_seed is None else start_seed
        start = stored_start(self.session, pick)
        if start is None:
            if self._start_game is None:
                raise InputError(f"the checkpoint's game {self.game_name!r} is not one of ours and it holds no start "
                                 "frames (rollingworld bundle stores them): use rollingworld dream start=IMAGE")
            start = self._start_game.reset(pick)
        self.t = 0
        session = self.session
        cfg = session.cfg
        if cfg.compile and cfg.rolling and not session.compiled and not session.compiling:
            if cfg.background_compile:
                print("playing at once; compiling the tick meanwhile (seconds once cached, about a minute the first "
                      "time), then switching to it", file=sys.stderr, flush=True)
            else:
                print("compiling the world model's tick (seconds once cached, about a minute the first time; "
                      "compile=false starts at once)", file=sys.stderr, flush=True)
        return session.reset(start, seed=seed)

    def step(self, action) -> np.ndarray:
        self.t += 1
        compiled = self.session.compiled
        frame = self.session.step(action)
        if self.session.compiled and not compiled:
            print(f"switched to the compiled tick (compiled in {self.session.compile_seconds:.1f} s)",
                  file=sys.stderr, flush=True)
        return frame


def build_source(ckpt, engine_cfg, threads: int, compare: bool, device: str = "cpu"):
    """The frame source ``play`` shows (and ``replay`` rebuilds): the world model, or real game | world model."""
    session = load_session(ckpt, engine_cfg, threads, device)
    if compare:
        return CompareSource(checkpoint_game(session), session)
    return WorldSource(session)
