"""Codecs: frames <-> the latent grids the denoiser works on (DESIGN.md, "Training" step 1).

Every codec maps frames ``[..., H, W, 3]`` (uint8 0..255, or float 0..1 as ``decode`` returns them) to latents
``[..., C, h, w]`` that are roughly zero-mean and unit-variance, and back. Two kinds, named in ``CODECS``:

- ``PatchCodec`` ("pixels"): the latents are the pixels mapped to [-1, 1]; the DiT cuts them into patches. Exact.
- ``ConvAutoencoder`` ("conv_ae"): a small deterministic convolutional autoencoder, ``down`` times smaller in
  each direction. Its loss weights the pixels that differ from the frame's dominant (background) colour or from
  the previous frame, so that a 4x4 ball or a 3-pixel paddle is reconstructed instead of averaged away.

A codec is rebuilt from ``codec.config()`` (JSON) with ``make_codec``, which only ever builds classes of the fixed
registry. ``python -m worldmodel.codec DATA`` trains an autoencoder briefly and measures it (docs/codec.md).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from games.errors import InputError


def as_unit_frames(frames) -> torch.Tensor:
    """Frames as float32 in [0, 1]: uint8 is divided by 255, floats are taken as already in [0, 1]."""
    x = torch.as_tensor(frames)
    if x.shape[-1] != 3:
        raise InputError(f"frames must be [..., H, W, 3], got shape {tuple(x.shape)}")
    return x.float().div(255.0) if x.dtype == torch.uint8 else x.float()


class Codec(nn.Module):
    """Frames [..., H, W, 3] <-> latents [..., C, h, w]. Subclasses set ``type`` and the four abstract methods."""
    type: str = ""

    def encode(self, frames) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Float frames [..., H, W, 3] in [0, 1]."""
        raise NotImplementedError

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        raise NotImplementedError

    def config(self) -> dict:
        """JSON-able settings, with "type"; ``make_codec(config)`` builds the same codec (weights aside)."""
        raise NotImplementedError

    @staticmethod
    def to_uint8(decoded: torch.Tensor) -> torch.Tensor:
        return decoded.clamp(0, 1).mul(255).round().to(torch.uint8)


class PatchCodec(Codec):
    """Pixels as latents: [..., H, W, 3] -> [..., 3, H, W] in [-1, 1]. Patching is the DiT's job."""
    type = "pixels"

    def encode(self, frames) -> torch.Tensor:
        return rearrange(as_unit_frames(frames) * 2 - 1, "... h w c -> ... c h w")

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return rearrange((latents + 1) / 2, "... c h w -> ... h w c").clamp(0, 1)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        return 3, height, width

    def config(self) -> dict:
        return {"type": self.type}


# ----------------------------------------------------------------------------------------------------------------
# Convolutional autoencoder


@dataclass
class ConvAEConfig:
    down: int = 4  # spatial reduction per direction, 2**k with k >= 1 (4: 64x64 -> 16x16; 8: -> 8x8)
    latent_channels: int = 4  # C of the latent grid
    width: int = 32  # channels at H/2; doubled at each further level, capped at 4x
    blocks: int = 1  # residual blocks per level, in the encoder and the decoder
    latent_l2: float = 1e-4  # penalty on the raw latents' mean square: keeps them bounded for the denoiser
    sprite_weight: float = 20.0  # extra loss weight where a pixel differs from its frame's dominant colour
    change_weight: float = 20.0  # extra loss weight where a pixel differs from the previous frame of its clip
    tolerance: int = 8  # a pixel "differs" when some channel differs by more than this (0..255)
    # latents = (raw - shift) * scale, per latent channel; set from data by ``calibrate``.
    shift: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch // 4), ch)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice plus the input; the second conv starts at zero so a new block is the identity."""

    def __init__(self, ch: int):
        super().__init__()
        self.net = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
                                 _norm(ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x):
        return x + self.net(x)


class ConvAutoencoder(Codec):
    """Deterministic conv autoencoder. Encoder: a 4x4 stride-2 conv per level (the first straight from pixels, so
    nothing runs at full resolution), ``blocks`` residual blocks each. Decoder: the mirror image with nearest
    upsampling + conv, and a final conv to 2x2x3 sub-pixels (pixel shuffle) instead of a full-resolution conv."""
    type = "conv_ae"

    def __init__(self, cfg: ConvAEConfig | None = None, **settings):
        super().__init__()
        cfg = cfg or ConvAEConfig(**settings)
        levels = int(round(math.log2(cfg.down))) if cfg.down > 0 else 0
        if cfg.down < 2 or 2 ** levels != cfg.down:
            raise InputError(f"conv_ae: down must be a power of two >= 2, got {cfg.down}")
        if cfg.width < 8 or cfg.width % 8 or cfg.latent_channels < 1 or cfg.blocks < 0:
            raise InputError(f"conv_ae: need width a multiple of 8, latent_channels >= 1, blocks >= 0; got "
                             f"width={cfg.width}, latent_channels={cfg.latent_channels}, blocks={cfg.blocks}")
        self.cfg = cfg
        chs = [cfg.width * min(2 ** i, 4) for i in range(levels)]  # channels at H/2, H/4, ...
        enc, prev = [], 3
        for ch in chs:
            enc += [nn.Conv2d(prev, ch, 4, stride=2, padding=1)] + [ResBlock(ch) for _ in range(cfg.blocks)]
            prev = ch
        enc += [_norm(prev), nn.SiLU(), nn.Conv2d(prev, cfg.latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec = [nn.Conv2d(cfg.latent_channels, chs[-1], 3, padding=1)]
        for i in reversed(range(levels)):
            dec += [ResBlock(chs[i]) for _ in range(cfg.blocks)]
            if i > 0:
                dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(chs[i], chs[i - 1], 3, padding=1)]
        dec += [_norm(chs[0]), nn.SiLU(), nn.Conv2d(chs[0], 3 * 4, 3, padding=1), nn.PixelShuffle(2)]
        self.decoder = nn.Sequential(*dec)
        C = cfg.latent_channels
        for name, default in (("shift", 0.0), ("scale", 1.0)):
            values = getattr(cfg, name) or [default] * C
            if len(values) != C:
                raise InputError(f"conv_ae: {name} has {len(values)} values for {C} latent channels")
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32).view(C, 1, 1), persistent=False)

    # -- raw networks on [N, 3, H, W] in [-1, 1] ---------------------------------------------------------------

    def _encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        if H % self.cfg.down or W % self.cfg.down:
            raise InputError(f"conv_ae: frame size {H}x{W} is not a multiple of down={self.cfg.down}")
        return self.encoder(x)  # [N, C, H/down, W/down]

    # -- the Codec interface -----------------------------------------------------------------------------------

    def encode(self, frames) -> torch.Tensor:
        x = as_unit_frames(frames).to(self.shift.device)
        lead = x.shape[:-3]
        x = rearrange(x * 2 - 1, "... h w c -> (...) c h w")
        z = (self._encode_raw(x) - self.shift) * self.scale
        return z.reshape(*lead, *z.shape[1:])

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        lead = latents.shape[:-3]
        z = latents.reshape(-1, *latents.shape[-3:]) / self.scale + self.shift
        y = self.decoder(z)  # [N, 3, H, W] in [-1, 1]
        y = rearrange((y + 1) / 2, "n c h w -> n h w c").clamp(0, 1)
        return y.reshape(*lead, *y.shape[1:])

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        d = self.cfg.down
        if height % d or width % d:
            raise InputError(f"conv_ae: frame size {height}x{width} is not a multiple of down={d}")
        return self.cfg.latent_channels, height // d, width // d

    def config(self) -> dict:
        cfg = asdict(self.cfg)
        cfg["shift"] = [float(v) for v in self.shift.flatten()]
        cfg["scale"] = [float(v) for v in self.scale.flatten()]
        return {"type": self.type, **cfg}

    # -- training --------------------------------------------------------------------------------------------

    def pixel_weights(self, frames_u8: torch.Tensor) -> torch.Tensor:
        """Loss weight per pixel of uint8 frames [N, H, W, 3] or clips [B, L, H, W, 3] -> [..., H, W]:
        1, plus ``sprite_weight`` where the pixel differs from its frame's most common colour, plus
        ``change_weight`` where it differs from the previous frame of its clip (clips only)."""
        cfg, q = self.cfg, frames_u8.to(torch.int32)
        key = (q[..., 0] << 16) | (q[..., 1] << 8) | q[..., 2]  # [..., H, W] one int per colour
        dominant = torch.mode(key.flatten(-2), dim=-1).values  # [...] the background colour of each frame
        rgb = torch.stack([(dominant >> s) & 255 for s in (16, 8, 0)], -1)[..., None, None, :]  # [..., 1, 1, 3]
        w = 1 + cfg.sprite_weight * ((q - rgb).abs().amax(-1) > cfg.tolerance).float()
        if q.dim() == 5:
            changed = ((q[:, 1:] - q[:, :-1]).abs().amax(-1) > cfg.tolerance).float()  # [B, L-1, H, W]
            w[:, 1:] += cfg.change_weight * changed
        return w

    def loss(self, frames) -> tuple[torch.Tensor, dict]:
        """Weighted L1 + MSE reconstruction of uint8 frames [N, H, W, 3] or clips [B, L, H, W, 3] (the clip's
        order gives the "changed since the previous frame" weights), plus ``latent_l2`` on the raw latents."""
        frames = torch.as_tensor(frames)
        if frames.dtype != torch.uint8:
            frames = self.to_uint8(frames.float())
        w = self.pixel_weights(frames).flatten(0, -3).to(self.shift.device)  # [N, H, W]
        x = rearrange(frames.flatten(0, -4).to(self.shift.device).float() / 127.5 - 1, "n h w c -> n c h w")
        z = self._encode_raw(x)
        y = self.decoder(z)  # [N, 3, H, W]
        err = y - x
        wsum = w.sum() * 3
        l1 = (err.abs() * w[:, None]).sum() / wsum
        mse = (err.square() * w[:, None]).sum() / wsum
        reg = z.square().mean()
        loss = l1 + mse + self.cfg.latent_l2 * reg
        with torch.no_grad():
            plain_mse = (err.clamp(-2, 2) / 2).square().mean()  # in [0, 1] pixel units
        stats = {"loss": loss.item(), "l1": l1.item(), "mse": mse.item(), "latent_rms": reg.sqrt().item(),
                 "psnr": -10 * math.log10(max(plain_mse.item(), 1e-10))}
        return loss, stats

    @torch.no_grad()
    def calibrate(self, frames, batch: int = 256) -> "ConvAutoencoder":
        """Sets ``shift`` and ``scale`` so that the latents of ``frames`` [N, H, W, 3] have zero mean and unit
        variance per channel."""
        frames = torch.as_tensor(frames)
        raw = []
        for i in range(0, len(frames), batch):
            x = rearrange(as_unit_frames(frames[i:i + batch]).to(self.shift.device) * 2 - 1, "n h w c -> n c h w")
            raw.append(self._encode_raw(x))
        raw = torch.cat(raw).transpose(0, 1).flatten(1)  # [C, N*h*w]
        self.shift.copy_(raw.mean(1).view_as(self.shift))
        self.scale.copy_(1.0 / raw.std(1).clamp_min(1e-6).view_as(self.scale))
        return self


# ----------------------------------------------------------------------------------------------------------------
# Registry


CODECS: dict[str, type[Codec]] = {"pixels": PatchCodec, "conv_ae": ConvAutoencoder}


def make_codec(config: dict) -> Codec:
    """The codec that ``config`` (from ``Codec.config()``, or written by hand) describes, with fresh weights.
    Only the classes of ``CODECS`` are ever built; an unknown type or setting is an InputError."""
    if not isinstance(config, dict) or "type" not in config:
        raise InputError(f"a codec config must be a dict with a 'type', got {config!r}")
    settings = {k: v for k, v in config.items() if k != "type"}
    kind = config["type"]
    if kind not in CODECS:
        raise InputError(f"unknown codec type {kind!r}; choose from {', '.join(CODECS)}")
    if kind == "pixels":
        if settings:
            raise InputError(f"codec 'pixels' takes no settings, got {', '.join(sorted(settings))}")
        return PatchCodec()
    allowed = {f.name for f in fields(ConvAEConfig)}
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise InputError(f"unknown setting(s) {', '.join(unknown)} for codec {kind!r}; "
                         f"it takes {', '.join(sorted(allowed))}")
    return ConvAutoencoder(ConvAEConfig(**settings))
