"""The evaluation report of ``rollingworld eval``: ``report.md``, ``report.json`` and PNG plots, and the comparison
table of several evaluations (the paper's table on our games)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

TABLE_HORIZONS = (1, 8, 32)


def _scaled(img: np.ndarray, k: int = 3) -> np.ndarray:
    return np.repeat(np.repeat(img, k, 0), k, 1)


def write_strip(path: Path, real: np.ndarray, generated: np.ndarray, horizons=(1, 4, 8, 16, 32, 64)) -> None:
    """Real (top) over generated (bottom) at the given horizons (those that exist), 3x upscaled."""
    hs = [h for h in horizons if h <= len(real)]
    rows = [np.concatenate([x[h - 1] for h in hs], 1) for x in (real, generated)]
    Image.fromarray(_scaled(np.concatenate(rows, 0))).save(path)


def write_time_strip(path: Path, seconds, rows: dict) -> None:
    """Frames of a long session side by side: one row per source (``rows``: name -> uint8 [K, H, W, 3]), one
    column per time in ``seconds`` [K], each labelled, 3x upscaled."""
    from PIL import ImageDraw

    tiles = [_scaled(np.concatenate(list(frames), 1)) for frames in rows.values()]
    label_w, top, gap = 90, 16, 4
    width, height = label_w + tiles[0].shape[1], top + sum(t.shape[0] + gap for t in tiles)
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    col = tiles[0].shape[1] // len(seconds)
    for k, t in enumerate(seconds):
        draw.text((label_w + k * col + 4, 2), f"{t:g} s", fill=(0, 0, 0))
    y = top
    for name, tile in zip(rows, tiles):
        draw.text((4, y + tile.shape[0] // 2 - 6), name, fill=(0, 0, 0))
        img.paste(Image.fromarray(tile), (label_w, y))
        y += tile.shape[0] + gap
    img.save(path)


def write_frames(path: Path, shown: dict) -> None:
    """The real game and the model at the end of the first block and at the end of the session (left to right)."""
    order = ("real_first", "real_last", "model_first", "model_last")
    Image.fromarray(_scaled(np.concatenate([np.asarray(shown[k]) for k in order], 1))).save(path)


def _plot(out: Path, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fid, drift = report.get("fidelity"), report.get("drift")
    if fid:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        for ax, key, label in ((axes[0], "psnr", "PSNR (dB)"), (axes[1], "ssim", "SSIM")):
            ax.plot(fid["horizons"], fid[key], label="model", lw=2)
            for name, base in fid["baselines"].items():
                ax.plot(fid["horizons"], base[key], "--", label=name.replace("_", " "))
            ax.set_xscale("log", base=2)
            ax.set_xlabel("horizon (frames)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axes[0].legend()
        fig.suptitle(f"fidelity against the real game ({fid['starts']} held-out starts, recorded actions)")
        fig.tight_layout()
        fig.savefig(out / "fidelity.png", dpi=90)
        plt.close(fig)
    if drift and "q" in drift:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        t = np.asarray(drift["block_seconds"]) / 60
        for name, q in drift["q"].items():
            ax.plot(t, q, "o-", label=name.replace("_", " "))
        ax.set_yscale("log")
        ax.set_xlabel("minutes into the session")
        ax.set_ylabel("Q (FD-pix, lower is better)")
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title(f"Q over a {drift['minutes']:g}-minute scripted session")
        fig.tight_layout()
        fig.savefig(out / "drift.png", dpi=90)
        plt.close(fig)


def _fmt(x, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _pct(x, digits: int = 1) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.{digits}f}%"


def _heading(title: str, part: dict) -> list[str]:
    """A section's heading, and why it was skipped if it was (a game without a scripted agent or a probe)."""
    return [f"## {title}", ""] + ([f"Skipped: {part['skipped']}.", ""] if "skipped" in part else [])


STATE_SOURCES = {"model": "model", "real_through_codec": "codec floor", "shuffled": "shuffled",
                 "repeat_last": "repeat-last"}


def _state_table(state: dict) -> list[str]:
    """The state error by horizon (``eval.state``): per horizon, the reader's first error field (its main one:
    the ball's for pong, the wall heights' for the maze) and the share of correct frames, for the model and the
    references read the same way."""
    sources = [k for k in STATE_SOURCES if k in state]
    main = next(iter(state["model"]))
    n = len(state["model"][main])
    lines = ["State error by horizon: the game state read from the pixels (`games/readers.py`) of each frame and of "
             f"the real one; `{main}` and the share of frames whose state is correct (`correct`). References: the "
             "real frames through the model's codec (the floor), the real frames of another start (chance), the "
             "last start frame repeated. Every field is in report.json.", "",
             "| horizon | " + " | ".join(f"{STATE_SOURCES[k]} {main.replace('_', ' ')} | {STATE_SOURCES[k]} correct"
                                         for k in sources) + " |",
             "|---:|" + "---:|---:|" * len(sources)]
    for h in (1, 2, 4, 8, 16, 32, 64):
        if h <= n:
            lines.append(f"| {h} | " + " | ".join(f"{_fmt(state[k][main][h - 1])} | {_pct(state[k]['correct'][h - 1])}"
                                                  for k in sources) + " |")
    return lines + [""]


def markdown(report: dict) -> str:
    h = report["header"]
    lines = [f"# Evaluation of `{Path(h['ckpt']).name}`", "",
             f"- checkpoint: `{h['ckpt']}`", f"- data: `{h['data']}` (game {h['game']})",
             f"- generation: {h['model']}", f"- torch threads: {h['threads']}, seed {h['seed']}", ""]
    fid = report.get("fidelity")
    if fid:
        lines += ["## Fidelity against the real game", "",
                  f"{fid['starts']} starts in the held-out {', '.join(map(str, fid['episodes']))}, the recorded "
                  f"actions; PSNR of the pooled MSE and mean SSIM, data range {fid['data_range']}. Baselines: "
                  "repeat the last start frame; the episode's mean frame"
                  + ("; and the real frames through the model's codec, the most the model could show (its "
                     "ceiling)." if "codec" in fid["baselines"] else "."), "",
                  "| horizon | PSNR | SSIM | repeat-last PSNR | repeat-last SSIM | mean-frame PSNR | codec PSNR |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for h_ in (1, 2, 4, 8, 16, 32, 64):
            if h_ <= len(fid["horizons"]):
                i, b = h_ - 1, fid["baselines"]
                codec = _fmt(b["codec"]["psnr"][i]) if "codec" in b else "n/a"
                lines.append(f"| {h_} | {_fmt(fid['psnr'][i])} | {_fmt(fid['ssim'][i], 3)} | "
                             f"{_fmt(b['repeat_last']['psnr'][i])} | {_fmt(b['repeat_last']['ssim'][i], 3)} | "
                             f"{_fmt(b['mean_frame']['psnr'][i])} | {codec} |")
        tf = fid["teacher_forced"]
        lines += ["", f"Teacher-forced next frame ({tf['starts']} starts, real history): PSNR {_fmt(tf['psnr'])} dB, "
                      f"SSIM {_fmt(tf['ssim'], 3)}.", ""]
        if "state" in fid:
            lines += _state_table(fid["state"])
        lines += ["![fidelity](fidelity.png)", "",
                  "Real (top) and generated (bottom) at horizons 1, 4, 8, 16, 32, 64:", "",
                  "![samples](fidelity-samples.png)", ""]
    drift = report.get("drift")
    if drift:
        lines += _heading("Drift over a long session", drift)
        if "skipped" not in drift:
            d, secs = drift["drift"], drift["block_frames"] / drift["fps"]
            driven = ("the recording's own actions (its held-out part first, then the rest, from the start again "
                      "when it runs out), the real frames the recording's" if drift["agent"] == "recording"
                      else f"the {drift['agent']} agent's actions on the real game")
            lines += [f"A {drift['minutes']:g}-minute session ({drift['frames']} frames at {drift['fps']} fps) driven "
                      f"by {driven}. Q = {drift['quality']} (Frechet "
                      "distance of frame statistics to real frames, `worldmodel/eval/quality.py`; lower is better, real "
                      f"clips score about 1) on {drift['block_frames']}-frame blocks; dDrift = Q(last) - Q(first).", "",
                      f"| frames | Q first {secs:g} s | Q last {secs:g} s | dDrift | Q mean over the blocks | spread |",
                      "|---|---:|---:|---:|---:|---:|"]
            for name in ("model", "real", "real_through_codec"):
                lines.append(f"| {name.replace('_', ' ')} | {_fmt(d[name]['first'])} | {_fmt(d[name]['last'])} | "
                             f"{_fmt(d[name]['ddrift'])} | {_fmt(float(np.mean(drift['q'][name])))} | "
                             f"{_fmt(d[name].get('spread'))} |")
            if "collapse" in drift:  # the share of frames that left the game (worldmodel/eval/collapse.py), per block
                lines += ["", "Collapsed frames (off the game's colours, or one colour over the frame) per block: "
                          + "; ".join(f"{name.replace('_', ' ')} " + " ".join(f"{100 * v:.0f}%" for v in shares)
                                      for name, shares in drift["collapse"].items()) + "."]
            if "shown" in drift:  # what the blocks show, read by the game's state reader (games/readers.py)
                lines += ["", "What each block shows (share of its frames, read from the pixels by the game's state "
                          "reader):", "", "| frames | " + " | ".join(k.replace("_", " ") for k in drift["shown"]["model"])
                          + " |", "|---|" + "---|" * len(drift["shown"]["model"])]
                for name, flags in drift["shown"].items():
                    lines.append(f"| {name.replace('_', ' ')} | " + " | ".join(
                        " ".join(f"{100 * v:.0f}%" for v in shares) for shares in flags.values()) + " |")
            lines += ["", "![drift](drift.png)", "",
                      "Real game and model, end of the first block and end of the session:", "",
                      "![frames](drift-frames.png)", ""]
    ctl = report.get("control")
    if ctl:
        lines += _heading("Control", ctl)
        if "skipped" not in ctl and "model" in ctl:
            lines += [f"The probe reads each action's effect from the frames (`games/probes.py`); the model's "
                      f"effect is read {ctl['latency_ticks']} tick(s) after the key.", "",
                      "| source | accuracy | decided / trials | by action |", "|---|---:|---:|---|"]
            for name in ("model", "real_game", "chance"):
                c = ctl[name]
                kinds = ", ".join(f"{k} {_pct(v['accuracy'], 0)}" for k, v in c["by_kind"].items())
                lines.append(f"| {name.replace('_', ' ')} | {_pct(c['accuracy'])} | "
                             f"{c['decided']} / {c['n']} | {kinds} |")
            lines.append("")
        elif "probe" in ctl:
            lines += [f"{ctl['probe']}.", ""]
        inv = ctl.get("inverse")
        if inv:
            lines += [f"An inverse-dynamics network (`worldmodel/eval/inverse.py`), trained for {inv['steps']} steps "
                      "on the recording's training part through the codec, names the keys held at each frame from "
                      f"the frames around it; {inv['starts']} held-out starts x {inv['horizon']} frames, the same "
                      f"actions for every row ({_pct(inv['keys_held'], 0)} of the frames with a key held).", "",
                      "| frames | keys named exactly | per key, balanced (chance 50 %) | by key | mouse direction |",
                      "|---|---:|---:|---|---:|"]
            for name, label in (("real", "real, through the codec (ceiling)"), ("model", "model"),
                                ("chance", "real, another start's actions (chance)")):
                r = inv[name]
                keys = ", ".join(f"{k} {_pct(v, 0)}" for k, v in r.get("by_key", {}).items())
                lines.append(f"| {label} | {_pct(r['keys'])} | {_pct(r.get('balanced'))} | {keys} | "
                             f"{_pct(r['mouse']) if r['mouse'] is not None else '-'} |")
            lines.append("")
    spd = report.get("speed")
    if spd:
        lines += ["## Speed (`rollingworld bench`)", "",
                  f"{spd['frames']} ticks, {spd['threads']} thread(s), compile {spd['compile']}: "
                  f"**{_fmt(spd['fps'], 1)} fps**, tick p50 {_fmt(spd['tick_ms_p50'])} ms, p99 "
                  f"{_fmt(spd['tick_ms_p99'])} ms, key-to-frame latency {_fmt(spd['latency_ms'], 1)} ms "
                  f"({spd['latency_ticks']} ticks), RSS {_fmt(spd['rss_mb_at_100'], 0)} MB.", ""]
    return "\n".join(lines)


def write_report(out: Path, report: dict) -> None:
    out = Path(out)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    _plot(out, report)
    (out / "report.md").write_text(markdown(report))


def table_row(name: str, report: dict) -> str:
    """One row of the comparison table: fps, latency, PSNR at 1/8/32, dDrift, control accuracy."""
    spd, fid, drift, ctl = (report.get(k) or {} for k in ("speed", "fidelity", "drift", "control"))
    psnr = [_fmt(fid["psnr"][h - 1]) if fid and h <= len(fid["psnr"]) else "n/a" for h in TABLE_HORIZONS]
    dd = drift.get("drift", {}).get("model", {})
    q = f"{_fmt(dd.get('ddrift'))} ({_fmt(dd.get('first'))} -> {_fmt(dd.get('last'))})" if dd else "n/a"
    curve = drift.get("q", {}).get("model")
    q_mean = _fmt(float(np.mean(curve))) if curve else "n/a"
    inv = ctl.get("inverse") or {}
    acc = (_pct(ctl["model"]["accuracy"]) if "model" in ctl
           else f"{_pct(inv['model']['keys'])} (IDM)" if inv else "n/a")
    return (f"| {name} | {_fmt(spd.get('fps'), 1)} | {_fmt(spd.get('latency_ms'), 0)} | "
            f"{' / '.join(psnr)} | {q} | {q_mean} | {acc} |")


def comparison_table(rows: dict[str, dict]) -> str:
    """Markdown table of several reports (name -> report.json contents)."""
    lines = ["| model | fps | latency (ms) | PSNR h1 / h8 / h32 | dDrift (Q first -> last) | Q mean over the session "
             "| control |", "|---|---:|---:|---|---|---:|---:|"]
    return "\n".join(lines + [table_row(name, r) for name, r in rows.items()])


def main(argv=None) -> None:
    """``python -m worldmodel.eval.report --row NAME=EVAL_DIR ... [--out FILE.md]``: the comparison table."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--row", action="append", required=True, help="NAME=DIR of a rollingworld eval report")
    ap.add_argument("--out", help="write the table here too")
    args = ap.parse_args(argv)
    rows = {}
    for spec in args.row:
        name, _, folder = spec.partition("=")
        path = Path(folder) / "report.json"
        if not path.is_file():
            raise SystemExit(f"eval_report: no report at {path}")
        rows[name] = json.loads(path.read_text())
    table = comparison_table(rows)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
