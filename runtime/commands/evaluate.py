"""``rollingworld eval ckpt=FILE data=DIR out=DIR``: fidelity, drift, control and speed of one world model.

The sections (``configs/eval.yaml``) run in order; each is written to ``out/parts/<section>.json`` when it finishes,
so a stopped evaluation loses at most the section it was in, and the same command resumes after the finished ones.
The report (``report.md``, ``report.json``, PNG plots) is rewritten after every section.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from games.data.errors import InputError

SECTIONS = ("fidelity", "drift", "control", "speed")
SCRIPTED_GAMES = ("pong", "maze")  # games with a scripted agent and a control probe


def _save_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _bar(total: int, desc: str, show: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not show, dynamic_ncols=True, mininterval=1.0)


def _fidelity(em, rec, cfg, out: Path, show: bool) -> dict:
    from worldmodel.eval.report import write_strip
    from worldmodel.eval.evaluate import fidelity, held_out_episodes

    f = cfg.fidelity
    episodes = held_out_episodes(rec, em.model.metadata)
    with _bar(int(f.starts) + int(f.teacher_forced), "fidelity", show) as bar:
        result = fidelity(em, episodes, int(f.starts), int(f.horizon), int(f.teacher_forced), int(cfg.start_frames),
                          int(cfg.seed), int(f.batch), progress=bar.update)
    samples = result.pop("samples")
    write_strip(out / "fidelity-samples.png", samples["real"], samples["generated"])
    result["episodes"] = [ep.index for ep in episodes]
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


def _drift_frames(em, cfg, game: str, out: Path, show: bool) -> dict:
    """The scripted session's blocks (``parts/drift-frames.npz``), generated once for the same session settings:
    changing only how Q is scored does not regenerate ten minutes of frames."""
    from worldmodel.eval.evaluate import drift_session

    d = cfg.drift
    fps = int(em.model.metadata.get("frame", {}).get("fps", 30))
    session_settings = {"ckpt": str(Path(em.path).resolve()), "mode": em.mode, "minutes": float(d.minutes),
                        "agent": str(d.agent), "block_seconds": float(d.block_seconds), "blocks": int(d.blocks),
                        "start_frames": int(cfg.start_frames), "seed": int(cfg.seed)}
    path, stamp = out / "parts" / "drift-frames.npz", out / "parts" / "drift-frames.json"
    if path.exists() and stamp.exists() and json.loads(stamp.read_text()) == session_settings:
        with np.load(path, allow_pickle=False) as z:
            saved = {k: z[k] for k in z.files}
        return {"frames": int(saved["frames"]), "fps": int(saved["fps"]), "block_frames": int(saved["block_frames"]),
                "block_seconds": saved["block_seconds"].tolist(), "model": saved["model"], "real": saved["real"]}
    with _bar(int(round(float(d.minutes) * 60 * fps)), f"drift session ({d.minutes} min)", show) as bar:
        session = drift_session(em, game, str(d.agent), float(d.minutes), fps, float(d.block_seconds),
                                int(d.blocks), int(cfg.start_frames), int(cfg.seed), bool(d.compile),
                                progress=bar.update)
    tmp = path.with_name("drift-frames.tmp.npz")
    np.savez(tmp, **{k: np.asarray(v) for k, v in session.items()})
    os.replace(tmp, path)
    _save_json(stamp, session_settings)
    return session


def _drift(em, rec, cfg, game: str, out: Path, show: bool) -> dict:
    from worldmodel.eval.report import write_frames
    from worldmodel.eval.evaluate import drift_scores, through_codec
    from worldmodel.eval.quality import FrameQuality

    d = cfg.drift
    if game not in SCRIPTED_GAMES:
        return {"skipped": f"no scripted agent plays {game!r} (drift needs one of {', '.join(SCRIPTED_GAMES)})"}
    if d.reference not in ("codec", "real"):
        raise InputError(f"drift.reference must be codec or real, got {d.reference!r}")
    session = _drift_frames(em, cfg, game, out, show)
    clips = _reference_clips(rec, int(d.reference_frames))
    if d.reference == "codec":
        clips = [through_codec(em.model.codec, c) for c in clips]
    quality = FrameQuality(clips)
    result = drift_scores(quality, session, em.model.codec)
    write_frames(out / "drift-frames.png", {"real_first": session["real"][0][-1], "real_last": session["real"][-1][-1],
                                            "model_first": session["model"][0][-1],
                                            "model_last": session["model"][-1][-1]})
    return {"minutes": float(d.minutes), "agent": str(d.agent), "reference": str(d.reference),
            "quality": f"{quality.name} against real frames{' through the codec' if d.reference == 'codec' else ''}",
            **{k: session[k] for k in ("frames", "fps", "block_frames", "block_seconds")}, **result}


def _control(em, rec, cfg, game: str, show: bool) -> dict:
    from games import make_game
    from runtime.commands.play import WorldSource
    from worldmodel.engine.session import WorldSession
    from games.data.actions import ActionSpace
    from games.probes import ShuffledFrames, control_accuracy, probe_for

    if game not in SCRIPTED_GAMES:
        return {"skipped": f"no control probe reads {game!r} (probes exist for {', '.join(SCRIPTED_GAMES)})"}
    meta = em.model.metadata
    frame = meta.get("frame", {})
    h, w = int(frame.get("height", 64)), int(frame.get("width", 64))
    probe, n, seed = probe_for(game, w, h), int(cfg.control.trials), int(cfg.seed)
    session = WorldSession(em.model.denoiser, em.model.codec, ActionSpace.from_dict(meta["action_space"]),
                           em.engine_config(), (h, w))
    session.metadata = meta
    real_frames = np.concatenate([ep.frames(0, min(ep.length, 500)) for ep in rec])
    out = {}
    with _bar(3, "control", show) as bar:
        for name, source in (("model", WorldSource(session)), ("real_game", make_game(game, width=w, height=h)),
                             ("chance", ShuffledFrames(real_frames, ActionSpace.from_dict(meta["action_space"]),
                                                       seed))):
            out[name] = control_accuracy(source, probe, n, seed)
            bar.update(1)
    out["latency_ticks"] = session.latency_ticks
    return out


def _speed(em, cfg, out: Path) -> dict:
    from runtime.cli import compose
    from runtime.commands.world import bench

    path = out / "parts" / "bench.json"
    overrides = [f"ckpt={Path(em.path).resolve()}", f"mode={em.mode}", f"window={em.window}", f"sink={em.sink}",
                 f"recent={em.recent}", f"teacher_steps={em.teacher_steps}", f"frames={int(cfg.speed.frames)}",
                 f"compile={str(bool(cfg.speed.compile)).lower()}", f"threads={int(cfg.threads)}",
                 f"progress={str(bool(cfg.progress)).lower()}", f"json={path}"]
    bench(compose("bench", overrides))
    return json.loads(path.read_text())


def _section_settings(cfg, section: str) -> dict:
    """What a section's result depends on besides the checkpoint, mode and seed (a kept part must match)."""
    from omegaconf import OmegaConf

    own = OmegaConf.to_container(cfg[section]) if section in cfg else {}
    shared = {"start_frames": int(cfg.start_frames), "teacher_steps": int(cfg.teacher_steps),
              "data": str(Path(cfg.data).resolve())}
    if section == "speed":
        shared["threads"] = int(cfg.threads)
    return {**own, **shared}


def run(cfg) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from games.data.recording import Recording
    from worldmodel.checkpoint import check_action_space
    from worldmodel.eval.report import write_report
    from worldmodel.eval.evaluate import EvalModel

    sections = list(cfg.sections)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise InputError(f"sections must be a list from {', '.join(SECTIONS)}; got {sections}")
    if not Path(str(cfg.ckpt)).is_file():
        raise InputError(f"no checkpoint at {cfg.ckpt}")
    if int(cfg.threads):
        torch.set_num_threads(int(cfg.threads))
    rec = Recording(cfg.data)
    em = EvalModel.load(str(cfg.ckpt), str(cfg.mode), int(cfg.teacher_steps))
    meta = em.model.metadata
    check_action_space(meta, rec.action_space)
    frame = meta.get("frame", {})
    if "height" in frame and (rec.height, rec.width) != (frame["height"], frame["width"]):
        raise InputError(f"{cfg.data} holds {rec.width}x{rec.height} frames but the model makes "
                         f"{frame['width']}x{frame['height']}")
    game = str(meta.get("provenance", {}).get("game", rec.game))
    out = Path(cfg.out)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    header = {"ckpt": str(Path(cfg.ckpt).resolve()), "data": str(Path(cfg.data).resolve()), "game": game,
              "mode": em.mode, "model": em.describe(), "threads": torch.get_num_threads(), "seed": int(cfg.seed)}
    parts_dir = out / "parts"
    stamp = parts_dir / "header.json"
    if stamp.exists() and not cfg.fresh:
        old = json.loads(stamp.read_text())
        changed = [k for k in ("ckpt", "mode", "seed") if old.get(k) != header[k]]
        if changed:
            raise InputError(f"{out} holds an evaluation with other {', '.join(changed)}: choose another out= "
                             "or fresh=true")
    _save_json(stamp, header)
    show = bool(cfg.progress)
    report = {"header": header}
    for section in SECTIONS:
        part = parts_dir / f"{section}.json"
        settings = _section_settings(cfg, section)
        if part.exists() and not cfg.fresh:
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
            result = _fidelity(em, rec, cfg, out, show)
        elif section == "drift":
            result = _drift(em, rec, cfg, game, out, show)
        elif section == "control":
            result = _control(em, rec, cfg, game, show)
        else:
            result = _speed(em, cfg, out)
        result["settings"] = settings
        _save_json(part, result)
        report[section] = result
        write_report(out, report)
    write_report(out, report)
    print(f"report: {out / 'report.md'}")
    return 0
