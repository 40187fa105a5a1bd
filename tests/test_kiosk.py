"""The kiosk: attract mode and handover, session resets, the watchdog, the supervisor's restarts, the exit keys and
the event log, on a small fake frame source (offscreen, and in a real window under Xvfb for the screen and the
keys), and through the CLI a user runs. The soak (``-m slow``) runs the real game for minutes."""
import os
import shlex
import signal
import subprocess
import sys
import time
import types
from datetime import datetime

import numpy as np
import pytest

from games.agents import MazeAgent, PongAgent, RandomAgent
from games.data.actions import ActionSpace
from games.data.errors import InputError
from games.registry import make_game
from runtime.display import OffscreenDisplay, Window
from runtime.input import Controls, InputMapper, resolve_bindings
from runtime.kiosk import KioskConfig, KioskLog, KioskSession, attract_agent
from runtime.kiosk_supervisor import Kiosk
from runtime.source import FrameSource, GameSource
from tests.conftest import ROOT, assert_one_line_error

SIZE, SCALE = 32, 8  # a 32x32 frame on a 256x256 screen
FAST = dict(idle_seconds=100.0, banner_blink_seconds=0.0, backoff_seconds=0.01, backoff_max_seconds=0.05,
            stall_seconds=None)
NO_DISPLAY = {"DISPLAY": ""}


class FakeSource(FrameSource):
    """One fixed picture per start seed; records every action and start; from step ``bad_from`` after a reset it
    returns ``bad_frame``, from step ``fail_at`` it raises, and at step ``sleep_at`` it hangs for ``sleep_s``."""

    name = "fake"
    fps = 100
    latency_ticks = 1
    game = None  # no real game behind it: attract mode has no heuristic for it

    def __init__(self, mouse=False, fail_at=None, bad_from=None, bad_frame=None, sleep_at=None, sleep_s=0.0):
        self.action_space = ActionSpace(("UP", "DOWN"), mouse=mouse, buttons=("LEFT",) if mouse else ())
        self.default_bindings = {"UP": ("up",), "DOWN": ("down",)}
        self.height = self.width = SIZE
        self.fail_at, self.bad_from, self.bad_frame = fail_at, bad_from, bad_frame
        self.sleep_at, self.sleep_s = sleep_at, sleep_s
        self.t = 0
        self.actions: list[np.ndarray] = []
        self.resets: list[int] = []

    @staticmethod
    def picture(seed):
        return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)

    def reset(self, seed, start_seed=None):
        start = seed if start_seed is None else start_seed
        self.resets.append(start)
        self.t, self.current = 0, self.picture(start)
        return self.current

    def step(self, action):
        self.t += 1
        self.actions.append(action.copy())
        if self.fail_at is not None and self.t >= self.fail_at:
            raise RuntimeError("the model fell over\nsecond line")
        if self.t == self.sleep_at:
            time.sleep(self.sleep_s)
        if self.bad_from is not None and self.t >= self.bad_from:
            return self.bad_frame
        return self.current


def events(path) -> list[tuple[datetime, str, dict]]:
    """The log's lines as (time, event, fields)."""
    out = []
    for line in path.read_text().splitlines():
        when, name, *rest = shlex.split(line)
        out.append((datetime.fromisoformat(when), name, dict(f.split("=", 1) for f in rest)))
    return out


def named(log, name):
    return [fields for _, event, fields in log if event == name]


def run_kiosk(tmp_path, display, make_source=FakeSource, frames=100, on_frame=None, on_stall=None, **settings):
    """A kiosk on fresh ``make_source()`` sources, wired as the kiosk command wires it; (exit code, sources, log).

    ``on_frame(session, frame, action)`` is called before each step."""
    config = KioskConfig(**{**FAST, **settings})
    log = KioskLog(tmp_path / "kiosk.log")
    sources = []

    def start(last_input):
        source = make_source()
        sources.append(source)
        bindings = resolve_bindings(source.action_space, source.default_bindings)
        return KioskSession(source, display, InputMapper(source.action_space, bindings),
                            attract_agent(config.attract_agent, source, 0), config, log, last_input, fps=100,
                            controls=Controls({}, bindings),
                            on_frame=None if on_frame is None else lambda f, a: on_frame(kiosk.session, f, a))

    kiosk = Kiosk(start, display, config, log, on_stall=on_stall)
    try:
        code = kiosk.run(0, frames)
    finally:
        log.close()
    return code, sources, events(tmp_path / "kiosk.log")


@pytest.fixture
def offscreen():
    display = OffscreenDisplay((SIZE * SCALE, SIZE * SCALE))
    yield display
    display.close()


@pytest.fixture
def window(xdisplay):
    w = Window((SIZE * SCALE, SIZE * SCALE), capture=True)
    yield w
    w.close()


def scaled(frame):
    return np.repeat(np.repeat(frame, SCALE, axis=0), SCALE, axis=1)


def post_later(ms, event_type, **attrs):
    """Post an event to pygame's queue ``ms`` from now, as a player's input arrives while the loop runs."""
    import pygame

    pygame.time.set_timer(pygame.event.Event(event_type, **attrs), ms, loops=1)


def post_once_the_window_is_open(*events_, delay=0.1) -> list:
    """Post events from another thread ``delay`` seconds after a command opened its window (SDL's queue is
    thread-safe), as a player's keys arrive while the kiosk runs; the list returned gets True once they were posted
    with the window still open."""
    import threading

    import pygame

    def post():
        deadline = time.time() + 30
        while time.time() < deadline and not (pygame.display.get_init() and pygame.display.get_surface()):
            time.sleep(0.01)
        time.sleep(delay)
        for event in events_:
            pygame.event.post(event)
        posted.append(pygame.display.get_surface() is not None)

    posted = []
    threading.Thread(target=post, daemon=True).start()
    return posted


# -- attract mode and handover --

def test_attract_agent_is_the_games_heuristic_where_it_has_one_else_random():
    assert isinstance(attract_agent("auto", GameSource(make_game("pong")), 0), PongAgent)
    assert isinstance(attract_agent("auto", GameSource(make_game("maze")), 0), MazeAgent)
    assert isinstance(attract_agent("auto", FakeSource(), 0), RandomAgent)
    assert isinstance(attract_agent("random", GameSource(make_game("pong")), 0), RandomAgent)
    with pytest.raises(InputError, match="no heuristic"):
        attract_agent("heuristic", FakeSource(), 0)


def test_attract_mode_starts_after_the_idle_time_and_the_agents_actions_reach_the_source(tmp_path, offscreen):
    code, (source,), log = run_kiosk(tmp_path, offscreen, frames=100, idle_seconds=0.3)
    assert code == 0
    [(began, _, _)] = [e for e in log if e[1] == "session-start"]
    [(attract_at, _, attract)] = [e for e in log if e[1] == "attract-on"]
    assert (attract_at - began).total_seconds() >= 0.28 and attract["agent"] == "RandomAgent"  # ms in the log
    k = int(attract["tick"])
    assert 0 < k < 100
    noop = source.action_space.noop()
    assert all(np.array_equal(a, noop) for a in source.actions[:k])  # nobody played before
    replica = RandomAgent(types.SimpleNamespace(action_space=source.action_space, t=0), 0)
    expected = [replica.act() for _ in source.actions[k:]]
    np.testing.assert_array_equal(np.array(source.actions[k:]), np.array(expected))
    assert any(a.any() for a in expected)


def test_a_game_key_hands_over_at_once_and_the_banner_leaves_the_screen(tmp_path, window):
    import pygame

    screens = []  # (attract mode?, the screen of the previous tick), read before each step
    post_later(700, pygame.KEYDOWN, key=pygame.K_UP, mod=0, unicode="", scancode=0)
    code, (source,), log = run_kiosk(tmp_path, window, frames=120, idle_seconds=0.2,
                                     on_frame=lambda session, f, a: screens.append((session.attract,
                                                                                    window.read_screen())))
    assert code == 0
    [attract], [handover] = named(log, "attract-on"), named(log, "attract-off")  # the held key keeps it awake
    assert handover["reason"] == "handover" and handover["input"] == "key:up"
    clean = scaled(source.picture(0))
    during = [s for attract_on, s in screens[int(attract["tick"]) + 1:int(handover["tick"])] if attract_on]
    assert during and all(np.any(s != clean, axis=2)[96:160, :].mean() > 0.2 for s in during)  # the banner
    np.testing.assert_array_equal(window.read_screen(), clean)  # gone after the handover
    held = [source.action_space.held(a, "UP") for a in source.actions[int(handover["tick"]):]]
    assert held and all(held)  # the key that handed over moved the game on that very tick
    assert not pygame.mouse.get_visible()


def test_a_click_wakes_the_kiosk_but_is_not_a_game_action(tmp_path, window):
    import pygame

    post_later(500, pygame.MOUSEBUTTONDOWN, button=1, pos=(100, 100))
    code, (source,), log = run_kiosk(tmp_path, window, lambda: FakeSource(mouse=True), frames=90, idle_seconds=0.0)
    [handover] = named(log, "attract-off")
    assert handover["input"] == "mouse:click"
    after = source.actions[int(handover["tick"]):int(handover["tick"]) + 10]
    assert after and not any(source.action_space.decode(a)["buttons"] for a in after)


# -- resets, watchdog, supervisor --

def test_session_resets_to_a_new_start_after_session_minutes(tmp_path, offscreen):
    code, (source,), log = run_kiosk(tmp_path, offscreen, frames=100, session_minutes=0.005)  # 0.3 s
    resets = named(log, "reset")
    assert len(resets) >= 2 and all(r["reason"] == "session-time" for r in resets)
    assert source.resets == list(range(len(resets) + 1))  # a new start each time
    ends = named(log, "session-end")
    assert [e["reason"] for e in ends] == ["session-time"] * len(resets) + ["frames"]
    assert sum(int(e["ticks"]) for e in ends) == 100


SATURATED = np.where(np.random.default_rng(0).random((SIZE, SIZE, 3)) < 0.995, 255, 0).astype(np.uint8)


@pytest.mark.parametrize("bad_frame, ticks_to_reset, what", [
    (np.zeros((SIZE, SIZE, 3), np.uint8), 5, "flat"),
    (SATURATED, 5, "saturated"),
    (np.full((SIZE, SIZE, 3), np.nan, np.float32), 1, "non-finite"),
    (np.zeros((SIZE // 2, SIZE, 3), np.uint8), 1, "invalid"),
])
def test_watchdog_resets_on_a_degenerate_or_invalid_frame(tmp_path, offscreen, bad_frame, ticks_to_reset, what):
    code, (source,), log = run_kiosk(tmp_path, offscreen, lambda: FakeSource(bad_from=10, bad_frame=bad_frame),
                                     frames=40, degenerate_ticks=5, watchdog_fault_seconds=0.0)
    assert code == 0
    resets = named(log, "reset")
    assert resets and resets[0]["reason"] == "watchdog" and what in resets[0]["detail"]
    assert int(named(log, "session-end")[0]["ticks"]) == 9 + ticks_to_reset
    assert source.resets[:2] == [0, 1]


def test_watchdog_firing_again_soon_is_a_fault_that_rebuilds_the_source(tmp_path, offscreen):
    flat = np.zeros((SIZE, SIZE, 3), np.uint8)
    code, sources, log = run_kiosk(tmp_path, offscreen, lambda: FakeSource(bad_from=3, bad_frame=flat), frames=40,
                                   degenerate_ticks=2)
    assert [r["reason"] for r in named(log, "reset")][:1] == ["watchdog"]
    assert named(log, "fault")[0]["error"].startswith("DegenerateFrames: flat frames")
    assert len(sources) >= 2 and named(log, "restart")


def test_supervisor_restarts_after_a_fault_and_gives_up_after_the_cap(tmp_path, offscreen):
    shown = []

    class Spy:  # the offscreen display, noting whether each picture had anything over it
        size = offscreen.size

        def show(self, frame, overlays=()):
            shown.append(bool(overlays))
            offscreen.show(frame, overlays)

        def __getattr__(self, name):
            return getattr(offscreen, name)

    built = []

    def fails_once():
        built.append(1)
        return FakeSource(fail_at=5 if len(built) == 1 else None)

    code, sources, log = run_kiosk(tmp_path, Spy(), fails_once, frames=50)
    assert code == 0 and len(sources) == 2 and sources[1].resets == [1]  # rebuilt, from the next start
    [fault] = named(log, "fault")
    assert fault["error"] == "RuntimeError: the model fell over"
    assert named(log, "restart")[0]["n"] == "1"
    assert named(log, "exit")[0] == {"reason": "frames", "code": "0", "ticks": "50", "restarts": "1"}
    assert any(shown)  # a notice over the last frame while it waited, not a frozen screen

    (tmp_path / "kiosk.log").unlink()
    code, sources, log = run_kiosk(tmp_path, offscreen, lambda: FakeSource(fail_at=3), frames=1000,
                                   max_restarts_per_hour=2)
    assert code == 1 and len(sources) == 3
    assert len(named(log, "fault")) == 3 and len(named(log, "restart")) == 2
    assert named(log, "exit")[0]["reason"] == "gave-up"


def test_a_stalled_loop_is_logged_and_ends_the_process(tmp_path, offscreen):
    stalls = []
    code, _, log = run_kiosk(tmp_path, offscreen, lambda: FakeSource(sleep_at=3, sleep_s=1.2), frames=10,
                             stall_seconds=0.4, on_stall=lambda: stalls.append(1))
    assert stalls == [1] and float(named(log, "stall")[0]["seconds"]) > 0.4


# -- the way out --

def test_esc_and_the_close_button_do_not_exit_but_the_exit_keys_do(xdisplay, tmp_path):
    import pygame

    from runtime.cli import compose
    from runtime.commands.kiosk import run

    settings = ["game=pong", "runtime.fps=100", f"log={tmp_path}/k.log", "runtime.controls.quit=[escape]"]
    posted = post_once_the_window_is_open(
        pygame.event.Event(pygame.KEYDOWN, key=pygame.K_ESCAPE, mod=0, unicode="\x1b", scancode=0),
        pygame.event.Event(pygame.QUIT),
        pygame.event.Event(pygame.KEYDOWN, key=pygame.K_q, mod=0, unicode="q", scancode=0))
    assert run(compose("kiosk", settings + ["frames=60"])) == 0 and posted == [True]
    assert named(events(tmp_path / "k.log"), "exit")[0]["reason"] == "frames"  # even with Esc set up to quit

    (tmp_path / "k.log").unlink()
    post_once_the_window_is_open(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_q, unicode="Q", scancode=0,
                                                    mod=pygame.KMOD_LCTRL | pygame.KMOD_LSHIFT))
    assert run(compose("kiosk", settings + ["frames=1000"])) == 0
    [exit_] = named(events(tmp_path / "k.log"), "exit")
    assert exit_["reason"] == "exit-keys" and int(exit_["ticks"]) < 1000


# -- the command --

def test_kiosk_needs_a_game_or_a_checkpoint(cli):
    assert_one_line_error(cli("kiosk", "headless=true", "frames=5"), "game=", "ckpt=")
    assert_one_line_error(cli("kiosk", "game=pong", "headless=true", "exit_keys=ctrl+nokey"), "exit_keys", "nokey")


def test_kiosk_command_logs_every_event_in_order(cli, tmp_path):
    r = cli("kiosk", "game=pong", "headless=true", "frames=45", "idle_seconds=0", "runtime.fps=100",
            "session_minutes=0.004", "log=logs/k.log", env=NO_DISPLAY)
    assert r.returncode == 0, r.stderr
    assert "45 ticks" in r.stdout
    log = events(tmp_path / "logs/k.log")
    kinds = [e for _, e, _ in log]
    assert kinds[:3] == ["start", "session-start", "attract-on"] and kinds[-2:] == ["session-end", "exit"]
    assert "reset" in kinds and named(log, "attract-on")[0]["agent"] == "PongAgent"
    assert all(t1 <= t2 for (t1, _, _), (t2, _, _) in zip(log, log[1:]))
    r = cli("kiosk", "game=pong", "headless=true", "frames=5", "log=logs/k.log", env=NO_DISPLAY)
    assert [e for _, e, _ in events(tmp_path / "logs/k.log")].count("start") == 2  # appended


def test_sigterm_ends_the_kiosk_cleanly(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), DISPLAY="")
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "kiosk", "game=pong", "headless=true",
                             "log=k.log"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and "session-start" not in _read(tmp_path / "k.log"):
        time.sleep(0.1)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert named(events(tmp_path / "k.log"), "exit")[0]["reason"] == "signal"


def _read(path):
    return path.read_text() if path.exists() else ""


def test_kiosk_runs_a_world_model_checkpoint(cli, tmp_path):
    from tests.conftest import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "teacher.safetensors")
    r = cli("kiosk", f"ckpt={ckpt}", "compile=false", "headless=true", "frames=4", "idle_seconds=0", "runtime.fps=100", env=NO_DISPLAY)
    assert r.returncode == 0, r.stderr
    log = events(tmp_path / "kiosk.log")
    assert named(log, "attract-on")[0]["agent"] == "RandomAgent"
    assert named(log, "exit")[0]["ticks"] == "4"


# -- soak --

def _rss_mb(pid) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process's memory from /proc")
def test_soak_runs_for_minutes_without_a_fault_a_bad_frame_or_a_leak(tmp_path):
    """The kiosk command headless for ROLLINGWORLD_SOAK_SECONDS (600), a random agent playing from the start, on
    pong or on the world model of ROLLINGWORLD_SOAK_CKPT, sessions reset four times, then SIGTERM: no fault, no
    watchdog reset, no stall, and the memory (RSS) grows less than 5 MB from minute 1 (or a third of the run) on."""
    seconds = float(os.environ.get("ROLLINGWORLD_SOAK_SECONDS", 600))
    ckpt = os.environ.get("ROLLINGWORLD_SOAK_CKPT")
    env = dict(os.environ, PYTHONPATH=str(ROOT), DISPLAY="")
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "kiosk", f"ckpt={ckpt}" if ckpt else "game=pong",
                             "headless=true", "idle_seconds=0", "attract_agent=random", "log=k.log",
                             f"session_minutes={seconds / 4 / 60:.4f}"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples = []  # (seconds since start, RSS in MB)
    start = time.time()
    try:
        while time.time() - start < seconds and proc.poll() is None:
            samples.append((time.time() - start, _rss_mb(proc.pid)))
            time.sleep(1.0)
        ended_by_itself = proc.poll() is not None
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    assert not ended_by_itself, err[-2000:]
    assert proc.returncode == 0, err[-2000:]
    log = events(tmp_path / "k.log")
    baseline = next(mb for t, mb in samples if t >= min(60.0, seconds / 3))
    growth = samples[-1][1] - baseline
    sessions = named(log, "session-end")
    ticks = sum(int(s["ticks"]) for s in sessions)
    ran = (log[-1][0] - next(t for t, e, _ in log if e == "session-start")).total_seconds()
    print(f"\nsoak {'ckpt ' + ckpt if ckpt else 'pong'}: {ran:.0f} s, {ticks} ticks ({ticks / ran:.1f}/s), "
          f"{len(sessions)} sessions, "
          f"{sum(int(s['overruns']) for s in sessions)} overruns; RSS {baseline:.1f} MB at "
          f"{min(60.0, seconds / 3):.0f} s -> {samples[-1][1]:.1f} MB at the end ({growth:+.2f} MB), "
          f"max {max(mb for _, mb in samples):.1f} MB")
    assert named(log, "exit")[0]["reason"] == "signal"
    assert not named(log, "fault") and not named(log, "stall")
    assert not [r for r in named(log, "reset") if r["reason"] == "watchdog"]
    assert len(sessions) >= 4 and ticks > 0
    assert growth < 5.0
