"""Attention over frame tokens: rotary positions over (time, y, x), frame-level masks, and cached context.

Positions. Each head's channels are split into three rotary groups: time, y, x. Spatial rotation is fixed (a frame's
grid never changes), time rotation uses positions *relative to the current layout* given by the caller, so that
positions never grow with the length of a session. Keys of cached frames are stored with their spatial rotation
but **without** time rotation, and rotated for the current layout at attention time: this is the re-indexing that
lets the attention sink always sit just before the recent frames (Rolling Forcing, Sec. 3.2).

Masks are written per frame (``[T_query, T_key]`` booleans, True = may attend) and expanded to tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _rope_freqs(n: int, theta: float) -> torch.Tensor:
    """n/2 rotation frequencies for a rotary group of n channels."""
    return 1.0 / theta ** (torch.arange(0, n, 2, dtype=torch.float64) / n)


def rope_angles(pos: torch.Tensor, n: int, theta: float) -> torch.Tensor:
    """Rotation angles [len(pos), n/2] of positions ``pos`` (float or int) for a rotary group of n channels."""
    return pos.to(torch.float64)[:, None] * _rope_freqs(n, theta).to(pos.device)[None]


def rotate(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (x[..., 2i], x[..., 2i+1]) of x [..., L, D] by the unit complex numbers table [L, D/2]."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(pairs * table).flatten(-2).to(x.dtype)


@dataclass(frozen=True)
class RopeLayout:
    """How a head's channels split into (time, y, x) rotary groups, and the fixed spatial grid.

    A rotation table is a complex tensor [tokens, head_dim/2]: one unit complex number per channel pair. A pair
    of a group that should not turn (space for cached keys, time for keys about to be cached) gets 1."""
    head_dim: int
    grid_h: int  # tokens per frame vertically
    grid_w: int  # tokens per frame horizontally
    theta_time: float = 1000.0
    theta_space: float = 100.0

    @property
    def split(self) -> tuple[int, int, int]:
        """Channels of the time, y and x groups (each even; time gets what the space groups leave)."""
        space = (self.head_dim // 3) // 2 * 2
        return self.head_dim - 2 * space, space, space

    @property
    def n_tokens(self) -> int:
        return self.grid_h * self.grid_w

    def _space_angles(self, device) -> torch.Tensor:
        """[N, (ny + nx)/2] angles of the N tokens of one frame (row-major)."""
        _, ny, nx = self.split
        ys = torch.arange(self.grid_h, device=device).repeat_interleave(self.grid_w)
        xs = torch.arange(self.grid_w, device=device).repeat(self.grid_h)
        return torch.cat([rope_angles(ys, ny, self.theta_space), rope_angles(xs, nx, self.theta_space)], -1)

    def table(self, frame_pos: torch.Tensor | None, n_frames: int, space: bool = True, device=None) -> torch.Tensor:
        """Rotation table of ``n_frames`` frames' tokens: time by ``frame_pos`` [T] (None: no time turn), and
        the frame's grid position unless ``space`` is False."""
        nt, ny, nx = self.split
        device = frame_pos.device if frame_pos is not None else device
        N = self.n_tokens
        if frame_pos is None:
            time = torch.zeros(n_frames * N, nt // 2, dtype=torch.float64, device=device)
        else:
            time = rope_angles(frame_pos.repeat_interleave(N), nt, self.theta_time)
        if space:
            sp = self._space_angles(time.device).repeat(n_frames, 1)
        else:
            sp = torch.zeros(n_frames * N, (ny + nx) // 2, dtype=torch.float64, device=time.device)
        return torch.polar(torch.ones_like(time[:, :1]).expand(-1, (nt + ny + nx) // 2).float(),
                           torch.cat([time, sp], -1).float())


# ---------------------------------------------------------------------------------------------------------------
# Frame-level masks

def causal_mask(n_frames: int, device=None) -> torch.Tensor:
    """Block-causal: frame i attends to frames 0..i. [T, T]"""
    return torch.ones(n_frames, n_frames, dtype=torch.bool, device=device).tril()


def bidirectional_mask(n_frames: int, device=None) -> torch.Tensor:
    """Every frame attends to every frame of the clip. [T, T]"""
    return torch.ones(n_frames, n_frames, dtype=torch.bool, device=device)


def expand_mask(frame_mask: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """[Tq, Tk] frame mask -> [Tq*N, Tk*N] token mask."""
    return frame_mask.repeat_interleave(n_tokens, 0).repeat_interleave(n_tokens, 1)


@dataclass
class LayerContext:
    """Cached keys/values of context frames for one layer: spatially rotated, time *not* rotated.

    k, v: [B, heads, Tc*N, head_dim]. ``pos`` [Tc]: the frames' time positions in the current layout.
    """
    k: torch.Tensor
    v: torch.Tensor
    pos: torch.Tensor


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """Scaled dot-product attention; q [B, H, Tq*N, D], k/v [B, H, Tk*N, D]; token_mask [Tq*N, Tk*N] or None."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=token_mask)
