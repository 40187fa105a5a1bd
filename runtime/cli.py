"""The one console command: ``rollingworld <command> key=value ...``.

Each command has one primary hydra config in ``configs/<command>.yaml``; the arguments after the command are hydra
overrides. Configs are composed with hydra's compose API, so nothing is written to ``outputs/`` and the working
folder never changes. Bad input of any kind ends in one line on stderr and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import signal
import sys
import threading

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

from games.data.errors import InputError  # noqa: E402

# command -> (one-line description, "module:function" taking the composed config)
COMMANDS: dict[str, tuple[str, str]] = {
    "game": ("play a real game in a window (game=pong|maze|gym:<env id>, record=true saves it)",
             "runtime.commands.game:run"),
    "record": ("record a scripted agent's gameplay into a dataset (resumable)", "runtime.commands.data:record"),
    "check": ("verify a dataset (data=DIR) or describe a checkpoint (ckpt=FILE); non-zero exit if damaged",
              "runtime.commands.data:check"),
    "import": ("turn a video + JSONL action log into a dataset", "runtime.commands.data:import_"),
    "export": ("write a dataset episode to mp4 + JSONL action log", "runtime.commands.data:export"),
    "train-codec": ("train the conv autoencoder codec on a dataset (data=DIR out=DIR minutes=M)",
                    "runtime.commands.model:train_codec"),
    "train": ("train the teacher world model on a dataset (data=DIR model=small out=DIR steps=N|minutes=M)",
              "runtime.commands.model:train"),
    "distill": ("distill the teacher into the few-step rolling student (teacher=FILE data=DIR out=DIR)",
                "runtime.commands.model:distill"),
    "pipeline": ("record -> codec -> teacher -> distill -> eval, resumable (game=NAME budget=smoke|cpu|gpu out=DIR)",
                 "runtime.commands.pipeline:run"),
    "play": ("play a world model in a window (ckpt=FILE; compare=true beside the real game; record=FILE.mp4)",
             "runtime.commands.play:run"),
    "replay": ("regenerate a recorded play session and check it frame for frame (replay FILE.jsonl|FILE.mp4)",
               "runtime.commands.replay:run"),
    "kiosk": ("run a game unattended for days: attract mode, resets, watchdog, restarts (game=NAME or ckpt=FILE)",
              "runtime.commands.kiosk:run"),
    "dream": ("headless generation from a world model to mp4 (ckpt=FILE frames=N out=FILE.mp4 mode=rolling)",
              "runtime.commands.world:dream"),
    "bench": ("engine speed: frames/s, tick p50/p99, latency, memory (ckpt=FILE or model=small)",
              "runtime.commands.world:bench"),
    "sample": ("many-step teacher rollout vs the real game to mp4, with PSNR by horizon",
               "runtime.commands.model:sample"),
    "eval": ("report on a world model: fidelity, drift over a long session, control, speed (ckpt=FILE data=DIR out=DIR)",
             "runtime.commands.evaluate:run"),
    "bundle": ("ship a student in assets/: half-precision weights plus its start frames (ckpt=FILE data=DIR out=FILE)",
               "runtime.commands.bundle:run"),
}

# commands that take one plain argument (not key=value) as this setting: ``rollingworld replay FILE``
POSITIONAL: dict[str, str] = {"replay": "session"}

USAGE = "usage: rollingworld <command> [key=value ...]   (rollingworld <command> --help shows its settings)"


TEST_HELP = "run this checkout's tests with pytest -q (arguments go to pytest: rollingworld test -k engine)"


def _help() -> str:
    width = max(map(len, COMMANDS))
    lines = [USAGE, "", "commands:"]
    lines += [f"  {name:<{width}}  {desc}" for name, (desc, _) in COMMANDS.items()]
    lines.append(f"  {'test':<{width}}  {TEST_HELP}")
    return "\n".join(lines)


def run_tests(args: list[str]) -> int:
    """``rollingworld test``: pytest over the checkout's tests, in this interpreter (the environment setup.sh chose)."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if not (root / "tests").is_dir():
        raise InputError(f"no tests beside this install ({root}): they come with the source checkout")
    return subprocess.call([sys.executable, "-m", "pytest", "-q", *args], cwd=root)


def _normalise_overrides(overrides: list[str]) -> list[str]:
    """``game=gym:<env id>`` is shorthand for ``game=gym game.env_id=<env id>``. ``model.size=X`` and
    ``model.<key>=V`` are the older spelling of ``model=X`` and ``<key>=V`` (the denoiser's settings are flat, as in
    ``TrainConfig``: ``model=tiny patch=4``). ``runtime.bindings`` names a game's own action keys, which no schema
    lists, so it is set whole (``runtime.bindings={UP:[k]}``, ``runtime.bindings.UP=[k]``) rather than merged."""
    out = []
    for ov in overrides:
        key, sep, value = ov.partition("=")
        if sep and key == "game" and value.startswith("gym:"):
            out += ["game=gym", f"game.env_id={value[4:]}"]
        elif sep and (key == "runtime.bindings" or key.startswith("runtime.bindings.")):
            out.append(f"++{ov}")
        elif sep and key.startswith("model."):
            out.append(f"{'model' if key == 'model.size' else key[len('model.'):]}={value}")
        else:
            out.append(ov)
    return out


def _one_line(e: Exception) -> str:
    """Hydra's error in one line, with the reason a value was refused (``Error merging override steps=abc: Value
    'abc' of type 'str' could not be converted to Integer``) and where (``full_key``) when it does not say."""
    line = " ".join(str(e).split("\n")[:2]).strip()
    cause = e.__cause__
    if cause is not None and str(cause).strip():
        line += ": " + str(cause).strip().splitlines()[0]
    key = getattr(cause, "full_key", None) or getattr(e, "full_key", None)
    if key and key not in line:
        line += f" ({key})"
    return line


def compose(command: str, overrides: list[str], require: bool = True):
    """The composed config of ``command`` with ``overrides``, or an InputError naming what is wrong.

    With ``require=False`` (for ``--help``) required settings may stay ``???``."""
    from hydra import compose as hydra_compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from runtime.config import register

    for ov in overrides:
        if "=" not in ov or ov.startswith("-"):
            raise InputError(f"bad argument {ov!r}: settings are given as key=value")
    _refuse_added_settings(command, overrides)
    GlobalHydra.instance().clear()
    register(command)
    try:
        with initialize_config_module(config_module="configs", version_base=None):
            cfg = hydra_compose(config_name=command, overrides=_normalise_overrides(overrides))
    except MissingConfigException as e:
        first = str(e).splitlines()[0]
        options = getattr(e, "options", None)
        hint = f" (choose from {', '.join(options)})" if options else ""
        if "game/" in first:
            hint = " (choose from pong, maze, gym:<env id>)"
        raise InputError(f"{first}{hint}") from None
    except (HydraException, OmegaConfBaseException) as e:
        message = _one_line(e)
        if message.startswith("Could not override"):  # hydra's hint to add it with + would only be ignored
            key = message.split("'")[1] if "'" in message else "?"
            message = f"unknown setting {key!r} (rollingworld {command} --help lists the settings)"
        raise InputError(message) from None
    if not require:
        return cfg
    check_ranges(OmegaConf.to_container(cfg))
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise InputError("missing setting" + ("s " if len(missing) > 1 else " ")
                         + " ".join(f"{k}=..." for k in missing))
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise InputError(str(e).splitlines()[0]) from None
    return cfg


def _refuse_added_settings(command: str, overrides: list[str]) -> None:
    """``+key=value`` adds a key hydra does not know: for a command with typed settings, one that no code reads
    (a typo would be silently ignored). Free-form groups (``+game.frameskip=2``) stay open."""
    from dataclasses import fields

    from runtime.config import SCHEMAS

    if command not in SCHEMAS:
        return
    module, name = SCHEMAS[command].split(":")
    known = {f.name for f in fields(getattr(importlib.import_module(module), name))} | {"game", "budget", "runtime"}
    for ov in overrides:
        if ov.startswith("+") and not ov.startswith("++"):
            key = ov[1:].split("=", 1)[0]
            if key.split(".")[0] not in known:
                raise InputError(f"unknown setting {key!r} (rollingworld {command} --help lists the settings)")


# setting name -> (the smallest value it may take, whether that value itself is allowed); checked wherever the
# name appears in a command's settings (budgets' stages too), unless it is None (unset)
RANGES: dict[str, tuple[float, bool]] = {
    "threads": (0, True), "batch": (1, True), "ode_batch": (1, True), "idm_batch": (1, True),
    "lr": (0, True), "critic_lr": (0, True), "ode_lr": (0, True), "frames": (1, True), "episodes": (1, True),
    "steps": (0, True), "fps": (0, False), "width": (1, True), "height": (1, True), "scale": (1, True),
    "clip_len": (2, True), "chunk_frames": (1, True), "minutes": (0, True), "checkpoint_minutes": (0, True),
}


def check_ranges(settings: dict, prefix: str = "") -> None:
    """An InputError naming the first of ``settings`` (a composed config as plain containers) out of its range
    (``RANGES``)."""
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            check_ranges(value, f"{name}.")
        elif key in RANGES and isinstance(value, (int, float)) and not isinstance(value, bool):
            low, inclusive = RANGES[key]
            if value < low or (value == low and not inclusive):
                bound = f">= {low:g}" if inclusive else f"> {low:g}"
                raise InputError(f"{name}={value} is out of range: it must be {bound}")


def run(command: str, overrides: list[str]) -> int:
    """Run ``command`` with ``overrides``; returns the exit code."""
    if command not in COMMANDS:
        raise InputError(f"unknown command {command!r}; commands: {', '.join(COMMANDS)}")
    module, func = COMMANDS[command][1].split(":")
    overrides = _normalise_overrides(overrides)
    cfg = compose(command, overrides)
    handler = getattr(importlib.import_module(module), func)
    # commands that resume a run need to know which settings were given now (the rest come from the run)
    takes_overrides = "overrides" in inspect.signature(handler).parameters
    result = handler(cfg, overrides) if takes_overrides else handler(cfg)
    return int(result or 0)


def os_error(e: OSError) -> str:
    """One line for an error of the operating system on a path: the path, and what the system said."""
    path = e.filename2 if e.filename2 is not None else e.filename
    reason = e.strerror or (str(e).splitlines()[0] if str(e) else type(e).__name__)
    return f"{path}: {reason}" if path is not None else reason


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt would be: what ``timeout``, ``kill``, systemd, docker and
    batch schedulers send is handled like Ctrl-C (a training run saves its state on the way out)."""


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Inside the block, SIGTERM raises ``Terminated`` in the main thread (elsewhere: a no-op). Commands with a
    SIGTERM handler of their own (the play loop, the kiosk, record) set it inside and restore this one after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def entry() -> None:
    """The ``rollingworld`` console command: ``main``, then exit with its code."""
    rc = main()
    if any(t.name == "rollingworld-compile" and t.is_alive() for t in threading.enumerate()):
        # a background compile (WorldSession) still running, the player having quit within seconds: everything
        # is closed and flushed, and the interpreter would abort tearing the thread down inside torch's C++ code
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_help())
        return 0
    command, overrides = args[0], args[1:]
    if command == "test":
        try:
            return run_tests(overrides)
        except InputError as e:
            print(f"rollingworld test: error: {e}", file=sys.stderr)
            return 2
    if command in POSITIONAL:
        plain = [a for a in overrides if "=" not in a and not a.startswith("-")]
        if len(plain) == 1:
            overrides = [f"{POSITIONAL[command]}={plain[0]}" if a == plain[0] else a for a in overrides]
    try:
        if any(a in ("-h", "--help") for a in overrides):
            from omegaconf import OmegaConf
            if command not in COMMANDS:
                raise InputError(f"unknown command {command!r}; commands: {', '.join(COMMANDS)}")
            print(f"rollingworld {command}: {COMMANDS[command][0]}\n\nsettings (key=value):")
            rest = [a for a in overrides if a not in ("-h", "--help")]
            print(OmegaConf.to_yaml(compose(command, rest, require=False)))
            return 0
        with sigterm_as_interrupt():
            return run(command, overrides)
    except InputError as e:
        print(f"rollingworld {command}: error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"rollingworld {command}: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except OSError as e:  # a read-only or full disk, a folder where a file is meant: which path, and why
        print(f"rollingworld {command}: error: {os_error(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"rollingworld {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    entry()
