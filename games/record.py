"""Record datasets of a game played by a scripted agent, resume them after a crash, and audit them.

``record_dataset`` is what ``rollingworld record`` runs: episode ``i`` is played from seed ``seed + i`` by a fresh
game and agent (both deterministic), and appended to a ``games.data.recording`` dataset chunk by chunk. Running it again
with the same arguments is a resume: complete episodes are skipped, and an incomplete one is restored by replaying
its recorded actions through a fresh game and agent (checking that both reproduce the recording exactly) and then
continued, so an interrupted and resumed dataset equals an uninterrupted one frame for frame.

``check_dataset`` is what ``rollingworld check`` runs.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from games.data.actions import ActionSpace
from games.data.errors import InputError, RecordingError
from games.data.layout import (CHUNK_RE, EPISODE_RE, LOCK, MANIFEST, PARTIAL_RE, episode_dir_name, read_manifest,
                               scan_episode)
from games.data.recording import Recording
from games.data.writer import RecordingWriter

REPLAY_BLOCK = 256  # frames read at a time while replaying an episode to resume it


@dataclass
class RecordSummary:
    path: str
    episodes: int  # episodes in the request
    recorded: int  # episodes recorded from scratch
    resumed: int  # incomplete episodes continued
    skipped: int  # complete episodes left as they were
    frames_written: int  # new frames this run
    seconds: float

    def line(self) -> str:
        rate = self.frames_written / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.path}: {self.episodes} episodes ({self.recorded} recorded, {self.resumed} resumed, "
                f"{self.skipped} already complete), {self.frames_written} new frames in {self.seconds:.1f} s "
                f"({rate:.0f} frames/s)")


def record_dataset(out, game_factory, agent_name: str, episodes: int, frames: int, seed: int = 0,
                   chunk_frames: int = 256, progress: bool = True, make_agent=None,
                   source: dict | None = None) -> RecordSummary:
    """Record ``episodes`` episodes of ``frames`` frames each to the dataset folder ``out`` (resuming it if it
    exists). ``game_factory()`` makes a fresh Game; ``make_agent(name, game, seed)`` an agent whose ``act()``
    returns the action for the current frame (default: ``games.agents.make_agent``). ``source`` is extra provenance
    stored with each new episode. On KeyboardInterrupt or SIGTERM the frames appended so far are written and the
    interrupt propagates (SIGTERM as SystemExit(143))."""
    if episodes < 1 or frames < 1:
        raise InputError(f"need episodes >= 1 and frames >= 1, got episodes={episodes}, frames={frames}")
    if make_agent is None:
        from games.agents import make_agent  # lazily: games.agents imports every game
    t0 = time.perf_counter()
    probe = game_factory()  # only for the dataset's settings
    space: ActionSpace = probe.action_space
    settings = dict(game=probe.name, action_space=space, fps=probe.fps, height=probe.height, width=probe.width)
    probe.close()
    summary = RecordSummary(str(out), episodes, 0, 0, 0, 0, 0.0)
    with _sigterm_as_exit(), RecordingWriter(out, chunk_frames=chunk_frames, **settings) as writer:
        existing = writer.episodes
        done = sum(min(e["frames"], frames) for e in existing[:episodes])
        bar = tqdm(total=episodes * frames, initial=done, unit="frame", disable=not progress, desc="record",
                   dynamic_ncols=True)
        try:
            for i in range(episodes):
                ep_seed = seed + i
                bar.set_postfix(episode=f"{i + 1}/{episodes}", refresh=False)
                if i < len(existing):
                    info = existing[i]
                    _check_settings(out, info, ep_seed, agent_name, frames)
                    if info["complete"]:
                        summary.skipped += 1
                        continue
                    ep = writer.resume_episode(i)
                    summary.resumed += 1
                else:
                    ep = writer.begin_episode(seed=ep_seed, agent=agent_name,
                                              source={"recorder": "games.record", **(source or {})})
                    summary.recorded += 1
                game = game_factory()
                try:
                    frame = game.reset(ep_seed)  # uint8 [H, W, 3]
                    agent = make_agent(agent_name, game, ep_seed)
                    with ep:
                        if ep.frames_written:  # resuming: bring game and agent to where the recording stops
                            frame = _fast_forward(Recording(out)[i], game, agent, frame, ep.frames_written,
                                                  where=f"{out}/{ep.name}")
                        while ep.frames_written < frames:
                            action = space.validate(agent.act())  # held while `frame` is shown
                            ep.append(frame, action)
                            summary.frames_written += 1
                            bar.update(1)
                            if ep.frames_written < frames:
                                frame = game.step(action)  # frame t + 1 = f(frame t, action t)
                finally:
                    game.close()
        finally:
            bar.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def _check_settings(out, info: dict, seed: int, agent: str, frames: int) -> None:
    """An existing episode must be the one these arguments would record."""
    where = f"{out}/{info.get('name')}"
    if info.get("seed") != seed or info.get("agent") != agent:
        raise RecordingError(f"{where} was recorded with seed {info.get('seed')} and agent {info.get('agent')!r}, "
                             f"not seed {seed} and agent {agent!r}: the recording cannot be resumed with these "
                             f"settings (use another folder)")
    if info["frames"] > frames or (info["complete"] and info["frames"] != frames):
        raise RecordingError(f"{where} has {info['frames']} frames, not {frames}: the recording cannot be resumed "
                             f"with these settings (use another folder)")


def _fast_forward(recorded, game, agent, frame: np.ndarray, n: int, where: str) -> np.ndarray:
    """Replay the first ``n`` recorded steps through a fresh ``game`` and ``agent`` (just reset), checking that both
    reproduce the recording; returns frame ``n``, the next one to record."""
    space = game.action_space
    for start in range(0, n, REPLAY_BLOCK):
        stop = min(n, start + REPLAY_BLOCK)
        frames, actions = recorded.frames(start, stop), recorded.actions(start, stop)  # [T, H, W, 3], [T, A]
        for k in range(stop - start):
            action = space.validate(agent.act())
            same_frame = np.array_equal(frame, frames[k])
            if not same_frame or not np.array_equal(action, actions[k]):
                what = "game's frame" if not same_frame else "agent's action"
                raise RecordingError(
                    f"{where}: the recording cannot be resumed with these settings: the {what} at frame "
                    f"{start + k} differs from the recorded one "
                    f"(another game, game parameters, agent or code version?)")
            frame = game.step(action)
    return frame


@contextlib.contextmanager
def _sigterm_as_exit():
    """Turn SIGTERM into SystemExit(143) inside the block so that ``with`` blocks flush on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


# ----------------------------------------------------------------------------------------------------------------
# Audit (rollingworld check)


@dataclass
class CheckReport:
    """What ``check_dataset`` found. ``damaged`` means something needs attention (data lost or not closed)."""
    root: Path
    episodes: int = 0
    frames: int = 0  # readable frames
    actions: int = 0  # readable action vectors
    damaged_chunks: list[str] = field(default_factory=list)  # "path: reason"
    partial_files: list[str] = field(default_factory=list)  # interrupted writes
    incomplete: list[str] = field(default_factory=list)  # episodes never closed
    mismatches: list[str] = field(default_factory=list)  # manifest and disk disagree (data lost)
    foreign: list[str] = field(default_factory=list)  # files that are not part of the format (harmless)

    @property
    def damaged(self) -> bool:
        return bool(self.damaged_chunks or self.partial_files or self.incomplete or self.mismatches)

    def lines(self) -> list[str]:
        out = [f"{self.episodes} episodes, {self.frames} frames, {self.actions} actions"]
        out += [f"damaged chunk {d}" for d in self.damaged_chunks]
        out += [f"interrupted write (leftover partial file) {p}" for p in self.partial_files]
        out += [f"incomplete episode {e}" for e in self.incomplete]
        out += [f"manifest/disk disagreement: {m}" for m in self.mismatches]
        out += [f"foreign file {f}" for f in self.foreign]
        if self.partial_files or self.incomplete:
            out.append("an interrupted recording or import: run the same record or import command again to resume it")
        out.append("DAMAGED" if self.damaged else "OK")
        return out


def check_dataset(root, verify_data: bool = True) -> CheckReport:
    """Audit the dataset at ``root``: counts, damaged chunks (``verify_data`` also checks every chunk's CRC),
    leftover partial files, unclosed episodes, manifest/disk disagreements and foreign files."""
    root = Path(root)
    m = read_manifest(root)
    space = ActionSpace.from_dict(m["action_space"])
    rep = CheckReport(root=root, episodes=len(m["episodes"]))
    ours = {MANIFEST, LOCK, f".{MANIFEST}.partial"} | {episode_dir_name(i) for i in range(len(m["episodes"]))}
    for name in sorted(os.listdir(root)):
        if name == f".{MANIFEST}.partial":
            rep.partial_files.append(name)
        elif name not in ours:
            rep.foreign.append(name + ("/ (episode folder not in the manifest)" if EPISODE_RE.match(name) else ""))
    for i, info in enumerate(m["episodes"]):
        ep_dir = root / episode_dir_name(i)
        chunks, problems = scan_episode(ep_dir, i, int(m["height"]), int(m["width"]), space.size, verify_data)
        on_disk = sum(c.count for c in chunks)
        rep.frames += on_disk
        rep.actions += on_disk  # validate_chunk checked actions has exactly one row per frame
        rep.damaged_chunks += [f"{p.relative_to(root)}: {r}" for p, r in problems]
        for name in sorted(os.listdir(ep_dir)) if ep_dir.is_dir() else []:
            if PARTIAL_RE.match(name):
                rep.partial_files.append(f"{ep_dir.name}/{name}")
            elif not CHUNK_RE.match(name):
                rep.foreign.append(f"{ep_dir.name}/{name}")
        listed = int(info["frames"])
        if not info.get("complete"):
            lag = f", manifest says {listed}" if listed != on_disk else ""
            rep.incomplete.append(f"{ep_dir.name} ({on_disk} readable frames{lag}; never closed)")
        if on_disk < listed or (info.get("complete") and on_disk != listed):
            rep.mismatches.append(f"{ep_dir.name}: manifest says {listed} frames, {on_disk} readable on disk")
    return rep

