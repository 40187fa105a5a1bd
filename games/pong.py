"""Pong: the player's paddle on the left against a speed-limited AI on the right.

Built for a world model to learn from pixels: bold sprites in distinct colours on a dark field (at 64x64 the
paddles are 3x12 px and the ball 4x4 px; every size scales with the resolution), a dashed centre line, and both
scores drawn with a built-in 3x5 pixel font. Positions are floats in pixels of the frame and are rounded only when
drawn. All randomness (serve direction and angle, the AI's aim) comes from the game's own generator, so a seed
and an action sequence fix every frame.

Controls: UP / DOWN move the paddle at a fixed speed; relative mouse motion ``dy`` moves it too (screen
convention: positive dy is downward). Both add up within a tick.
"""
from __future__ import annotations

import numpy as np

from games.data.actions import ActionSpace
from games.base import Game
from games.data.errors import InputError

# 3x5 bitmaps of the digits, one string of 15 bits per digit, row by row.
_FONT = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001010010010",
    "8": "111101111101111", "9": "111101111001111",
}
_GLYPHS = {ch: np.array([int(b) for b in bits], bool).reshape(5, 3) for ch, bits in _FONT.items()}

BACKGROUND = (12, 14, 32)
CENTRE_LINE = (70, 74, 110)
PLAYER = (40, 220, 255)  # cyan
OPPONENT = (255, 110, 40)  # orange
BALL = (255, 245, 90)  # yellow
PLAYER_SCORE = (30, 150, 185)  # the side's colour, dimmed so the score never reads as a sprite
OPPONENT_SCORE = (185, 85, 35)


def draw_text(frame: np.ndarray, text: str, x: int, y: int, scale: int, colour) -> None:
    """Draws digits of the 3x5 font into ``frame`` [H, W, 3] with the top-left corner at (x, y), clipped."""
    h, w = frame.shape[:2]
    for i, ch in enumerate(text):
        glyph = np.kron(_GLYPHS[ch], np.ones((scale, scale), bool))  # [5s, 3s]
        gx = x + i * 4 * scale
        ys, xs = np.nonzero(glyph)
        ys, xs = ys + y, xs + gx
        keep = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        frame[ys[keep], xs[keep]] = colour


def text_width(text: str, scale: int) -> int:
    return (4 * len(text) - 1) * scale


class Pong(Game):
    name = "pong"
    fps = 30
    default_bindings = {"UP": ("up", "w"), "DOWN": ("down", "s")}

    def __init__(self, width: int = 64, height: int = 64, max_score: int = 9, opponent_speed: float = 1.0,
                 serve_delay: int = 15):
        """``max_score``: a point past it starts a new match at 0-0 (so scores stay single digits);
        ``opponent_speed``: the AI paddle's top speed in pixels a tick at 64 px height (the player's is 2.0);
        ``serve_delay``: ticks the ball waits in the centre before each serve."""
        super().__init__(width, height)
        if max_score < 1:
            raise InputError(f"pong: max_score must be at least 1, got {max_score}")
        self.max_score, self.opponent_speed, self.serve_delay = int(max_score), float(opponent_speed), int(serve_delay)
        sx, sy = self.width / 64.0, self.height / 64.0
        self._sx, self._sy = sx, sy
        # Sprite sizes in pixels: bold at 64x64 and scaled with the resolution.
        self.paddle_w = max(3, round(3 * sx))
        self.paddle_h = max(12, round(12 * sy))
        self.ball_size = max(4, round(4 * min(sx, sy)))
        self.paddle_x = (max(2, round(3 * sx)), self.width - max(2, round(3 * sx)) - self.paddle_w)  # left edges
        self.font_scale = max(2, round(1.5 * self.height / 64))  # 6x10 px digits at 64 px height
        self._space = ActionSpace(keys=("UP", "DOWN"), mouse=True, mouse_scale=20.0)
        self.reset(0)

    @property
    def action_space(self) -> ActionSpace:
        return self._space

    # ---- read-only state for agents and tests (pixels of the frame, floats) ----
    @property
    def paddle_y(self) -> float:
        """Centre y of the player's paddle."""
        return float(self._paddles[0] + self.paddle_h / 2)

    @property
    def opponent_y(self) -> float:
        """Centre y of the opponent's paddle."""
        return float(self._paddles[1] + self.paddle_h / 2)

    @property
    def ball_pos(self) -> tuple[float, float]:
        """Centre (x, y) of the ball."""
        return float(self._ball[0] + self.ball_size / 2), float(self._ball[1] + self.ball_size / 2)

    @property
    def ball_vel(self) -> tuple[float, float]:
        """Ball velocity in pixels a tick; (0, 0) while it waits to be served."""
        return (0.0, 0.0) if self._wait > 0 else (float(self._vel[0]), float(self._vel[1]))

    @property
    def score(self) -> tuple[int, int]:
        """(player, opponent) points of the current match."""
        return self._score[0], self._score[1]

    # ---- simulation ----
    def reset(self, seed: int) -> np.ndarray:
        self.rng = np.random.default_rng(seed)
        self.t = 0
        self._score = [0, 0]
        self.returns = 0  # times the player's paddle hit the ball this episode
        self.points = [0, 0]  # points won this episode by (player, opponent), across matches
        top = (self.height - self.paddle_h) / 2
        self._paddles = np.array([top, top], np.float64)  # top y of (player, opponent)
        self._serve(toward=int(self.rng.integers(2)))
        return self.render()

    def _serve(self, toward: int) -> None:
        """Puts the ball in the centre; after ``serve_delay`` ticks it flies toward side ``toward`` (0 = player)."""
        self._ball = np.array([(self.width - self.ball_size) / 2, (self.height - self.ball_size) / 2])
        angle = self.rng.uniform(-0.6, 0.6)  # radians off the horizontal
        self._speed = 1.4  # pixels a tick at 64x64; grows with every paddle hit
        self._vel = self._velocity(angle, -1 if toward == 0 else 1)
        self._wait = self.serve_delay
        self._aim = self.rng.uniform(-0.35, 0.35) * self.paddle_h  # where on its paddle the AI tries to hit

    def _velocity(self, angle: float, direction: int) -> np.ndarray:
        return np.array([direction * self._speed * np.cos(angle) * self._sx, self._speed * np.sin(angle) * self._sy])

    def step(self, action) -> np.ndarray:
        action = self._space.validate(action)
        self.t += 1
        # Player: keys at a fixed speed plus the mouse (full deflection = 4 px a tick at 64 px height).
        move = 2.0 * (self._space.held(action, "DOWN") - self._space.held(action, "UP"))
        move += 4.0 * self._space.mouse_motion(action)[1]
        self._paddles[0] += move * self._sy
        # Opponent: follows the ball (plus its aim) while the ball comes at it, else drifts back to the middle.
        ball_cy = self._ball[1] + self.ball_size / 2
        coming = self._wait == 0 and self._vel[0] > 0 and self._ball[0] > self.width * 0.4  # reacts late
        target = ball_cy + self._aim if coming else self.height / 2
        error = target - (self._paddles[1] + self.paddle_h / 2)
        limit = self.opponent_speed * self._sy * (1.0 if coming else 0.5)
        self._paddles[1] += np.clip(error, -limit, limit)
        np.clip(self._paddles, 0, self.height - self.paddle_h, out=self._paddles)
        if self._wait > 0:
            self._wait -= 1
        else:
            self._move_ball()
        return self.render()

    def _move_ball(self) -> None:
        """One tick of ball flight: paddle hits (swept, so a fast ball cannot pass through), walls, points."""
        old = self._ball.copy()
        self._ball += self._vel
        bs = self.ball_size
        for side in (0, 1):
            # The face the ball can hit: the inner edge of each paddle.
            face = self.paddle_x[0] + self.paddle_w if side == 0 else self.paddle_x[1] - bs
            crossed = old[0] >= face > self._ball[0] if side == 0 else old[0] <= face < self._ball[0]
            if not crossed:
                continue
            frac = (old[0] - face) / (old[0] - self._ball[0])
            y = old[1] + frac * self._vel[1]
            top = self._paddles[side]
            if y + bs > top and y < top + self.paddle_h:
                # The angle of the return depends on where the ball met the paddle; each hit speeds it up.
                offset = (y + bs / 2 - (top + self.paddle_h / 2)) / ((self.paddle_h + bs) / 2)
                self._speed = min(self._speed * 1.06, 2.8)
                self._vel = self._velocity(np.clip(offset, -1, 1) * np.radians(55), 1 if side == 0 else -1)
                self._ball[:] = face, y
                if side == 0:
                    self.returns += 1
                else:
                    self._aim = self.rng.uniform(-0.35, 0.35) * self.paddle_h
        # Top and bottom walls reflect.
        if self._ball[1] < 0:
            self._ball[1], self._vel[1] = -self._ball[1], abs(self._vel[1])
        elif self._ball[1] > self.height - bs:
            self._ball[1], self._vel[1] = 2 * (self.height - bs) - self._ball[1], -abs(self._vel[1])
        # A ball fully past a side is a point for the other side; it is served toward the side that lost it.
        if self._ball[0] + bs < 0 or self._ball[0] > self.width:
            loser = 0 if self._ball[0] + bs < 0 else 1
            self._score[1 - loser] += 1
            self.points[1 - loser] += 1
            if self._score[1 - loser] > self.max_score:
                self._score = [0, 0]
            self._serve(toward=loser)

    # ---- drawing ----
    def render(self) -> np.ndarray:
        h, w = self.height, self.width
        frame = np.empty((h, w, 3), np.uint8)  # [H, W, 3]
        frame[:] = BACKGROUND
        # Dashed centre line, dashes of 4 px at 64 px height.
        dash = max(2, round(4 * self._sy))
        line_w = max(1, round(self._sx))
        cx = (w - line_w) // 2
        rows = (np.arange(h) // dash) % 2 == 0
        frame[rows, cx:cx + line_w] = CENTRE_LINE
        # Scores in the top quarters of each half, behind the sprites.
        s = self.font_scale
        sides = ((self._score[0], w // 4, PLAYER_SCORE), (self._score[1], 3 * w // 4, OPPONENT_SCORE))
        for value, centre, colour in sides:
            text = str(value)
            draw_text(frame, text, centre - text_width(text, s) // 2, s, s, colour)
        for side, colour in ((0, PLAYER), (1, OPPONENT)):
            top = int(round(self._paddles[side]))
            frame[top:top + self.paddle_h, self.paddle_x[side]:self.paddle_x[side] + self.paddle_w] = colour
        bx, by = (int(round(v)) for v in self._ball)
        bs = self.ball_size
        frame[max(by, 0):max(by + bs, 0), max(bx, 0):max(bx + bs, 0)] = BALL
        return frame
