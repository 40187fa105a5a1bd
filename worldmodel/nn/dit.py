"""The denoiser: a DiT over frame tokens with per-frame noise level and action (diffusion forcing).

Every frame of the input carries its own noise level ``sigma`` and its own action; both (and, with ``stack_prev``,
the noise level of the previous frame) condition that frame's tokens through adaLN-zero. A frame's latent grid is
cut into ``patch x patch`` patches; with ``stack_prev`` the previous frame of the input (as the model sees it:
noisy, or clean when it comes from the cache) is stacked channel-wise into each patch, a direct path from
the previous frame like DIAMOND's frame stacking. Rotary positions over (time, y, x); attention masks are
frame-level; cached context frames come in as per-layer keys/values (see ``attention.py``).

The network predicts raw outputs; ``flow.Denoiser`` turns them into clean-frame predictions.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from einops import rearrange

from worldmodel.nn.attention import LayerContext, RopeLayout, attend, expand_mask, rotate


@dataclass
class DiTConfig:
    channels: int = 3  # latent channels of a frame
    height: int = 64  # latent grid height
    width: int = 64  # latent grid width
    patch: int = 8  # latent pixels per patch side; tokens per frame = (height/patch) * (width/patch)
    dim: int = 256  # token width
    depth: int = 6  # transformer blocks
    heads: int = 4
    mlp_ratio: float = 4.0
    action_dim: int = 2  # length of the action vector (from the data's ActionSpace)
    stack_prev: bool = True  # stack the previous input frame into each frame's patches
    residual: bool = False  # output = network + c_skip(prev level) * previous frame (needs stack_prev)
    null_action: bool = False  # a learned embedding for "no action given" (a NaN action row; flow.drop_actions)

    @property
    def grid(self) -> tuple[int, int]:
        return self.height // self.patch, self.width // self.patch

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_metadata(cls, model: dict) -> "DiTConfig":
        """The config a checkpoint's ``model`` metadata describes (its named ``size`` is a label only)."""
        return cls(**{k: v for k, v in model.items() if k != "size"})


# Named sizes. ``small`` is the 64x64 model that must run at >= 30 ticks/s on 2 CPU cores (window 4 + cache):
# dim 192 (dim 256 missed the p99 tick target by ~10%, docs/engine.md); checkpoints carry their
# own dimensions, so models trained at 256 still load.
MODELS: dict[str, dict] = {
    "tiny": dict(dim=64, depth=2, heads=2),
    "small": dict(dim=192, depth=6, heads=4),
    "base": dict(dim=512, depth=12, heads=8),
}


# ---------------------------------------------------------------------------------------------------------------
# Embeddings

def sinusoidal(x: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[...] scalars -> [..., dim] sinusoidal features (x is scaled by 1000 so that [0, 1] spans the range)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    args = (x.float() * 1000.0)[..., None] * freqs
    return torch.cat([args.cos(), args.sin()], dim=-1)


class FrameConditioning(nn.Module):
    """Per-frame conditioning vector from the frame's noise level, its action and the previous frame's level."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.dim
        self.freq_dim = 256
        self.sigma_mlp = nn.Sequential(nn.Linear(self.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.prev_sigma_mlp = nn.Sequential(nn.Linear(self.freq_dim, d), nn.SiLU(), nn.Linear(d, d)) \
            if cfg.stack_prev else None
        self.action_mlp = nn.Sequential(nn.Linear(cfg.action_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.null_action = nn.Parameter(torch.zeros(d)) if cfg.null_action else None

    def forward(self, sigma, actions, prev_sigma=None):  # [B, T], [B, T, A], [B, T] -> [B, T, dim]
        if self.null_action is None:
            act = self.action_mlp(actions)
        else:  # a NaN row: no action given
            missing = actions.isnan().any(-1, keepdim=True)
            act = torch.where(missing, self.null_action, self.action_mlp(torch.nan_to_num(actions)))
        c = self.sigma_mlp(sinusoidal(sigma, self.freq_dim)) + act
        if self.prev_sigma_mlp is not None:
            c = c + self.prev_sigma_mlp(sinusoidal(prev_sigma, self.freq_dim))
        return c


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


# ---------------------------------------------------------------------------------------------------------------
# Blocks

@dataclass
class Rotations:
    """The rotary tables of one forward pass, shared by every block (see ``attention.RopeLayout.table``)."""
    full: torch.Tensor  # input tokens: time and space
    space: torch.Tensor | None  # input tokens, space only: their keys as a cache stores them (None: not wanted)
    context: torch.Tensor | None  # cached keys: time only (their space turn is stored)


class Attention(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.q_norm = nn.RMSNorm(cfg.dim // cfg.heads)
        self.k_norm = nn.RMSNorm(cfg.dim // cfg.heads)

    def forward(self, x, rot: Rotations, token_mask, context: LayerContext | None):
        # x: [B, T, N, dim]
        B, T, N, _ = x.shape
        q, k, v = rearrange(self.qkv(x), "b t n (three h d) -> three b h (t n) d", three=3, h=self.heads)
        q, k = self.q_norm(q), self.k_norm(k)
        new_kv = (rotate(k, rot.space), v) if rot.space is not None else None  # what a KV cache stores
        q, k = rotate(q, rot.full), rotate(k, rot.full)
        if context is not None:
            k = torch.cat([rotate(context.k, rot.context), k], dim=2)
            v = torch.cat([context.v, v], dim=2)
        out = attend(q, k, v, token_mask)  # [B, h, T*N, d]
        return self.proj(rearrange(out, "b h (t n) d -> b t n (h d)", t=T)), new_kv


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-zero modulation from the per-frame conditioning."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        hidden = int(cfg.dim * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, cfg.dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 6 * cfg.dim))

    def forward(self, x, c, rot: Rotations, token_mask, context):
        # x: [B, T, N, dim]; c: [B, T, dim], one conditioning vector per frame, broadcast over its tokens
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c)[:, :, None].chunk(6, dim=-1)  # [B, T, 1, dim]
        a, new_kv = self.attn(modulate(self.norm1(x), shift1, scale1), rot, token_mask, context)
        x = x + gate1 * a
        x = x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x, new_kv


class FinalLayer(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 2 * cfg.dim))
        self.linear = nn.Linear(cfg.dim, cfg.patch * cfg.patch * cfg.channels)

    def forward(self, x, c):
        shift, scale = self.ada(c)[:, :, None].chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


# ---------------------------------------------------------------------------------------------------------------
# The network

class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        if cfg.height % cfg.patch or cfg.width % cfg.patch:
            raise ValueError(f"latent grid {cfg.height}x{cfg.width} is not divisible by patch {cfg.patch}")
        if cfg.dim % cfg.heads:
            raise ValueError(f"dim {cfg.dim} is not divisible by heads {cfg.heads}")
        self.cfg = cfg
        in_ch = cfg.channels * (2 if cfg.stack_prev else 1)
        self.patch_embed = nn.Linear(in_ch * cfg.patch * cfg.patch, cfg.dim)
        self.cond = FrameConditioning(cfg)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.final = FinalLayer(cfg)
        gh, gw = cfg.grid
        self.rope = RopeLayout(cfg.dim // cfg.heads, gh, gw)
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for block in self.blocks:  # adaLN-zero: every block starts as the identity
            nn.init.zeros_(block.ada[-1].weight)
            nn.init.zeros_(block.ada[-1].bias)
        nn.init.zeros_(self.final.ada[-1].weight)
        nn.init.zeros_(self.final.ada[-1].bias)
        nn.init.zeros_(self.final.linear.weight)

    def forward(self, x, sigma, actions, prev=None, prev_sigma=None, frame_pos=None, frame_mask=None,
                context: list[LayerContext] | None = None, return_kv: bool = False):
        """Raw network output for the input frames.

        x: [B, T, C, H, W] noisy latents; sigma: [B, T] noise levels in [0, 1]; actions: [B, T, A].
        prev, prev_sigma: the frame before each input frame as the model sees it [B, T, C, H, W] and its noise
        level [B, T] (default: the previous input frame; before the first, zeros at level 1 = nothing known).
        frame_pos: [T] time positions of the input frames (default 0..T-1); frame_mask: [T, Tc + T] booleans over
        (context frames, input frames), None = attend to everything; context: one LayerContext per block.
        Returns [B, T, C, H, W] (and, with ``return_kv``, each block's time-unrotated keys and values).
        """
        cfg = self.cfg
        B, T = x.shape[:2]
        if self.cfg.stack_prev:
            if prev is None:
                prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
                prev_sigma = torch.cat([torch.ones_like(sigma[:, :1]), sigma[:, :-1]], dim=1)
            inp = torch.cat([x, prev], dim=2)  # [B, T, 2C, H, W]
        else:
            inp = x
        tokens = rearrange(inp, "b t c (gh p) (gw q) -> b t (gh gw) (c p q)", p=cfg.patch, q=cfg.patch)
        h = self.patch_embed(tokens)  # [B, T, N, dim]
        c = self.cond(sigma, actions, prev_sigma)  # [B, T, dim]
        if frame_pos is None:
            frame_pos = torch.arange(T, device=x.device)
        rot = Rotations(full=self.rope.table(frame_pos, T),
                        space=self.rope.table(None, T, device=x.device) if return_kv else None,
                        context=None if context is None else self.rope.table(context[0].pos, len(context[0].pos),
                                                                             space=False))
        token_mask = None if frame_mask is None else expand_mask(frame_mask, cfg.tokens_per_frame)
        kvs = []
        for i, block in enumerate(self.blocks):
            h, kv = block(h, c, rot, token_mask, None if context is None else context[i])
            kvs.append(kv)
        out = self.final(h, c)
        gh, gw = cfg.grid
        out = rearrange(out, "b t (gh gw) (c p q) -> b t c (gh p) (gw q)", gh=gh, gw=gw, p=cfg.patch, q=cfg.patch)
        if cfg.residual and cfg.stack_prev:
            # residual parameterisation: most of a game frame is the previous frame; the network adds the change.
            # The skip weight is the best linear estimate of a clean frame from one at level s (unit variances).
            sp = prev_sigma[..., None, None, None]
            out = out + (1 - sp) ** 2 / ((1 - sp) ** 2 + sp ** 2) * prev
        return (out, kvs) if return_kv else out


def make_model(size: str, **overrides) -> DiT:
    """A DiT of a named size from ``MODELS`` with config ``overrides`` (channels, height, action_dim, ...)."""
    if size not in MODELS:
        raise KeyError(size)
    return DiT(DiTConfig(**{**MODELS[size], **overrides}))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
