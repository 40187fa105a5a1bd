"""The evaluation of one world model (``rollingworld eval``): fidelity, drift, control and speed, resumable.

The sections (``EvalConfig``) run in order; each is written to ``out/parts/<section>.json`` when it finishes,
so a stopped evaluation loses at most the section it was in, and the same command resumes after the finished ones.
The report (``report.md``, ``report.json``, PNG plots) is rewritten after every section. The measures live in
``worldmodel.eval`` (fidelity, drift, Q); the real games they are compared with are played here (``games.scripted``,
``games.probes``), and their state readers (``games.readers``) handed in, since the world model imports no game.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np

from games.data.errors import InputError
from worldmodel.engine.config import EngineConfig

SECTIONS = ("fidelity", "drift", "control", "speed")
SCRIPTED_GAMES = ("pong", "maze")  # games with a scripted agent and a control probe
DRIFT_AGENTS = ("auto", "heuristic", "random", "recording")


@dataclass
class FidelitySettings:
    starts: int = 32  # held-out starts for PSNR / SSIM by horizon
    horizon: int = 64  # frames after each start
    teacher_forced: int = 256  # held-out starts for teacher-forced next-frame PSNR
    batch: int = 8  # sessions generated in lockstep


@dataclass
class DriftSettings:
    minutes: float = 10.0  # length of the session (the paper's dDrift: first vs last 5 s)
    # what drives it: auto (the game's scripted agent where it has one, else the recording) | heuristic | random |
    # recording (the recording's own actions and frames, from its held-out part on, looped when it runs out)
    agent: str = "auto"
    block_seconds: float = 5.0  # Q is scored on blocks of this length
    blocks: int = 11  # blocks spread over the session, the first and the last included
    reference_frames: int = 6000  # real frames of the recording Q is fitted on
    reference: str = "codec"  # codec: Q's real frames pass through the model's codec (Q sees what it adds) | real
    compile: bool = True  # compile the rolling tick as play does (a faster session; frames equal up to rounding)


@dataclass
class ControlSettings:
    trials: int = 100  # probe trials on the model, the real game and shuffled real frames (chance)
    # the inverse-dynamics reading (any game: worldmodel/eval/inverse.py); idm_steps=0 leaves it out
    idm_steps: int = 2000  # training steps on the recording's training part (about a minute at 64x64)
    idm_batch: int = 32  # windows a training step
    idm_lr: float = 5e-4  # its learning rate (IdmSettings' default, measured there: worldmodel/eval/inverse.py)
    idm_frames: int = 8192  # training frames (runs of 256 from the training part, each through the codec once)
    idm_starts: int = 32  # held-out starts the model generates from
    idm_horizon: int = 32  # frames generated after each start


@dataclass
class SpeedSettings:
    frames: int = 2000  # bench ticks (rollingworld bench)
    compile: bool = True  # as play does


@dataclass
class EvalSettings:
    """What is measured and how the model generates: what a pipeline budget's ``eval`` section may set."""
    mode: str = "auto"  # auto (a student as distilled, a teacher many-step) | rolling | framewise | teacher
    window: Optional[int] = None  # frames in the rolling window; None = the checkpoint's (as distilled), else 4
    sink: Optional[int] = None  # attention-sink frames; None = the checkpoint's, else 1; 0 = no sink (the ablation)
    recent: Optional[int] = None  # recent frames in the KV cache; None = the checkpoint's, else 4
    teacher_steps: int = EngineConfig.teacher_steps  # steps a frame in teacher mode
    sections: List[str] = field(default_factory=lambda: list(SECTIONS))
    start_frames: int = 4  # real frames a generation starts from
    fidelity: FidelitySettings = field(default_factory=FidelitySettings)
    drift: DriftSettings = field(default_factory=DriftSettings)
    control: ControlSettings = field(default_factory=ControlSettings)
    speed: SpeedSettings = field(default_factory=SpeedSettings)


@dataclass
class EvalConfig(EvalSettings):
    ckpt: str = "???"  # the world model (a student from rollingworld distill, or a teacher)
    data: str = "???"  # its recording: held-out episodes for fidelity, real frames for Q
    out: str = "???"  # report folder
    threads: int = 1  # torch threads
    seed: int = 0
    fresh: bool = False  # redo every section, even finished ones
    progress: bool = True


def check_settings(cfg, prefix: str = "") -> None:
    """An InputError for settings that their types admit but the evaluation does not (``prefix``: where they
    were given, e.g. ``budget.eval.``)."""
    from worldmodel.eval.model import EVAL_MODES  # torch: imported once OpenMP's wait policy is set

    sections = list(cfg.sections)
    if not sections or any(s not in SECTIONS for s in sections):
        raise InputError(f"{prefix}sections must be a list from {', '.join(SECTIONS)}; got {sections}")
    if cfg.mode not in EVAL_MODES:
        raise InputError(f"{prefix}mode: unknown mode {cfg.mode!r}; choose from {', '.join(EVAL_MODES)} "
                         "(no attention sink: sink=0)")
    if cfg.drift.reference not in ("codec", "real"):
        raise InputError(f"{prefix}drift.reference must be codec or real, got {cfg.drift.reference!r}")
    if cfg.drift.agent not in DRIFT_AGENTS:
        raise InputError(f"{prefix}drift.agent must be one of {', '.join(DRIFT_AGENTS)}, got {cfg.drift.agent!r}")


def _save_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _bar(total: int, desc: str, show: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not show, dynamic_ncols=True, mininterval=1.0)


def _fidelity(em, rec, cfg, game: str, out: Path, show: bool) -> dict:
    from games.readers import reader_for
    from worldmodel.eval.drift import through_codec
    from worldmodel.eval.fidelity import fidelity
    from worldmodel.eval.report import write_strip
    from worldmodel.train.data import held_out_episodes

    f = cfg.fidelity
    episodes = held_out_episodes(rec, em.model.metadata)
    h, w = em.frame_size
    with _bar(f.starts + f.teacher_forced, "fidelity", show) as bar:
        result = fidelity(em, episodes, f.starts, f.horizon, f.teacher_forced, cfg.start_frames,
                          cfg.seed, f.batch, progress=bar.update, reader=reader_for(game, w, h),
                          codec_roundtrip=lambda frames: through_codec(em.model.codec, frames))
    samples = result.pop("samples")
    write_strip(out / "fidelity-samples.png", samples["real"], samples["generated"])
    result["episodes"] = [ep.name for ep in episodes]  # whole episodes, or stretches "ep_000000[a:b]"
    return result


def _reference_clips(rec, n_frames: int, clip: int = 300) -> list[np.ndarray]:
    """Real clips of consecutive frames from every episode in turn, ``n_frames`` in all (Q's reference)."""
    clips, total, offset = [], 0, 0
    episodes = [ep for ep in rec if ep.length >= 3]
    while total < n_frames and episodes:
        for ep in episodes:
            s = offset % max(1, ep.length - 3)
            c = ep.frames(s, min(ep.length, s + clip))
            if len(c) >= 3:
                clips.append(c)
                total += len(c)
            if total >= n_frames:
                break
        offset += clip
    return clips


def drift_agent(name: str, game: str) -> str:
    """What drives the drift session: ``auto`` is the game's scripted agent where it has one, else the
    recording; a scripted agent asked for a game that has none is an InputError."""
    if name == "auto":
        return "heuristic" if game in SCRIPTED_GAMES else "recording"
    if name != "recording" and game not in SCRIPTED_GAMES:
        raise InputError(f"drift.agent={name}: no scripted agent plays {game!r} (they play "
                         f"{', '.join(SCRIPTED_GAMES)}); drift.agent=recording replays the recording")
    return name


def _drift_frames(em, rec, cfg, game: str, agent: str, out: Path, show: bool) -> dict:
    """The session's blocks (``parts/drift-frames.npz``), generated once for the same session settings:
    changing only how Q is scored does not regenerate ten minutes of frames."""
    from games.scripted import replayed_play, scripted_play
    from worldmodel.eval.drift import SNAPSHOT_SECONDS, DriftPlan, drift_session
    from worldmodel.train.data import split_or_all

    d = cfg.drift
    fps = int(em.info.fps)
    session_settings = {"ckpt": str(Path(em.path).resolve()), **_generation(em),
                        "minutes": d.minutes, "agent": agent, "block_seconds": d.block_seconds, "blocks": d.blocks,
                        "start_frames": cfg.start_frames, "seed": cfg.seed, "snapshots": list(SNAPSHOT_SECONDS)}
    path, stamp = out / "parts" / "drift-frames.npz", out / "parts" / "drift-frames.json"
    if path.exists() and stamp.exists() and _as_now(json.loads(stamp.read_text()), em) == session_settings:
        with np.load(path, allow_pickle=False) as z:
            saved = {k: z[k] for k in z.files}
        return {"frames": int(saved["frames"]), "fps": int(saved["fps"]), "block_frames": int(saved["block_frames"]),
                "block_seconds": saved["block_seconds"].tolist(),
                **{k: saved[k] for k in ("model", "real", "snapshot_seconds", "snapshot_model", "snapshot_real")}}
    plan = DriftPlan.of(d.minutes, fps, d.block_seconds, d.blocks, cfg.start_frames)
    # the real game is played here, where games may be imported; the model only sees its frames and actions
    if agent == "recording":  # the held-out part first, so that the model starts from frames it never saw
        train, held = split_or_all(rec, em.model.metadata)
        actions, real = replayed_play(held + train, plan.real_frames, plan.kept())
    else:
        actions, real = scripted_play(game, agent, plan.real_frames, cfg.seed, em.frame_size, plan.kept())
    with _bar(plan.frames, f"drift session ({d.minutes} min)", show) as bar:
        session = drift_session(em, plan, actions, real, cfg.seed, d.compile, progress=bar.update)
    tmp = path.with_name("drift-frames.tmp.npz")
    np.savez(tmp, **{k: np.asarray(v) for k, v in session.items()})
    os.replace(tmp, path)
    _save_json(stamp, session_settings)
    return session


def _drift(em, rec, cfg, game: str, out: Path, show: bool) -> dict:
    from games.readers import reader_for
    from worldmodel.eval.drift import drift_scores, through_codec
    from worldmodel.eval.report import write_frames, write_time_strip
    from worldmodel.eval.state import shown_per_block
    from worldmodel.eval.collapse import CollapseDetector
    from worldmodel.eval.quality import FrameQuality

    d = cfg.drift
    agent = drift_agent(d.agent, game)
    session = _drift_frames(em, rec, cfg, game, agent, out, show)
    real_clips = _reference_clips(rec, d.reference_frames)
    clips = [through_codec(em.model.codec, c) for c in real_clips] if d.reference == "codec" else real_clips
    quality = FrameQuality(clips)
    blocks = {"model": session["model"], "real": session["real"],
              "real_through_codec": [through_codec(em.model.codec, b) for b in session["real"]]}
    result = drift_scores(quality, blocks)
    detector = CollapseDetector(np.concatenate(real_clips))  # the game's own colours, not the codec's
    result["collapse"] = {name: [detector.collapsed(b) for b in frames] for name, frames in blocks.items()}
    reader = reader_for(game, *em.frame_size[::-1])
    if reader is not None:  # what each block keeps showing, read from its frames (games/readers.py describe)
        result["shown"] = {name: shown_per_block(reader, frames) for name, frames in blocks.items()}
    write_frames(out / "drift-frames.png", {"real_first": session["real"][0][-1], "real_last": session["real"][-1][-1],
                                            "model_first": session["model"][0][-1],
                                            "model_last": session["model"][-1][-1]})
    write_time_strip(out / "drift-strip.png", session["snapshot_seconds"],
                {"real": session["snapshot_real"], "real, codec": through_codec(em.model.codec, session["snapshot_real"]),
                 "model": session["snapshot_model"]})
    return {"minutes": d.minutes, "agent": agent, "reference": d.reference,
            "quality": f"{quality.name} against real frames{' through the codec' if d.reference == 'codec' else ''}",
            **{k: session[k] for k in ("frames", "fps", "block_frames", "block_seconds")}, **result}


def _control(em, rec, cfg, game: str, out: Path, show: bool) -> dict:
    """The game's control probe where it has one (``games.probes``), and the inverse-dynamics reading for any game
    (``worldmodel.eval.inverse``)."""
    result = {}
    if game in SCRIPTED_GAMES:
        result.update(_probe_control(em, rec, cfg, game, show))
    else:
        result["probe"] = f"no control probe reads {game!r} (probes exist for {', '.join(SCRIPTED_GAMES)})"
    if cfg.control.idm_steps:
        result["inverse"] = _inverse_control(em, rec, cfg, out, show)
    if len(result) == 1 and "probe" in result:
        return {"skipped": result["probe"] + "; control.idm_steps=0 left out the inverse-dynamics reading"}
    return result


def _probe_control(em, rec, cfg, game: str, show: bool) -> dict:
    from games.registry import make_game
    from runtime.worlds import WorldSource
    from games.probes import ShuffledFrames, control_accuracy, probe_for

    h, w = em.frame_size
    probe, n, seed = probe_for(game, w, h), cfg.control.trials, cfg.seed
    session = em.session()
    real_frames = np.concatenate([ep.frames(0, min(ep.length, 500)) for ep in rec])
    out = {}
    with _bar(3, "control probe", show) as bar:
        for name, source in (("model", WorldSource(session)), ("real_game", make_game(game, width=w, height=h)),
                             ("chance", ShuffledFrames(real_frames, em.info.action_space, seed))):
            out[name] = control_accuracy(source, probe, n, seed)
            bar.update(1)
    out["latency_ticks"] = session.latency_ticks
    return out


def _inverse_control(em, rec, cfg, out: Path, show: bool) -> dict:
    """An inverse-dynamics network trained on the recording's training part (through the codec) reads the held
    keys from the held-out real frames (the ceiling), from the model's frames generated from the same starts with
    the same actions, and from the real frames paired with another start's actions (chance)."""
    from worldmodel.checkpoint import CheckpointError, read_header, read_tensors, write_safetensors
    from worldmodel.eval import inverse
    from worldmodel.eval.drift import through_codec
    from worldmodel.eval.fidelity import _sessions, pick_starts
    from worldmodel.train.data import held_out_episodes, split_or_all

    c, space = cfg.control, em.info.action_space
    keys, mouse = len(space.keys), space.mouse
    settings = inverse.IdmSettings(steps=c.idm_steps, batch=c.idm_batch, lr=c.idm_lr)
    stamp_of = {**vars(settings), "frames": c.idm_frames, "seed": cfg.seed, "ckpt": str(Path(em.path).resolve())}
    roundtrip = lambda frames: through_codec(em.model.codec, frames)  # noqa: E731
    train, _ = split_or_all(rec, em.model.metadata)  # all of it when too little to hold out, as the model may have
    weights = out / "parts" / "idm.safetensors"  # kept, so that a resumed evaluation does not train it again
    stamp = json.dumps(stamp_of)
    try:
        header = read_header(weights, "inverse-dynamics weights") if weights.exists() else {}
        saved = read_tensors(weights, header, "inverse-dynamics weights") if header.get("settings") == stamp else None
    except CheckpointError:  # a damaged file from a stopped run: train again
        saved = None
    seconds = 0.0
    if saved is not None:
        idm = inverse.InverseDynamics(keys, mouse, settings.width)
        idm.load_state_dict(saved)
        idm.eval()
    else:
        t0 = time.perf_counter()
        runs = inverse.training_runs(train, c.idm_frames, seed=cfg.seed, roundtrip=roundtrip)
        with _bar(settings.steps, "control: inverse dynamics", show) as bar:
            idm = inverse.train_inverse(runs, keys, mouse, settings, cfg.seed, bar.update)
        seconds = time.perf_counter() - t0
        write_safetensors(weights, idm.state_dict(), {"settings": stamp})
    S, n = cfg.start_frames, c.idm_horizon
    picks = pick_starts(held_out_episodes(rec, em.model.metadata), c.idm_starts, S, n + em.lookahead,
                        np.random.default_rng(cfg.seed + 1))
    start, causing, real = _sessions(picks, S, n, em.lookahead)
    recorded = np.stack([ep.actions(s - S, s + n) for ep, s in picks])  # row t held while frame t was shown
    gen = []
    with _bar(len(picks), "control: generating", show) as bar:
        for i in range(0, len(picks), cfg.fidelity.batch):
            gen.append(em.generate(start[i:i + cfg.fidelity.batch], causing[i:i + cfg.fidelity.batch], n, cfg.seed))
            bar.update(len(gen[-1]))
    gen = np.concatenate(gen)
    first = max(0, S - inverse.CONTEXT)  # the first window whose frame after the key is the model's
    real_seq = roundtrip(np.concatenate([start, real], 1).reshape(-1, *real.shape[2:])).reshape(
        len(picks), S + n, *real.shape[2:])
    model_seq = np.concatenate([real_seq[:, :S], gen], 1)

    def stacked(seqs, actions):
        w = [inverse.windows(f[first:], a[first:]) for f, a in zip(seqs, actions)]
        return np.concatenate([x[0] for x in w]), np.concatenate([x[1] for x in w])

    real_w, real_a = stacked(real_seq, recorded)
    model_w, model_a = stacked(model_seq, recorded)
    _, other_a = stacked(real_seq, np.roll(recorded, 1, 0))  # another start's actions: chance
    sets = {"real": (real_w, real_a), "model": (model_w, model_a), "chance": (real_w, other_a)}
    read = {name: inverse.accuracy(idm, w, a, space.keys) for name, (w, a) in sets.items()}
    return {**read, "steps": settings.steps, "starts": len(picks),
            "horizon": n, "train_seconds": round(seconds, 1),
            "keys_held": float((real_a[:, :keys] > 0.5).any(1).mean())}


def _speed(em, rec, cfg, game: str) -> dict:
    """``rollingworld bench``'s figures for this model as evaluated (its engine settings, ``speed.compile``),
    started from the checkpoint's stored start frames, else from the real game's start screen for our games, else
    from the recording's first frames."""
    from dataclasses import replace

    from runtime.bench import measure_speed
    from runtime.worlds import start_frames, stored_start
    from worldmodel.engine.session import WorldSession

    session = WorldSession.from_checkpoint(em.path, replace(em.cfg, compile=cfg.speed.compile))
    if stored_start(session, 0) is not None or game in SCRIPTED_GAMES:
        start = start_frames(session, "game", 0)
    else:
        first = next(ep for ep in rec if ep.length > 0)
        start = first.frames(0, min(first.length, cfg.start_frames))
    return measure_speed(session, start, cfg.speed.frames, 0, cfg.progress, str(Path(em.path).resolve()))


def _generation(em) -> dict:
    """How the model generated: what every saved part of an evaluation depends on besides the checkpoint."""
    c = em.cfg
    return {"mode": c.mode, "window": c.window, "sink": c.sink, "recent": c.recent}


def _as_now(saved: dict, em) -> dict:
    """A header or stamp saved by an earlier rollingworld, in today's terms: the mode ``rolling_nosink`` is ``rolling``
    with ``sink`` 0, and a layout it did not record was the checkpoint's own (none could be given)."""
    saved = dict(saved)
    if saved.get("mode") == "rolling_nosink":
        saved.update(mode="rolling", sink=0)
    for key, value in _generation(em).items():
        saved.setdefault(key, value)
    return saved


def _section_settings(cfg, section: str) -> dict:
    """What a section's result depends on besides the checkpoint, mode and seed (a kept part must match)."""
    from omegaconf import OmegaConf

    own = OmegaConf.to_container(cfg[section]) if section in cfg else {}
    shared = {"start_frames": cfg.start_frames, "teacher_steps": cfg.teacher_steps,
              "data": str(Path(cfg.data).resolve())}
    if section == "speed":
        shared["threads"] = cfg.threads
    return {**own, **shared}


def evaluate(cfg) -> Path:
    """Run the sections of ``cfg`` (an ``EvalConfig``) that are not finished in ``cfg.out``; returns the report."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from games.data.recording import Recording
    from worldmodel.checkpoint import check_recording_fits
    from worldmodel.eval.report import write_report
    from worldmodel.eval.model import EvalModel

    check_settings(cfg)
    sections = list(cfg.sections)
    if not Path(cfg.ckpt).is_file():
        raise InputError(f"no checkpoint at {cfg.ckpt}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rec = Recording(cfg.data)
    em = EvalModel.load(cfg.ckpt, cfg.mode, cfg.teacher_steps, window=cfg.window, sink=cfg.sink, recent=cfg.recent)
    check_recording_fits(em.info, rec, cfg.data, same_game=False)  # a renamed import of the game is fine here
    game = em.info.game or rec.game
    out = Path(cfg.out)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    header = {"ckpt": str(Path(cfg.ckpt).resolve()), "data": str(Path(cfg.data).resolve()), "game": game,
              **_generation(em), "model": em.describe(), "threads": torch.get_num_threads(), "seed": cfg.seed}
    parts_dir = out / "parts"
    stamp = parts_dir / "header.json"
    same_model = True  # the parts already there were made by this model, generating as now
    if stamp.exists():
        old = _as_now(json.loads(stamp.read_text()), em)
        changed = [k for k in ("ckpt", *_generation(em), "seed") if old.get(k) != header[k]]
        if changed and not cfg.fresh:
            raise InputError(f"{out} holds an evaluation with other {', '.join(changed)}: choose another out= "
                             "or fresh=true")
        same_model = not changed
    _save_json(stamp, header)
    show = cfg.progress
    report = {"header": header}
    for section in SECTIONS:
        part = parts_dir / f"{section}.json"
        settings = _section_settings(cfg, section)
        # fresh=true redoes the sections asked for; the others stay in the report if this model made them
        if part.exists() and same_model and not (cfg.fresh and section in sections):
            kept = json.loads(part.read_text())
            if kept.get("settings") == settings:
                report[section] = kept
                if section in sections:
                    print(f"{section}: finished earlier (kept; fresh=true redoes it)")
                continue  # a section not asked for still shows in the report when it was made with these settings
            if section in sections:
                print(f"{section}: finished earlier with other settings; running it again")
        if section not in sections:
            continue
        if section == "fidelity":
            result = _fidelity(em, rec, cfg, game, out, show)
        elif section == "drift":
            result = _drift(em, rec, cfg, game, out, show)
        elif section == "control":
            result = _control(em, rec, cfg, game, out, show)
        else:
            result = _speed(em, rec, cfg, game)
        result["settings"] = settings
        _save_json(part, result)
        report[section] = result
        write_report(out, report)
    write_report(out, report)
    return out / "report.md"
