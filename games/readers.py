"""State readers: a game's state read back from its pixels, so that a generated frame is scored on what it shows
(where the ball is, what the score says, how far the wall is) and not only on how close its pixels are.

PSNR can be fooled both ways: a sharp frame with the ball in the wrong place scores well, a blurred frame with
everything in the right place scores badly. A reader knows how its game draws (the colours, the sprite sizes, the
font, the raycaster's horizon) and reads the same quantities from the real frame and from the generated one;
``compare`` turns the two readings into errors and a verdict, ``correct``. ``worldmodel.eval.state`` averages them
by horizon.

Readers take any uint8 frame [H, W, 3] of the game's size, blurred or nonsense included: what they cannot find is
None (a sprite, a digit) or NaN (a wall's colour), never an exception.

- ``PongReader``: the centre row of each paddle and the centre of the ball, as the centre of mass of their colour
  over the background (a blur spreads a sprite but keeps its mass and its centre), and the two score digits where
  render() draws them: each 3x5 cell's ink (pixels covered by a sprite, e.g. the ball, left out) against the font's
  glyphs, the best by correlation if it wins by a margin.
- ``MazeReader``: per column, the wall slice's height and mean colour. The raycaster draws every slice centred on
  the horizon, and the ceiling and floor of each row in a colour known from the row alone (fogged by its distance),
  so a slice is the run of rows about the horizon that is not the ceiling or floor of its row: the symmetric run
  that best separates the two, found for all columns at once. A slice's height is ``focal / distance``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from games.maze import CEILING, FLOOR, FOG, Maze
from games.pong import _GLYPHS, BACKGROUND, BALL, OPPONENT, OPPONENT_SCORE, PLAYER, PLAYER_SCORE, Pong, text_width

_DIGITS = np.stack([_GLYPHS[str(d)] for d in range(10)]).astype(np.float32)  # [10, 5, 3] the font's digits


def between(pixels: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where ``pixels`` [..., 3] sit on the colour segment a -> b (``a``, ``b`` broadcast against them): the
    fraction t in [0, 1] toward b, and the RGB distance to the segment (a blur of the two colours lies on it)."""
    x, a, b = pixels.astype(np.float32), np.asarray(a, np.float32), np.asarray(b, np.float32)
    axis = b - a
    t = np.clip(((x - a) * axis).sum(-1) / np.maximum((axis * axis).sum(-1), 1e-6), 0, 1)
    return t, np.linalg.norm(x - a - t[..., None] * axis, axis=-1)


def presence(pixels: np.ndarray, colour, off_scale: float = 80.0) -> np.ndarray:
    """How much of ``colour`` each pixel [..., 3] holds over pong's background, in [0, 1]: its place on the segment
    from the background to the colour (so a blurred sprite keeps its mass, and its centre), less a tenth so that a
    tinted background adds up to nothing, faded out for pixels off that segment (another sprite)."""
    t, off = between(pixels, BACKGROUND, colour)
    return np.clip((t - 0.1) / 0.9, 0, 1) * np.clip(1 - off / off_scale, 0, 1)


# ---- Pong ------------------------------------------------------------------------------------------------------------
@dataclass
class PongState:
    player_y: float | None  # centre row of the left paddle
    opponent_y: float | None  # centre row of the right paddle
    ball: tuple[float, float] | None  # centre (x, y) of the ball
    score: tuple[int | None, int | None]  # (player, opponent) digits


class PongReader:
    """Reads pong's paddles, ball and score from a frame drawn by ``games.pong.Pong.render``."""
    game = "pong"
    ball_ok_px = 3.0  # a generated ball this close to the real one is in the right place

    def __init__(self, width: int = 64, height: int = 64):
        g = Pong(width=width, height=height)
        self.width, self.height = width, height
        self.spread = 2  # px a blur may spread a sprite by: its mass is gathered that far around it
        self.paddle_cols = [slice(max(x - self.spread, 0), x + g.paddle_w + self.spread) for x in g.paddle_x]
        self.paddle_h, self.paddle_w, self.ball_size, self.font = g.paddle_h, g.paddle_w, g.ball_size, g.font_scale
        s = self.font
        self.digit_x = [centre - text_width("0", s) // 2 for centre in (width // 4, 3 * width // 4)]  # as render()
        self.digit_y = s
        self.miss = height / 2  # px: a sprite seen in one frame and not in the other is this far off

    def paddle_y(self, frame: np.ndarray, side: int) -> float | None:
        """Centre row of the paddle of ``side`` (0: the player's, on the left), or None if it is not there."""
        ink = presence(frame[:, self.paddle_cols[side]], PLAYER if side == 0 else OPPONENT).sum(1)  # [H]
        span = self.paddle_h + 2 * self.spread
        window = np.convolve(ink, np.ones(span), mode="valid")  # [H - span + 1]
        top = int(window.argmax())
        if window[top] < 0.5 * self.paddle_h * self.paddle_w:
            return None
        at = np.arange(top, top + span)
        return float((ink[at] * at).sum() / ink[at].sum() + 0.5)

    def ball(self, frame: np.ndarray) -> tuple[float, float] | None:
        """Centre (x, y) of the ball, or None if it is not there."""
        span = self.ball_size + 2 * self.spread
        ink = presence(frame, BALL)  # [H, W]
        box = np.lib.stride_tricks.sliding_window_view(ink, (span, span)).sum((-2, -1))  # [H - span + 1, W - span + 1]
        y0, x0 = np.unravel_index(int(box.argmax()), box.shape)
        if box[y0, x0] < 0.5 * self.ball_size ** 2:
            return None
        rows, cols = np.mgrid[y0:y0 + span, x0:x0 + span]
        patch = ink[y0:y0 + span, x0:x0 + span]
        return float((patch * cols).sum() / patch.sum() + 0.5), float((patch * rows).sum() / patch.sum() + 0.5)

    def digit(self, frame: np.ndarray, side: int) -> int | None:
        """The score digit of ``side``: the font's glyph closest to the digit's 5x3 cells, or None when none is
        close or the runner-up is nearly as close (a blur between two digits, or the telling cell hidden)."""
        s, x, y = self.font, self.digit_x[side], self.digit_y
        patch = frame[y:y + 5 * s, x:x + 3 * s]  # [5s, 3s, 3]
        if patch.shape[:2] != (5 * s, 3 * s):
            return None
        ink, off = between(patch, BACKGROUND, PLAYER_SCORE if side == 0 else OPPONENT_SCORE)
        seen = (off < 60).astype(np.float32)  # pixels neither background nor ink are covered by a sprite
        cell_seen = seen.reshape(5, s, 3, s).sum((1, 3))  # [5, 3]
        cells = (ink * seen).reshape(5, s, 3, s).sum((1, 3)) / np.maximum(cell_seen, 1)
        known = cell_seen.ravel() > 0
        x, glyphs = cells.ravel()[known], _DIGITS.reshape(10, -1)[:, known]  # [n], [10, n]
        if known.sum() < 12 or np.ptp(x) < 0.25:  # too much hidden, or no digit drawn
            return None
        # Correlation: a blur lowers the contrast of the cells and bleeds ink into the holes, but the digit's
        # shape still matches its own glyph best.
        x, glyphs = x - x.mean(), glyphs - glyphs.mean(1, keepdims=True)
        corr = glyphs @ x / np.maximum(np.linalg.norm(glyphs, axis=1) * np.linalg.norm(x), 1e-6)  # [10]
        second, best = np.sort(corr)[-2:]
        if best < 0.5 or best - second < 0.05:  # two digits differ by one cell: corr 0.83 at the closest
            return None
        return int(corr.argmax())

    def read(self, frame: np.ndarray) -> PongState:
        frame = np.asarray(frame)
        return PongState(self.paddle_y(frame, 0), self.paddle_y(frame, 1), self.ball(frame),
                         (self.digit(frame, 0), self.digit(frame, 1)))

    def describe(self, frame: np.ndarray) -> dict:
        """What a long session should keep showing, read from one frame: both paddles, the ball (not always in
        play: between points it is gone), both score digits."""
        st = self.read(frame)
        return {"paddles_seen": st.player_y is not None and st.opponent_y is not None, "ball_seen": st.ball is not None,
                "score_read": None not in st.score}

    def _off(self, a, b) -> float:
        """Pixels between two readings of a position (rows, or (x, y)), ``miss`` if only one was found."""
        if a is None or b is None:
            return 0.0 if a is b else self.miss
        return float(np.linalg.norm(np.subtract(a, b)))

    def compare(self, real: PongState, generated: PongState) -> dict:
        """``ball_error`` (px), ``paddle_error`` (px, mean of both paddles), ``score_ok`` (both digits equal),
        ``ball_ok`` (both absent, or within ``ball_ok_px``) and ``correct`` (score_ok and ball_ok). A sprite found in
        one frame and not in the other is ``miss`` px off (half the frame's height, about a guess's error)."""
        ball = self._off(real.ball, generated.ball)
        paddle = 0.5 * (self._off(real.player_y, generated.player_y) + self._off(real.opponent_y,
                                                                                 generated.opponent_y))
        score_ok = real.score == generated.score
        ball_ok = (real.ball is None and generated.ball is None) or ball <= self.ball_ok_px
        return {"ball_error": ball, "paddle_error": paddle, "score_ok": score_ok, "ball_ok": ball_ok,
                "correct": score_ok and ball_ok}


# ---- Maze ------------------------------------------------------------------------------------------------------------
_FOG_DENSITY = 0.16  # per cell: Maze.render fades everything by exp(-0.16 * distance) toward FOG


@dataclass
class MazeState:
    height: np.ndarray  # [W] rows of the wall slice, centred on the horizon (focal / distance, at most H)
    colour: np.ndarray  # [W, 3] mean RGB of the slice; NaN where no wall was found


class MazeReader:
    """Reads, per column, the wall slice of a frame drawn by ``games.maze.Maze.render``."""
    game = "maze"
    height_ok_px = 2.0  # a frame is correct when its slices are this close in height on average ...
    colour_ok = 30.0  # ... and this close in colour (RGB distance; the two faces of a near wall differ by ~50)

    def __init__(self, width: int = 64, height: int = 64):
        g = Maze(width=width, height=height)
        self.width, self.height = width, height
        self.half = height // 2  # rows above the horizon; the slice spans rows half - k .. half + k - 1
        # The ceiling and floor colour of each row, as render() draws them: fogged by the row's distance.
        fog = np.exp(-_FOG_DENSITY * g._row_dist)  # [H, 1]
        below = g._rows > 0  # [H, 1]
        tiles = [np.where(below, FLOOR[i], CEILING) * fog + FOG * (1 - fog) for i in (0, 1)]
        self.surface = (tiles[0][:, None], tiles[1][:, None])  # two [H, 1, 3]: a row's floor is either tile
        ring = np.arange(height) - self.half
        self.ring = np.where(ring < 0, -ring - 1, ring)[:, None]  # [H, 1] rows away from the horizon
        self.miss_rgb = 255.0  # a slice found in one frame and not in the other is this far off in colour

    def read(self, frame: np.ndarray) -> MazeState:
        frame = np.asarray(frame).astype(np.float32)  # [H, W, 3]
        _, off = between(frame, *self.surface)  # [H, W] RGB distance to the row's ceiling or floor
        wall = np.clip((off - 6.0) / 12.0, 0, 1)  # [H, W] 0: surely ceiling / floor, 1: surely not
        h = self.half
        k = np.zeros(frame.shape[1], int)  # [W] rows of the slice on each side of the horizon
        for side in (wall[h - 1::-1], wall[h:2 * h]):  # [h, W] rows going up, rows going down from the horizon
            # The best k rows: every row inside should be wall (1), every row outside ceiling or floor (0).
            gain = np.concatenate([np.zeros((1, side.shape[1])), np.cumsum(2 * side - 1, 0)])  # [h + 1, W]
            # Parts of a wall pass for the surface (the dark baseboard for the floor, a dark seam for the ceiling)
            # more often than the other way round: so the taller reading of the two halves is the slice.
            k = np.maximum(k, gain.argmax(0))
        inside = self.ring < k[None]  # [H, W]
        n = inside.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            colour = (frame * inside[..., None]).sum(0) / n[:, None]  # [W, 3], NaN where k = 0
        return MazeState(2.0 * k, colour)

    def describe(self, frame: np.ndarray) -> dict:
        """What a long session should keep showing, read from one frame: whether a wall fills the whole view (every
        slice 60 rows or more of 64: the real game shows it when the player faces a wall; the maze students' failure
        state is a view that stays so), and whether any ceiling and floor show at the horizon (a corridor)."""
        h = self.read(frame).height
        return {"wall_fills_view": bool((h >= 0.94 * self.height).all()),
                "corridor_seen": bool((h <= 0.5 * self.height).any())}

    def compare(self, real: MazeState, generated: MazeState) -> dict:
        """``height_error`` (px, mean over columns), ``colour_error`` (RGB distance, mean over columns; ``miss_rgb``
        where only one frame has a slice), ``correct`` (within ``height_ok_px`` and ``colour_ok``)."""
        height = float(np.abs(real.height - generated.height).mean())
        gap = np.linalg.norm(real.colour - generated.colour, axis=-1)  # [W]
        one = np.isnan(real.colour[:, 0]) != np.isnan(generated.colour[:, 0])
        colour = float(np.where(one, self.miss_rgb, np.nan_to_num(gap)).mean())
        return {"height_error": height, "colour_error": colour,
                "correct": height <= self.height_ok_px and colour <= self.colour_ok}


READERS = {"pong": PongReader, "maze": MazeReader}


def reader_for(game: str, width: int = 64, height: int = 64):
    """The state reader of the game called ``game`` at ``width`` x ``height`` pixels, or None if it has none."""
    return READERS[game](width=width, height=height) if game in READERS else None
