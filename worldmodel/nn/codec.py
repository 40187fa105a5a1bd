"""Codecs: frames <-> the latent grids the denoiser works on (the optional first stage of training,
``docs/codec.md``).

Every codec maps frames ``[..., H, W, 3]`` (uint8 0..255, or float 0..1 as ``decode`` returns them) to latents
``[..., C, h, w]`` that are roughly zero-mean and unit-variance, and back. Two kinds, named in ``CODECS``:

- ``PatchCodec`` ("pixels"): the latents are the pixels mapped to [-1, 1]; the DiT cuts them into patches. Exact.
- ``ConvAutoencoder`` ("conv_ae"): a small deterministic convolutional autoencoder, ``down`` times smaller in
  each direction. Its loss weights the pixels that differ from the frame's dominant (background) colour or from
  the previous frame, so that a 4x4 ball or a 3-pixel paddle is reconstructed instead of averaged away.

A codec is rebuilt from ``codec.config()`` (JSON) with ``make_codec``, which only ever builds classes of the fixed
registry. ``python -m worldmodel.nn.codec DATA`` trains an autoencoder briefly and measures it (docs/codec.md).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn as nn
from einops import rearrange

from games.data.errors import InputError
from worldmodel.eval.metrics import psnr_of_mse


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
                 "psnr": float(psnr_of_mse(max(plain_mse.item(), 1e-10), 1.0))}
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


# ----------------------------------------------------------------------------------------------------------------
# Measurement: ``python -m worldmodel.nn.codec DATA --seconds 240 --down 4 --latent-channels 4 --width 16``


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR in dB of float frames in [0, 1]; mean of per-frame PSNRs, or over the pooled pixels of ``mask``
    [N, H, W] when given (the "sprite" figure: few pixels per frame, some frames have none)."""
    err = (a.float() - b.float()).square().mean(-1)  # [N, H, W]
    if mask is not None:
        return float(psnr_of_mse(max(err[mask].mean().item(), 1e-10), 1.0))
    return float(psnr_of_mse(err.flatten(1).mean(1).clamp_min(1e-10).double().cpu().numpy(), 1.0).mean())


@torch.no_grad()
def evaluate(codec: Codec, frames_u8: torch.Tensor, tolerance: int = 8, batch: int = 250) -> dict:
    """Reconstruction PSNR of held-out uint8 frames [N, H, W, 3]; the same on "sprite" pixels (those that differ
    from the per-pixel median frame by more than ``tolerance`` in some channel); both also for the trivial
    baseline that outputs the median frame; and the latents' mean and std."""
    codec.eval()
    lat = torch.cat([codec.encode(frames_u8[i:i + batch]) for i in range(0, len(frames_u8), batch)])
    rec = torch.cat([codec.to_uint8(codec.decode(lat[i:i + batch])) for i in range(0, len(lat), batch)])
    x = frames_u8.float() / 255
    background = frames_u8.median(0).values  # [H, W, 3]
    sprite = (frames_u8.int() - background.int()).abs().amax(-1) > tolerance  # [N, H, W]
    bg = (background.float() / 255).expand_as(x)
    return {"psnr": psnr(rec.float() / 255, x), "sprite_psnr": psnr(rec.float() / 255, x, sprite),
            "background_psnr": psnr(bg, x), "background_sprite_psnr": psnr(bg, x, sprite),
            "sprite_fraction": sprite.float().mean().item(),
            "latent_mean": lat.mean().item(), "latent_std": lat.std().item()}


@torch.no_grad()
def time_codec(codec: Codec, height: int, width: int, n: int = 100) -> tuple[float, float]:
    """Median seconds to encode and to decode one uint8 frame (batch 1), after a warm-up."""
    codec.eval()
    x = torch.randint(0, 256, (1, height, width, 3), dtype=torch.uint8)
    enc, dec = [], []
    for k in range(n + 10):
        t0 = time.perf_counter()
        z = codec.encode(x)
        t1 = time.perf_counter()
        codec.decode(z)
        if k >= 10:
            enc.append(t1 - t0)
            dec.append(time.perf_counter() - t1)
    return float(np.median(enc)), float(np.median(dec))


def measure(data: str, config: dict, seconds: float, batch: int = 8, lr: float = 2e-3, val_fraction: float = 0.1,
            eval_stride: int = 2, seed: int = 0, out: str | None = None, log_every: int = 100) -> dict:
    """Train the codec of ``config`` on pairs of consecutive frames of the recording ``data`` (``batch`` pairs a
    step) for ``seconds`` of wall time (AdamW, warm-up then cosine decay over the time budget), calibrate its
    latents on training frames, and evaluate every ``eval_stride``-th frame of the held-out episodes."""
    from worldmodel.train.data import ClipDataset, split_recording
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_ds = ClipDataset(data, 2)
    train, held = split_recording(train_ds.recording, val_fraction, seed)
    train_ds = ClipDataset(train_ds.recording, 2, episodes=train)
    val = torch.from_numpy(np.concatenate([s.frames()[::eval_stride] for s in held]))
    codec = make_codec(config)
    opt = torch.optim.AdamW(codec.parameters(), lr=lr, weight_decay=0.0)
    warmup, step, t0 = 100, 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        frac = elapsed / seconds
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * frac))
        frames, _ = train_ds.sample_batch(rng, batch)  # [B, 2, H, W, 3] uint8
        codec.train()
        loss, stats = codec.loss(torch.from_numpy(frames))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(codec.parameters(), 1.0)
        opt.step()
        step += 1
        if step % log_every == 0:
            print(f"step {step} {elapsed:.0f}s loss {stats['loss']:.4f} psnr {stats['psnr']:.2f} "
                  f"latent_rms {stats['latent_rms']:.2f}", flush=True)
    train_seconds = time.perf_counter() - t0
    if isinstance(codec, ConvAutoencoder):
        calib, _ = train_ds.sample_batch(rng, 512)
        codec.calibrate(torch.from_numpy(calib[:, 0]))
    result = {"config": codec.config(), "steps": step, "train_seconds": round(train_seconds, 1),
              "frames_seen": step * batch * 2, "params": sum(p.numel() for p in codec.parameters()),
              "val_frames": len(val), **evaluate(codec, val)}
    enc, dec = time_codec(codec, *val.shape[1:3])
    result.update(encode_ms=enc * 1e3, decode_ms=dec * 1e3)
    if out:
        from safetensors.torch import save_file
        save_file(codec.state_dict(), out, metadata={"codec": json.dumps(codec.config())})
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Train a codec briefly on a recording and measure its reconstruction.")
    p.add_argument("data", help="recording folder (games.data.recording)")
    p.add_argument("--type", default="conv_ae", choices=sorted(CODECS))
    p.add_argument("--down", type=int, default=4)
    p.add_argument("--latent-channels", type=int, default=4)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--blocks", type=int, default=1)
    p.add_argument("--seconds", type=float, default=240, help="training wall time")
    p.add_argument("--batch", type=int, default=8, help="pairs of consecutive frames a step")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the trained codec here (safetensors, config in the metadata)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = {"type": args.type} if args.type == "pixels" else dict(
        type=args.type, down=args.down, latent_channels=args.latent_channels, width=args.width, blocks=args.blocks)
    result = measure(args.data, config, args.seconds, args.batch, args.lr, seed=args.seed, out=args.out)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
