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


def rope_cos_sin(pos: torch.Tensor, n: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [len(pos), n/2] of positions ``pos`` (float or int) for a rotary group of n channels."""
    angles = pos.to(torch.float64)[:, None] * _rope_freqs(n, theta).to(pos.device)[None]
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (x[..., 2i], x[..., 2i+1]) of x [..., L, n] by angles with cos/sin [L, n/2]."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2)


@dataclass(frozen=True)
class RopeLayout:
    """How a head's channels split into (time, y, x) rotary groups, and the fixed spatial grid."""
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

    def spatial(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [N, (ny + nx)/2] of the N = grid_h * grid_w tokens of one frame (row-major)."""
        _, ny, nx = self.split
        ys = torch.arange(self.grid_h, device=device).repeat_interleave(self.grid_w)
        xs = torch.arange(self.grid_w, device=device).repeat(self.grid_h)
        cy, sy = rope_cos_sin(ys, ny, self.theta_space)
        cx, sx = rope_cos_sin(xs, nx, self.theta_space)
        return torch.cat([cy, cx], -1), torch.cat([sy, sx], -1)


def rotate_space(x: torch.Tensor, layout: RopeLayout, cos_sin) -> torch.Tensor:
    """x [B, H, T*N, D]: rotate the spatial channel groups of every token (its frame's grid position)."""
    nt = layout.split[0]
    cos, sin = cos_sin  # [N, ...]
    n_frames = x.shape[-2] // cos.shape[0]
    cos, sin = cos.repeat(n_frames, 1), sin.repeat(n_frames, 1)
    return torch.cat([x[..., :nt], apply_rope(x[..., nt:], cos, sin)], -1)


def rotate_time(x: torch.Tensor, layout: RopeLayout, frame_pos: torch.Tensor) -> torch.Tensor:
    """x [B, H, T*N, D]: rotate the time channel group by each token's frame position ``frame_pos`` [T]."""
    nt = layout.split[0]
    n_tokens = layout.grid_h * layout.grid_w
    cos, sin = rope_cos_sin(frame_pos.repeat_interleave(n_tokens), nt, layout.theta_time)
    return torch.cat([apply_rope(x[..., :nt], cos, sin), x[..., nt:]], -1)


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


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frame_mask: torch.Tensor | None,
           n_tokens: int) -> torch.Tensor:
    """Scaled dot-product attention; q [B, H, Tq*N, D], k/v [B, H, Tk*N, D]; frame_mask [Tq, Tk] or None."""
    if frame_mask is None or bool(frame_mask.all()):
        return F.scaled_dot_product_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=expand_mask(frame_mask, n_tokens))
