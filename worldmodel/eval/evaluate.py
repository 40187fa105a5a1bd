"""Evaluation of one world model against the real game: fidelity by horizon and drift over a long session.

- **Fidelity** (``fidelity``): from real start frames of held-out episodes, with the recorded actions, the model's
  frames against the real ones, PSNR and SSIM (data range 255) at every horizon 1..H, beside two trivial baselines
  (repeat the last start frame; the episode's mean frame). **Teacher-forced** next-frame PSNR is horizon 1 from many
  more starts: always real history, one generated frame.
- **Drift** (``drift_session``, ``drift_scores``): a scripted agent plays the real game for ``minutes``; its
  actions drive the model from the session's first real frames, through the engine (``engine.WorldSession``: the
  session a player gets). Q (``quality.FrameQuality``, FD-pix; lower is better) is scored on 5-second blocks spread
  over the session, the first and the last included, and dDrift = Q(last) - Q(first) (positive: it got worse).
  Q's reference is real frames passed through the model's codec (``reference=codec``): the codec's own loss then
  scores as real, and Q measures what the world model adds. The same blocks of the real game, raw and through
  the codec, are scored beside the model's.

Control and speed need the runtime (a frame source, the bench) and live in ``runtime.commands.evaluate``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from games.data.errors import InputError
from worldmodel.train.data import split_episodes
from worldmodel.eval.metrics import psnr_per_frame, ssim
from worldmodel.engine.rollout import Rollout

EVAL_MODES = ("auto", "rolling", "rolling_nosink", "framewise", "teacher")


@dataclass
class EvalModel:
    """A checkpoint and how it generates: ``mode`` (see ``engine.MODES``), its levels, sink and ring."""
    path: str
    model: object  # sample.Teacher: denoiser, codec, metadata
    mode: str
    window: int
    sink: int
    recent: int
    teacher_steps: int

    @classmethod
    def load(cls, path: str, mode: str = "auto", teacher_steps: int = 16) -> "EvalModel":
        from worldmodel.engine.sampler import load_teacher

        if mode not in EVAL_MODES:
            raise InputError(f"unknown mode {mode!r}; choose from {', '.join(EVAL_MODES)}")
        model = load_teacher(path)
        eng = model.metadata.get("engine")
        if mode == "auto":  # a student plays as it was distilled; a teacher samples with many steps
            mode = "teacher" if eng is None else eng.get("mode", "rolling" if eng.get("sink", 1) else "rolling_nosink")
        eng = eng or {}
        return cls(str(path), model, mode, int(eng.get("window", 4)), int(eng.get("sink", 1)),
                   int(eng.get("recent", 4)), int(teacher_steps))

    @property
    def steps(self) -> int:
        """Network passes that finish one frame (the denoising steps a frame sees)."""
        return self.teacher_steps if self.mode == "teacher" else self.window

    def describe(self) -> str:
        what = {"rolling": f"rolling window W={self.window}, sink {self.sink}, ring {self.recent}",
                "rolling_nosink": f"rolling window W={self.window}, no sink, ring {self.recent}",
                "framewise": f"frame by frame, {self.window} steps a frame, sink {self.sink}, ring {self.recent}",
                "teacher": f"frame by frame, {self.teacher_steps} steps a frame (many-step sampling)"}[self.mode]
        return f"{self.model.metadata.get('kind', 'checkpoint')}, {what}"

    def rollout(self) -> Rollout:
        levels = self.model.denoiser.schedule.levels(self.steps).tolist()
        mode = "framewise" if self.mode == "teacher" else self.mode
        return Rollout(self.model.denoiser, levels, mode, self.sink, self.recent)

    def engine_config(self, compile: bool = False):
        from worldmodel.engine.session import EngineConfig

        return EngineConfig(mode=self.mode, window=self.window, sink=self.sink, recent=self.recent,
                            teacher_steps=self.teacher_steps, compile=compile)

    @torch.no_grad()
    def generate(self, start: np.ndarray, actions: np.ndarray, n: int, seed: int) -> np.ndarray:
        """``n`` frames uint8 [B, n, H, W, 3] after real ``start`` [B, S, H, W, 3] with ``actions``
        [B, >= n + lookahead, A] (the action of each generated frame), B sessions in lockstep."""
        rollout, codec = self.rollout(), self.model.codec
        device = next(self.model.denoiser.parameters()).device
        z = codec.encode(torch.from_numpy(start).to(device))  # [B, S, C, h, w]
        acts = torch.from_numpy(np.asarray(actions[:, :n + rollout.lookahead], np.float32)).to(device)
        frames = rollout.run(z, acts, n, torch.Generator(device=device).manual_seed(seed)).frames
        return codec.to_uint8(codec.decode(frames)).cpu().numpy()


def held_out_episodes(recording, metadata: dict) -> list:
    """The episodes the checkpoint's teacher held out (its own split), or all of them if it held none out."""
    tcfg = metadata.get("provenance", {}).get("train_config", {})
    try:
        _, held = split_episodes(recording, float(tcfg.get("val_fraction", 0.1)), seed=int(tcfg.get("seed", 0)))
    except InputError:
        held = []
    return [recording[i] for i in (held or [e.index for e in recording if e.length > 0])]


def causing_actions(episode) -> np.ndarray:
    """[T, A]: row t is the action that produced frame t (none produced frame 0)."""
    a = episode.actions()
    return np.concatenate([np.zeros_like(a[:1]), a[:-1]])


def pick_starts(episodes, n: int, start_frames: int, span: int, rng: np.random.Generator) -> list[tuple]:
    """``n`` (episode, first generated frame) with ``start_frames`` real frames before and ``span`` after."""
    fits = [ep for ep in episodes if ep.length >= start_frames + span]
    if not fits:
        raise InputError(f"no held-out episode is long enough: need {start_frames + span} frames")
    picks = []
    for _ in range(n):
        ep = fits[int(rng.integers(len(fits)))]
        picks.append((ep, int(rng.integers(start_frames, ep.length - span + 1))))
    return picks


def fidelity(em: EvalModel, episodes, starts: int, horizon: int, teacher_forced: int, start_frames: int = 4,
             seed: int = 0, batch: int = 8, progress=None) -> dict:
    """PSNR / SSIM by horizon 1..``horizon`` over ``starts`` held-out starts, the baselines, and teacher-forced
    next-frame PSNR / SSIM over ``teacher_forced`` starts. ``progress(n)``: called after each batch."""
    rng = np.random.default_rng(seed)
    look = em.rollout().lookahead
    S = start_frames
    by_h = {k: [] for k in ("mse", "ssim", "repeat_mse", "repeat_ssim", "mean_mse", "mean_ssim")}
    samples = None
    picks = pick_starts(episodes, starts, S, horizon + look, rng)
    for b0 in range(0, len(picks), batch):
        chunk = picks[b0:b0 + batch]
        start = np.stack([ep.frames(s - S, s) for ep, s in chunk])
        acts = np.stack([causing_actions(ep)[s:s + horizon + look] for ep, s in chunk])
        real = np.stack([ep.frames(s, s + horizon) for ep, s in chunk])  # [B, H, h, w, 3]
        gen = em.generate(start, acts, horizon, seed + b0)
        flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731  [B*H, h, w, 3]
        shape = real.shape[:2]
        by_h["mse"].append((255.0 ** 2 / 10 ** (psnr_per_frame(flat(gen), flat(real), 255.0) / 10)).reshape(shape))
        by_h["ssim"].append(ssim(flat(gen), flat(real), data_range=255.0).reshape(shape))
        for name, base in (("repeat", np.repeat(start[:, -1:], horizon, 1)),
                           ("mean", np.stack([np.repeat(ep.frames().mean(0, keepdims=True).round().astype(np.uint8),
                                                        horizon, 0) for ep, _ in chunk]))):
            err = 255.0 ** 2 / 10 ** (psnr_per_frame(flat(base), flat(real), 255.0) / 10)
            by_h[f"{name}_mse"].append(err.reshape(shape))
            by_h[f"{name}_ssim"].append(ssim(flat(base), flat(real), data_range=255.0).reshape(shape))
        if samples is None:
            samples = {"start": start[0], "real": real[0], "generated": gen[0]}
        if progress:
            progress(len(chunk))
    arr = {k: np.concatenate(v) for k, v in by_h.items()}  # [starts, H]
    tf_mse, tf_ssim = [], []
    picks = pick_starts(episodes, teacher_forced, S, 1 + look, rng)
    for b0 in range(0, len(picks), 4 * batch):
        chunk = picks[b0:b0 + 4 * batch]
        start = np.stack([ep.frames(s - S, s) for ep, s in chunk])
        acts = np.stack([causing_actions(ep)[s:s + 1 + look] for ep, s in chunk])
        real = np.stack([ep.frames(s, s + 1)[0] for ep, s in chunk])
        gen = em.generate(start, acts, 1, seed + 10_000 + b0)[:, 0]
        tf_mse.append(255.0 ** 2 / 10 ** (psnr_per_frame(gen, real, 255.0) / 10))
        tf_ssim.append(ssim(gen, real, data_range=255.0))
        if progress:
            progress(len(chunk))

    def pooled(mse_rows):  # PSNR of the mean squared error at each horizon (finite for exact copies)
        m = np.maximum(mse_rows.mean(0), 1e-10)
        return (10 * np.log10(255.0 ** 2 / m)).tolist()

    return {
        "starts": len(arr["mse"]), "horizons": list(range(1, horizon + 1)), "data_range": 255,
        "psnr": pooled(arr["mse"]), "ssim": arr["ssim"].mean(0).tolist(),
        "baselines": {"repeat_last": {"psnr": pooled(arr["repeat_mse"]), "ssim": arr["repeat_ssim"].mean(0).tolist()},
                      "mean_frame": {"psnr": pooled(arr["mean_mse"]), "ssim": arr["mean_ssim"].mean(0).tolist()}},
        "teacher_forced": {"starts": int(sum(len(x) for x in tf_mse)),
                           "psnr": pooled(np.concatenate(tf_mse)[:, None])[0],
                           "ssim": float(np.concatenate(tf_ssim).mean())},
        "samples": samples,
    }


def scripted_play(game_name: str, agent: str, n_frames: int, seed: int, size: tuple[int, int], keep) -> tuple:
    """The real game played by the scripted ``agent`` for ``n_frames`` steps after its reset frame.

    Returns (actions [n_frames, A]: action t produced frame t + 1, kept {index: frame} for the indices in ``keep``
    (frame 0 is the reset frame))."""
    from games import make_agent, make_game

    h, w = size
    game = make_game(game_name, width=w, height=h)
    player = make_agent(agent, game, seed)
    kept = {}
    frame = game.reset(seed)
    actions = np.zeros((n_frames, game.action_space.size), np.float32)
    for t in range(n_frames + 1):
        if t in keep:
            kept[t] = frame
        if t == n_frames:
            break
        actions[t] = player.act()
        frame = game.step(actions[t])
    return actions, kept


def block_starts(n_frames: int, block: int, count: int) -> list[int]:
    """``count`` evenly spread starts of ``block``-frame blocks in a session of ``n_frames``, first and last
    included (the first 5 s and the last 5 s of dDrift)."""
    if n_frames < 2 * block:
        raise InputError(f"a drift session needs at least two blocks: {2 * block} frames, got {n_frames}")
    return sorted({int(round(x)) for x in np.linspace(0, n_frames - block, max(2, count))})


def drift_session(em: EvalModel, game_name: str, agent: str, minutes: float, fps: int, block_seconds: float = 5.0,
                  blocks: int = 11, start_frames: int = 4, seed: int = 0, compile: bool = False,
                  progress=None) -> dict:
    """A scripted session of ``minutes`` in the engine (module docstring). Returns the frames Q is scored on:
    ``model`` and ``real`` uint8 [blocks, block frames, H, W, 3], and the blocks' start times in seconds."""
    from worldmodel.engine.session import WorldSession
    from games.data.actions import ActionSpace

    n = int(round(minutes * 60 * fps))
    block = int(round(block_seconds * fps))
    starts = block_starts(n, block, blocks)
    want = {s + i for s in starts for i in range(block)}  # session frame indices (0: the first generated frame)
    S = start_frames
    meta = em.model.metadata
    frame = meta.get("frame", {})
    size = (int(frame.get("height", 64)), int(frame.get("width", 64)))
    actions, real = scripted_play(game_name, agent, S + n, seed, size, {S + i for i in want} | set(range(S)))
    session = WorldSession(em.model.denoiser, em.model.codec, ActionSpace.from_dict(meta["action_space"]),
                           em.engine_config(compile), size)
    session.reset(np.stack([real[i] for i in range(S)]), seed=seed)
    gen = {}
    for t in range(n):
        f = session.step(actions[S - 1 + t])  # frame S + t of the real session is the effect of this action
        if t in want:
            gen[t] = f
        if progress and (t + 1) % 100 == 0:
            progress(100)
    return {"frames": n, "fps": fps, "block_frames": block, "block_seconds": [s / fps for s in starts],
            "model": np.stack([np.stack([gen[s + i] for i in range(block)]) for s in starts]),
            "real": np.stack([np.stack([real[S + s + i] for i in range(block)]) for s in starts])}


def through_codec(codec, frames: np.ndarray, batch: int = 256) -> np.ndarray:
    """Frames uint8 [N, H, W, 3] encoded and decoded by ``codec``: what the model could show at best."""
    with torch.no_grad():
        return np.concatenate([codec.to_uint8(codec.decode(codec.encode(torch.from_numpy(frames[i:i + batch]))))
                               .numpy() for i in range(0, len(frames), batch)])


def drift_scores(quality, session: dict, codec) -> dict:
    """Q of every block of a ``drift_session`` for the model, the real game and the real game through the codec;
    dDrift = Q(last block) - Q(first block) of each, and the spread (standard deviation) of Q over the blocks: a
    dDrift inside the spread is noise, not drift."""
    curves = {"model": [quality.score(b) for b in session["model"]],
              "real": [quality.score(b) for b in session["real"]],
              "real_through_codec": [quality.score(through_codec(codec, b)) for b in session["real"]]}
    return {"q": curves, "drift": {k: {"first": v[0], "last": v[-1], "ddrift": v[-1] - v[0],
                                       "spread": float(np.std(v))} for k, v in curves.items()}}
