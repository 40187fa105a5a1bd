"""The distillation summary: the student against the teacher's many-step sampling and the student before DMD.

``evaluate_distillation`` measures, on the teacher's held-out episodes:

- **Fidelity**: from ``start_frames`` real frames, the recorded actions drive each model; PSNR of the generated
  frames against the real ones at the given horizons (pooled over ``starts`` starts), next to the two trivial
  baselines on the same frames (repeat the last real frame; the episode's mean frame).
- **Stability** over a long session (``stability_ticks`` frames, the held-out episodes' actions in a loop):
  ``realism`` = PSNR of each generated frame to its nearest real frame in a bank of held-out frames (a frame that
  blurs, fills with noise or loses its sprites moves away from every real frame); the summary gives its mean over
  the first and the last ``window_seconds`` of the session and their difference (positive = worse at the end).

Rows: ``teacher`` (many-step, frame by frame, ``teacher_steps``), ``teacher_rolling`` (the teacher's weights in
the rolling window without distillation), and every student given (rolling window, their own settings).
Every model runs through ``rollout.Rollout``, the engine's tick, with the actions of every frame given.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from games.data.recording import Recording
from worldmodel.train.data import split_episodes
from worldmodel.engine.rollout import Rollout
from worldmodel.engine.sampler import load_teacher, mse, pooled_psnr


def _model_rows(teacher: str, students: dict[str, str], teacher_steps: int) -> list[dict]:
    """(name, loaded model, rollout mode, levels, sink, recent) for every row of the summary."""
    t = load_teacher(teacher)
    rows = [{"name": "teacher", "model": t, "mode": "framewise", "levels": t.denoiser.schedule.levels(teacher_steps),
             "sink": 1, "recent": 4, "what": f"teacher, {teacher_steps} steps a frame, frame by frame"},
            {"name": "teacher_rolling", "model": t, "mode": "rolling", "levels": t.denoiser.schedule.levels(4),
             "sink": 1, "recent": 4, "what": "teacher weights in the rolling window (W=4), not distilled"}]
    for name, path in students.items():
        s = load_teacher(path)
        eng = s.metadata.get("engine", {})
        w = int(eng.get("window", 4))
        rows.append({"name": name, "model": s, "mode": "rolling", "levels": s.denoiser.schedule.levels(w),
                     "sink": int(eng.get("sink", 1)), "recent": int(eng.get("recent", 4)),
                     "what": f"{s.metadata.get('distill', {}).get('stage', 'student')} student, rolling W={w}"})
    return rows


def _generate(row: dict, start: np.ndarray, actions: np.ndarray, n: int, seed: int) -> np.ndarray:
    rollout = Rollout(row["model"].denoiser, row["levels"].tolist(), row["mode"], row["sink"], row["recent"])
    return rollout.generate_uint8(row["model"].codec, start, actions, n, seed)


def nearest_real_psnr(frames: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """PSNR of each frame [N, H, W, 3] to its nearest frame in ``bank`` [M, H, W, 3] (uint8, range 255)."""
    f = torch.from_numpy(frames.reshape(len(frames), -1)).double()
    b = torch.from_numpy(bank.reshape(len(bank), -1)).double()
    d = (f.pow(2).sum(1, keepdim=True) - 2 * f @ b.T + b.pow(2).sum(1)[None]).clamp(min=0) / f.shape[1]
    best = d.min(dim=1).values.numpy()
    return 10 * np.log10(255.0 ** 2 / np.maximum(best, 1e-10))


def evaluate_distillation(teacher: str, students: dict[str, str], data: str, out, starts: int = 20,
                          horizons=(1, 8, 32), stability_ticks: int = 3600, seed: int = 0, threads: int = 0,
                          teacher_steps: int = 16, teacher_stability_ticks: int | None = None,
                          window_seconds: float = 5.0, start_frames: int = 4, progress: bool = True) -> dict:
    """Measure every row; write ``out/summary.json`` and ``out/summary.md``; return the summary."""
    from tqdm import tqdm

    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rec = Recording(data)
    rows = _model_rows(teacher, students, teacher_steps)
    tcfg = rows[0]["model"].metadata.get("provenance", {}).get("train_config", {})
    _, held_out = split_episodes(rec, float(tcfg.get("val_fraction", 0.1)), seed=int(tcfg.get("seed", 0)))
    held_out = held_out or list(range(len(rec)))
    episodes = [rec[i] for i in held_out]
    H, S = max(horizons), start_frames
    rng = np.random.default_rng(seed)
    picks = []  # (episode, first generated frame)
    for _ in range(starts):
        ep = episodes[int(rng.integers(len(episodes)))]
        if ep.length >= S + H + 8:
            picks.append((ep, int(rng.integers(S, ep.length - H - 4))))
    if not picks:
        raise ValueError(f"no held-out episode of {data} is long enough for horizon {H}")
    errors = {r["name"]: {h: [] for h in horizons} for r in rows}
    base = {"repeat_last": {h: [] for h in horizons}, "mean_frame": {h: [] for h in horizons}}
    bar = tqdm(total=len(picks) * len(rows), desc="fidelity", disable=not progress, dynamic_ncols=True)
    for k, (ep, s) in enumerate(picks):
        frames, actions = ep.frames(), ep.actions()
        causing = np.concatenate([np.zeros_like(actions[:1]), actions[:-1]])  # causing[t] produced frame t
        mean_frame = frames.mean(axis=0).round().astype(np.uint8)
        for h in horizons:
            base["repeat_last"][h].append(mse(frames[s - 1], frames[s + h - 1]))
            base["mean_frame"][h].append(mse(mean_frame, frames[s + h - 1]))
        for row in rows:
            gen = _generate(row, frames[s - S:s], causing[s:s + H + 4], H, seed + k)
            for h in horizons:
                errors[row["name"]][h].append(mse(gen[h - 1], frames[s + h - 1]))
            bar.update(1)
    bar.close()
    fps = rec.fps
    bank = np.concatenate([ep.frames()[::4] for ep in episodes])[:4000]
    loop_actions = np.concatenate([np.concatenate([np.zeros_like(ep.actions()[:1]), ep.actions()[:-1]])
                                   for ep in episodes])
    while len(loop_actions) < stability_ticks + 8:
        loop_actions = np.concatenate([loop_actions, loop_actions])
    start = episodes[0].frames()[:S]
    stability, seconds = {}, int(round(window_seconds * fps))
    for row in tqdm(rows, desc="long sessions", disable=not progress, dynamic_ncols=True):
        ticks = stability_ticks
        if row["mode"] == "framewise" and teacher_stability_ticks:
            ticks = min(ticks, teacher_stability_ticks)
        t0 = time.monotonic()
        gen = _generate(row, start, loop_actions[S:], ticks, seed)
        elapsed = time.monotonic() - t0
        real = nearest_real_psnr(gen, bank)
        first, last = float(real[:seconds].mean()), float(real[-seconds:].mean())
        stability[row["name"]] = {"ticks": ticks, "seconds": ticks / fps, "first": first, "last": last,
                                  "drop": first - last, "generation_s": elapsed}
    summary = {"data": str(Path(data).resolve()), "teacher": str(Path(teacher).resolve()),
               "students": {k: str(Path(v).resolve()) for k, v in students.items()}, "samples": len(picks),
               "start_frames": S, "horizons": list(horizons), "held_out_episodes": held_out,
               "rows": {r["name"]: {"what": r["what"], "psnr": {h: pooled_psnr(errors[r["name"]][h])
                                                                for h in horizons},
                                    "stability": stability[r["name"]]} for r in rows},
               "baselines": {k: {h: pooled_psnr(v[h]) for h in horizons} for k, v in base.items()},
               "stability_window_seconds": window_seconds}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(summary_markdown(summary))
    return summary


def summary_markdown(summary: dict) -> str:
    hs = summary["horizons"]
    w = summary["stability_window_seconds"]
    lines = [f"PSNR (dB) against the real game on {summary['samples']} held-out starts, by horizon (frames); "
             f"long-session realism (PSNR to the nearest real frame) over the first and last {w:g} s.", "",
             "| model | " + " | ".join(f"h{h}" for h in hs) + f" | session | first {w:g} s | last {w:g} s | drop |",
             "|---|" + "---:|" * (len(hs) + 4)]
    for name, r in summary["rows"].items():
        st = r["stability"]
        lines.append(f"| {name}: {r['what']} | " + " | ".join(f"{r['psnr'][h]:.2f}" for h in hs)
                     + f" | {st['seconds']:.0f} s | {st['first']:.2f} | {st['last']:.2f} | {st['drop']:+.2f} |")
    for name, b in summary["baselines"].items():
        lines.append(f"| baseline: {name.replace('_', ' ')} | " + " | ".join(f"{b[h]:.2f}" for h in hs)
                     + " | | | | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    """``python -m worldmodel.eval.distill_eval --teacher T --student ode=FILE --student student=FILE --data D --out O``"""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--student", action="append", default=[], help="NAME=FILE (repeatable)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--starts", type=int, default=20)
    ap.add_argument("--horizons", default="1,8,32")
    ap.add_argument("--stability-ticks", type=int, default=3600)
    ap.add_argument("--teacher-stability-ticks", type=int, default=900)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    students = dict(s.split("=", 1) for s in args.student)
    summary = evaluate_distillation(args.teacher, students, args.data, args.out, args.starts,
                                    tuple(int(h) for h in args.horizons.split(",")), args.stability_ticks,
                                    threads=args.threads, teacher_stability_ticks=args.teacher_stability_ticks)
    print(summary_markdown(summary))


if __name__ == "__main__":
    main()
