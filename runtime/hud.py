"""What the player sees over the game: the HUD (fps, tick time, key-to-frame latency, held keys, overruns), the
help (the controls) and the kiosk's banner (an invitation to play).

Both are lines of text that pygame.font renders into an RGBA image; the display blends it over the frame's picture
in its own GL context (a window or EGL), so the frames a source produces (recordings, videos, screenshots) stay
clean. ``PlayMeter`` measures the numbers; it owns no pixels.
"""
from __future__ import annotations

import os
from collections import deque

import numpy as np

from runtime.input import CONTROLS

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")


class PlayMeter:
    """Ticks shown per second, and key-to-frame latency: the time from the input poll that read an action to the
    flip of the first frame it affects, ``latency_ticks`` frames later (1 for a game: the next frame)."""

    def __init__(self, latency_ticks: int = 1):
        self.latency_ticks = max(1, int(latency_ticks))
        self.shown_at: deque[float] = deque(maxlen=240)  # times of recent flips
        self.latency_ms: deque[float] = deque(maxlen=60)
        self._polls: deque[float] = deque(maxlen=self.latency_ticks)  # times of the polls still in flight

    def restart(self) -> None:
        """The source was reset: actions polled before it affect no frame after it."""
        self._polls.clear()

    def polled(self, now: float) -> None:
        self._polls.append(now)

    def shown(self, now: float, stepped: bool) -> None:
        """A frame was flipped at ``now``; ``stepped``: it is a new frame of the source (not a paused repeat)."""
        self.shown_at.append(now)
        if stepped and len(self._polls) == self.latency_ticks:
            self.latency_ms.append((now - self._polls[0]) * 1000.0)

    @property
    def fps(self) -> float:
        """Frames shown per second over about the last second."""
        if len(self.shown_at) < 2:
            return 0.0
        recent = [t for t in self.shown_at if t >= self.shown_at[-1] - 1.0]
        if len(recent) < 2:
            recent = list(self.shown_at)[-2:]
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-9)


def median(values) -> float:
    values = sorted(values)
    return values[len(values) // 2] if values else 0.0


def format_hud(meter: PlayMeter, tick_ms, overruns: int, overran: bool, held: list[str], paused: bool) -> list[str]:
    """The HUD's text: measured numbers, the keys the source received, and the overrun state."""
    ticks = meter.latency_ticks
    lines = [f"{meter.fps:5.1f} fps   tick {median(list(tick_ms)[-30:]):5.1f} ms",
             f"latency {median(meter.latency_ms):5.1f} ms ({ticks} tick{'s' if ticks > 1 else ''})",
             "keys " + (" ".join(held) if held else "-"),
             f"overruns {overruns}" + ("   OVERRUN" if overran else "")]
    if paused:
        lines.append("PAUSED")
    return lines


def help_lines(action_space, bindings: dict[int, str], controls) -> list:
    """The game's keys with the pygame keys bound to them, then the play controls (rows of two columns)."""
    import pygame

    lines: list = ["game keys"]
    for key in action_space.keys:
        names = [pygame.key.name(code) for code, k in bindings.items() if k == key]
        lines.append((key, ", ".join(names) or "(not bound)"))
    if action_space.mouse:
        lines.append(("mouse", " ".join(("motion",) + action_space.buttons) + " (click to grab)"))
    lines.append("play controls")
    for control, does in CONTROLS.items():
        if controls.keys.get(control):
            lines.append((", ".join(controls.keys[control]), does))
    return lines


class TextPanel:
    """Lines of text -> an RGBA image: light text on a translucent dark panel, re-rendered only when it changes."""

    def __init__(self, size: int = 16):
        import pygame

        pygame.font.init()
        self.font = pygame.font.Font(None, size)  # pygame's bundled default font: no files, works without a display
        self._lines: list[str] | None = None
        self._image: np.ndarray | None = None

    def render(self, lines: list) -> np.ndarray:
        """uint8 [h, w, 4], row 0 at the top. A line is a string, or a tuple of cells set in aligned columns
        (indented under the string lines, which read as headings)."""
        import pygame

        if lines == self._lines:
            return self._image
        pad, step = 4, self.font.get_linesize()
        gap = self.font.size("  ")[0]
        rows = [[self.font.render(c, True, (240, 240, 240)) for c in ((line,) if isinstance(line, str) else line)]
                for line in lines]
        columns = max(len(r) for r in rows)
        widths = [max((r[i].get_width() for r in rows if len(r) > 1 and len(r) > i), default=0)
                  for i in range(columns)]
        indent = gap if columns > 1 else 0
        w = max([r[0].get_width() for r in rows if len(r) == 1] + [indent + sum(widths) + gap * (columns - 1)])
        panel = pygame.Surface((w + 2 * pad, step * len(rows) + 2 * pad), pygame.SRCALPHA)
        panel.fill((0, 0, 0, 170))
        for i, row in enumerate(rows):
            x = pad + (indent if len(row) > 1 else 0)
            for cell, cell_w in zip(row, widths):
                panel.blit(cell, (x, pad + i * step))
                x += cell_w + gap
        rgba = np.frombuffer(pygame.image.tobytes(panel, "RGBA"), np.uint8)
        self._lines, self._image = list(lines), rgba.reshape(panel.get_height(), panel.get_width(), 4)
        return self._image


class Banner:
    """One line of large text for the middle of the picture, blinking: the kiosk's invitation to play.

    The font is the largest (up to ``max_width // 8``) at which the panel fits in ``max_width`` pixels (the width
    of the frame's picture on the screen); ``blink_s`` is the blink period (0: steady), on for two thirds of it.
    """

    def __init__(self, text: str, max_width: int, blink_s: float = 1.0):
        import pygame

        pygame.font.init()
        size = max(12, max_width // 8)
        while size > 12 and pygame.font.Font(None, size).size(text)[0] + 8 > 0.9 * max_width:
            size -= 2
        self.text, self.blink_s = text, float(blink_s)
        self.panel = TextPanel(size)

    def image(self, since: float, now: float) -> np.ndarray | None:
        """The banner shown ``now`` (RGBA) for a banner up since ``since`` (seconds), or None while it blinks off."""
        if self.blink_s > 0 and (now - since) % self.blink_s >= self.blink_s * 2 / 3:
            return None
        return self.panel.render([self.text])
