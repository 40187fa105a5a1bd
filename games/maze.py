"""Maze: a first-person raycaster in a maze generated from the seed.

The map is a grid of cells (``grid[row, col]``, True = wall) of ``2 * rooms + 1`` cells a side: a perfect maze carved
by a recursive backtracker, then a fraction of the remaining inner walls opened to make loops, and a few 3x3 halls
with a pillar in the middle. Places are recognisable by landmarks: the walls of each quarter of the map have their
own muted colour, a few wall cells are painted in bright colours, a few carry doors, and coloured pillars stand in
the halls and in some dead ends (billboards, depth-tested against the walls).

Rendering casts one ray per screen column with a vectorised DDA (all columns step together), shades walls by
distance and by side (x faces brighter than y faces), and draws a checkered floor and a plain ceiling that both fade
with distance. The vertical field of view is fixed, so wider frames see more to the sides.

Coordinates: x = column, y = row, in cells; ``player_angle`` 0 faces +x and grows clockwise on the map (y points
down), so RIGHT and positive mouse dx increase it.
"""
from __future__ import annotations

import numpy as np

from games.data.actions import ActionSpace
from games.base import Game
from games.data.errors import InputError

MOVE_SPEED = 0.08  # cells a tick for W / S
STRAFE_SPEED = 0.06  # cells a tick for A / D
KEY_TURN = np.radians(5.0)  # a tick of LEFT / RIGHT
MOUSE_TURN = np.radians(10.0)  # a tick of full mouse deflection (mouse_scale pixels)
PLAYER_RADIUS = 0.2  # the player is a square of this half-size against walls, a circle against pillars
PILLAR_RADIUS = 0.18
PILLAR_HEIGHT = 0.8  # of the wall height

CEILING = np.array([52, 46, 70], np.float32)
FLOOR = (np.array([92, 78, 58], np.float32), np.array([74, 62, 46], np.float32))  # checker tiles
FOG = np.array([6, 6, 10], np.float32)
DOOR = np.array([128, 72, 30], np.float32)
QUARTER_WALLS = np.array([[118, 128, 150], [150, 140, 110], [110, 145, 120], [145, 115, 140]], np.float32)
LANDMARKS = np.array([[230, 40, 40], [40, 200, 60], [50, 110, 255], [255, 220, 40], [230, 60, 230],
                      [40, 220, 220]], np.float32)
PILLARS = np.array([[255, 60, 60], [60, 255, 90], [80, 140, 255], [255, 235, 60], [255, 90, 255], [255, 160, 40],
                    [240, 240, 240]], np.float32)


def generate_maze(rng: np.random.Generator, rooms: int, loops: float, halls: int):
    """A maze with loops: returns (grid [G, G] bool, pillar centres [P, 2] as (x, y), hall cells [K, 2] (row, col))."""
    g = 2 * rooms + 1
    grid = np.ones((g, g), bool)
    grid[1::2, 1::2] = False
    # Recursive backtracker over rooms (room (r, c) is cell (2r+1, 2c+1)), iterative to avoid recursion limits.
    seen = np.zeros((rooms, rooms), bool)
    stack = [(int(rng.integers(rooms)), int(rng.integers(rooms)))]
    seen[stack[0]] = True
    while stack:
        r, c = stack[-1]
        options = [(r + dr, c + dc) for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1))
                   if 0 <= r + dr < rooms and 0 <= c + dc < rooms and not seen[r + dr, c + dc]]
        if not options:
            stack.pop()
            continue
        nr, nc = options[rng.integers(len(options))]
        grid[r + nr + 1, c + nc + 1] = False  # the wall between the two rooms
        seen[nr, nc] = True
        stack.append((nr, nc))
    # Loops: open some of the inner walls that still separate two rooms.
    rr, cc = np.nonzero(grid)
    between = ((rr % 2) != (cc % 2)) & (rr > 0) & (cc > 0) & (rr < g - 1) & (cc < g - 1)
    candidates = np.stack([rr[between], cc[between]], 1)
    opened = rng.permutation(len(candidates))[:int(round(loops * len(candidates)))]
    grid[candidates[opened, 0], candidates[opened, 1]] = False
    # Halls: clear 3x3 blocks around inner wall posts; a pillar stands on the post.
    pillars, hall_cells = [], []
    posts = [(2 * i, 2 * j) for i in range(1, rooms) for j in range(1, rooms)]
    for k in rng.permutation(len(posts)):
        r, c = posts[k]
        if len(pillars) == halls:
            break
        if any(abs(r - hr) < 5 and abs(c - hc) < 5 for hr, hc in hall_cells):
            continue
        grid[r - 1:r + 2, c - 1:c + 2] = False
        hall_cells.append((r, c))
        pillars.append((c + 0.5, r + 0.5))
    # More pillars at the end of some dead ends.
    open_n = sum(np.roll(~grid, s, a) for s, a in ((1, 0), (-1, 0), (1, 1), (-1, 1)))
    dead = np.argwhere(~grid & (open_n == 1))
    for k in rng.permutation(len(dead))[:max(0, len(PILLARS) - 1 - halls)]:
        pillars.append((dead[k][1] + 0.5, dead[k][0] + 0.5))
    return grid, np.array(pillars, np.float64).reshape(-1, 2), np.array(hall_cells, int).reshape(-1, 2)


class Maze(Game):
    name = "maze"
    fps = 30
    default_bindings = {"W": ("w",), "A": ("a",), "S": ("s",), "D": ("d",), "LEFT": ("left",), "RIGHT": ("right",)}

    def __init__(self, width: int = 64, height: int = 64, rooms: int = 7, loops: float = 0.15, halls: int = 2):
        """``rooms``: rooms a side (the grid is 2 * rooms + 1 cells a side); ``loops``: fraction of the remaining
        inner walls opened after carving; ``halls``: 3x3 halls, each with a pillar in the middle."""
        super().__init__(width, height)
        if not 3 <= rooms <= 32:
            raise InputError(f"maze: rooms must be in 3..32, got {rooms}")
        if not 0.0 <= loops <= 1.0:
            raise InputError(f"maze: loops must be a fraction in [0, 1], got {loops}")
        self.rooms, self.loops, self.halls = int(rooms), float(loops), max(0, int(halls))
        self.focal = 0.75 * self.height  # pixels; fixes the vertical field of view
        # Per-column camera offsets and per-row distances of the floor / ceiling, fixed for a resolution.
        self._cam = ((np.arange(self.width) + 0.5) - self.width / 2) / self.focal  # [W] tan of the column's angle
        rows = np.arange(self.height) + 0.5 - self.height / 2  # [H] pixels from the horizon
        self._rows = rows[:, None].astype(np.float32)  # [H, 1]
        self._row_dist = (0.5 * self.focal / np.maximum(np.abs(rows), 0.5))[:, None]  # [H, 1] cells
        self._space = ActionSpace(keys=("W", "A", "S", "D", "LEFT", "RIGHT"), mouse=True, mouse_scale=20.0)
        self.reset(0)

    @property
    def action_space(self) -> ActionSpace:
        return self._space

    # ---- read-only state ----
    @property
    def player_pos(self) -> tuple[float, float]:
        return float(self._pos[0]), float(self._pos[1])

    @property
    def player_angle(self) -> float:
        """Radians in [-pi, pi): 0 faces +x, positive turns clockwise on the map (to the right)."""
        return float((self._angle + np.pi) % (2 * np.pi) - np.pi)

    @property
    def cell(self) -> tuple[int, int]:
        """(row, col) of the cell the player stands in."""
        return int(self._pos[1]), int(self._pos[0])

    @property
    def grid(self) -> np.ndarray:
        """[G, G] bool, True = wall (read-only)."""
        view = self._grid.view()
        view.flags.writeable = False
        return view

    @property
    def pillars(self) -> np.ndarray:
        """[P, 2] pillar centres as (x, y)."""
        return self._pillars.copy()

    # ---- simulation ----
    def reset(self, seed: int) -> np.ndarray:
        self.rng = np.random.default_rng(seed)
        self.t = 0
        self._grid, self._pillars, self._halls = generate_maze(self.rng, self.rooms, self.loops, self.halls)
        self._paint_walls()
        # Start in a room cell without a pillar, facing one of its open neighbours.
        rooms = [(r, c) for r in range(1, len(self._grid), 2) for c in range(1, len(self._grid), 2)
                 if not any(np.hypot(px - c - 0.5, py - r - 0.5) < 0.5 for px, py in self._pillars)]
        r, c = rooms[self.rng.integers(len(rooms))]
        self._pos = np.array([c + 0.5, r + 0.5])
        exits = [a for a, (dr, dc) in zip((0.0, np.pi / 2, np.pi, -np.pi / 2), ((0, 1), (1, 0), (0, -1), (-1, 0)))
                 if not self._grid[r + dr, c + dc]]
        self._angle = float(exits[self.rng.integers(len(exits))])
        return self.render()

    def _paint_walls(self) -> None:
        """Wall colours [G, G, 3]: a muted colour per quarter of the map, a few bright cells, a few doors."""
        g = len(self._grid)
        quarter = (np.arange(g)[:, None] >= g // 2) * 2 + (np.arange(g)[None, :] >= g // 2)  # [G, G] in 0..3
        self._wall_rgb = QUARTER_WALLS[quarter].copy()
        # Only walls that face an open cell can be seen.
        open_n = sum(np.roll(~self._grid, s, a) for s, a in ((1, 0), (-1, 0), (1, 1), (-1, 1)))
        visible = np.argwhere(self._grid & (open_n > 0))
        pick = self.rng.permutation(len(visible))
        for i, k in enumerate(pick[:len(LANDMARKS)]):
            self._wall_rgb[tuple(visible[k])] = LANDMARKS[i]
        self._door = np.zeros_like(self._grid)
        doors = visible[pick[len(LANDMARKS):len(LANDMARKS) + 6]]
        self._door[doors[:, 0], doors[:, 1]] = True

    def step(self, action) -> np.ndarray:
        action = self._space.validate(action)
        self.t += 1
        held = {k: float(self._space.held(action, k)) for k in self._space.keys}
        dx, _ = self._space.mouse_motion(action)  # vertical mouse motion is ignored
        self._angle += KEY_TURN * (held["RIGHT"] - held["LEFT"]) + MOUSE_TURN * dx
        forward = np.array([np.cos(self._angle), np.sin(self._angle)])
        right = np.array([-forward[1], forward[0]])
        move = MOVE_SPEED * (held["W"] - held["S"]) * forward + STRAFE_SPEED * (held["D"] - held["A"]) * right
        # Axis by axis, so that the player slides along a wall instead of sticking to it.
        for axis in (0, 1):
            trial = self._pos.copy()
            trial[axis] += move[axis]
            if self._free(trial):
                self._pos = trial
        return self.render()

    def _free(self, pos) -> bool:
        """Whether the player fits at ``pos``: its square clear of walls and its circle clear of pillars."""
        x, y = pos
        for cx in (x - PLAYER_RADIUS, x + PLAYER_RADIUS):
            for cy in (y - PLAYER_RADIUS, y + PLAYER_RADIUS):
                if self._grid[int(cy), int(cx)]:
                    return False
        gap = np.hypot(self._pillars[:, 0] - x, self._pillars[:, 1] - y)
        return not np.any(gap < PLAYER_RADIUS + PILLAR_RADIUS)

    # ---- rendering ----
    def _cast(self, ray: np.ndarray):
        """Vectorised DDA: for rays [W, 2] from the player, the perpendicular distance [W], the side hit [W] (0 = an
        x face, 1 = a y face), the cell hit [W] (row, col) and the horizontal texture coordinate [W] in [0, 1)."""
        px, py = self._pos
        cell = np.floor(self._pos).astype(np.int64)[None].repeat(len(ray), 0)  # [W, 2] (x, y)
        with np.errstate(divide="ignore"):
            delta = np.abs(1.0 / ray)  # [W, 2] ray length between two x (resp. y) grid lines
        step = np.where(ray < 0, -1, 1)
        side_dist = np.where(ray < 0, self._pos - cell, cell + 1 - self._pos) * delta  # [W, 2]
        hit = np.zeros(len(ray), bool)
        side = np.zeros(len(ray), np.int64)
        cols = np.arange(len(ray))
        while not hit.all():
            side = np.where(hit, side, (side_dist[:, 1] < side_dist[:, 0]).astype(np.int64))
            advance = ~hit
            cell[cols[advance], side[advance]] += step[cols[advance], side[advance]]
            side_dist[cols[advance], side[advance]] += delta[cols[advance], side[advance]]
            hit |= self._grid[cell[:, 1], cell[:, 0]]
        dist = side_dist[cols, side] - delta[cols, side]
        # Where along the face the ray hit, flipped so that textures never mirror.
        along = np.where(side == 0, py + dist * ray[:, 1], px + dist * ray[:, 0])
        u = along - np.floor(along)
        u = np.where((side == 0) & (ray[:, 0] > 0) | (side == 1) & (ray[:, 1] < 0), 1 - u, u)
        return dist, side, cell[:, ::-1], u

    def render(self) -> np.ndarray:
        h = self.height
        forward = np.array([np.cos(self._angle), np.sin(self._angle)])
        right = np.array([-forward[1], forward[0]])
        ray = forward[None] + self._cam[:, None] * right[None]  # [W, 2], unit length along ``forward``
        dist, side, hit_cell, u = self._cast(ray)
        dist = np.maximum(dist, 1e-3)
        # Floor (checkered by cell) and ceiling, from each pixel's distance along the view direction.
        fx = self._pos[0] + self._row_dist * ray[None, :, 0]  # [H, W] world x of the floor pixel
        fy = self._pos[1] + self._row_dist * ray[None, :, 1]
        checker = ((np.floor(fx) + np.floor(fy)) % 2)[..., None]  # [H, W, 1]
        below = (self._rows > 0)[..., None]  # [H, 1, 1]
        colour = np.where(below, np.where(checker > 0, FLOOR[1], FLOOR[0]), CEILING)  # [H, W, 3]
        fog = np.exp(-0.16 * self._row_dist)[..., None]  # [H, 1, 1]
        colour = colour * fog + FOG * (1 - fog)
        # Walls: a slice per column, shaded by side and distance, with seams at cell edges, a dark baseboard, doors.
        half = 0.5 * self.focal / dist  # [W] half the slice height in pixels
        v = (self._rows + half) / (2 * half)  # [H, W] 0 at the top of the slice, 1 at the bottom
        wall = (v >= 0) & (v < 1)
        rgb = self._wall_rgb[hit_cell[:, 0], hit_cell[:, 1]][None].repeat(h, 0)  # [H, W, 3]
        door = self._door[hit_cell[:, 0], hit_cell[:, 1]] & (np.abs(u - 0.5) < 0.24)  # [W]
        in_door = door[None] & (v > 0.18)
        rgb[in_door] = DOOR
        rgb[door[None] & (v > 0.18) & (np.abs(u - 0.5) > 0.19)[None]] *= 0.55  # door frame
        rgb[(v > 0.9) | ((u < 0.05) | (u > 0.95))[None]] *= 0.6
        shade = np.where(side == 1, 0.72, 1.0) * np.exp(-0.16 * dist)  # [W]
        wall_rgb = rgb * shade[None, :, None] + FOG * (1 - np.exp(-0.16 * dist))[None, :, None]
        colour = np.where(wall[..., None], wall_rgb, colour)
        self._draw_pillars(colour, forward, right, dist)
        return np.clip(colour, 0, 255).astype(np.uint8)  # [H, W, 3]

    def _draw_pillars(self, colour: np.ndarray, forward, right, zbuffer) -> None:
        """Billboards of the pillars into ``colour`` [H, W, 3], far to near, visible where nearer than the walls."""
        rel = self._pillars - self._pos[None]  # [P, 2]
        depth, lateral = rel @ forward, rel @ right
        xs = np.arange(self.width) + 0.5
        for i in np.argsort(-depth):
            if depth[i] < 0.15:
                continue
            centre = self.width / 2 + self.focal * lateral[i] / depth[i]
            half_w = self.focal * PILLAR_RADIUS / depth[i]
            s = (xs - centre) / half_w  # [W] -1..1 across the pillar
            cols = (np.abs(s) < 1) & (depth[i] < zbuffer)
            if not cols.any():
                continue
            bottom = 0.5 * self.focal / depth[i]
            top = bottom - PILLAR_HEIGHT * self.focal / depth[i]
            rows = (self._rows[:, 0] >= top) & (self._rows[:, 0] < bottom)  # [H]
            # Round shading across the width, a bright cap on top; fades with distance like the walls.
            light = 0.45 + 0.55 * np.sqrt(np.clip(1 - s[cols] ** 2, 0, 1))  # [w]
            cap = (self._rows[rows, 0] < top + 0.12 * (bottom - top))[:, None, None]
            rgb = PILLARS[i % len(PILLARS)] * light[None, :, None]
            rgb = np.where(cap, np.minimum(rgb * 1.4 + 40, 255), rgb)
            fog = np.exp(-0.16 * depth[i])
            colour[np.ix_(rows, cols)] = rgb * fog + FOG * (1 - fog)
