"""Flow matching: the noise path, the clean-frame wrapper around the network, the training loss and samplers.

Noise path (rectified flow): ``x_s = (1 - s) * x0 + s * eps`` with noise level ``s`` in [0, 1]; ``s = 1`` is pure
noise. The network's raw output is read either as the clean frame (``x0``) or as the velocity ``v = eps - x0``
(``x0 = x_s - s * v``); ``Denoiser`` hides which, so samplers and distillation always see clean-frame predictions.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from worldmodel.nn.attention import bidirectional_mask, causal_mask


@dataclass
class NoiseSchedule:
    prediction: str = "x0"  # what the network outputs: x0 (clean frame) or v (velocity)
    train_mean: float = 0.0  # logit-normal training levels: s = sigmoid(N(mean, std))
    train_std: float = 1.0
    clean_context_prob: float = 0.3  # clips whose first frames are clean (teacher forcing of the context)
    shift: float = 3.0  # sampling-time shift of the levels toward noise (SD3/Wan style)
    train_shift: float = 1.0  # the same shift applied to the training levels (1 = none: few levels above 0.9)

    def to_dict(self) -> dict:
        return asdict(self)

    def levels(self, steps: int, device=None) -> torch.Tensor:
        """steps + 1 decreasing levels from 1 to 0, shifted (``shift_levels``)."""
        return shift_levels(torch.linspace(1.0, 0.0, steps + 1, device=device), self.shift)

    def sample_train_levels(self, batch: int, frames: int, generator=None, device=None) -> torch.Tensor:
        """Independent noise level per frame (diffusion forcing) [B, T]; some clips get a clean context prefix."""
        z = torch.randn(batch, frames, generator=generator, device=device) * self.train_std + self.train_mean
        s = shift_levels(torch.sigmoid(z), self.train_shift)
        clean = torch.rand(batch, generator=generator, device=device) < self.clean_context_prob
        cut = torch.randint(1, max(frames, 2), (batch,), generator=generator, device=device)
        prefix = torch.arange(frames, device=device)[None] < cut[:, None]
        return torch.where(clean[:, None] & prefix, torch.zeros_like(s), s)


def shift_levels(s, shift: float):
    """Levels moved toward noise: s' = shift*s / (1 + (shift-1)*s) (SD3/Wan style; shift 1 changes nothing)."""
    return shift * s / (1 + (shift - 1) * s)


def euler_step(x, x0, s, s_next):
    """One deterministic step along the flow path from level ``s`` to ``s_next`` < s, given the clean prediction
    ``x0`` of ``x``: the noise ``x`` implies is kept (DDIM-like)."""
    eps = (x - (1 - s) * x0) / s
    return (1 - s_next) * x0 + s_next * eps


def add_noise(x0: torch.Tensor, eps: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x_s = (1 - s) x0 + s eps, with s [B, T] broadcast over [B, T, C, H, W]."""
    s = s[..., None, None, None]
    return (1 - s) * x0 + s * eps


class Denoiser(nn.Module):
    """Wraps the network so that it returns clean-frame predictions whatever it was trained to output."""

    def __init__(self, net: nn.Module, schedule: NoiseSchedule):
        super().__init__()
        self.net = net
        self.schedule = schedule

    def forward(self, x, sigma, actions, **kw):
        out = self.net(x, sigma, actions, **kw)
        if kw.get("return_kv"):
            out, kv = out
        if self.schedule.prediction == "v":
            out = x - sigma[..., None, None, None] * out
        return (out, kv) if kw.get("return_kv") else out


def change_weight(x0: torch.Tensor, strength: float, threshold: float = 0.05) -> torch.Tensor:
    """Per-element loss weight 1 + strength where a frame differs from the previous one (moving sprites).

    x0: [B, T, C, H, W]; the first frame of a clip is compared with the second. The background never changes,
    so plain MSE spends the model on it; this puts the loss where the game happens.
    """
    diff = (x0[:, 1:] - x0[:, :-1]).abs().amax(dim=2, keepdim=True)  # [B, T-1, 1, H, W]
    diff = torch.cat([diff[:, :1], diff], dim=1)
    moving = (diff > threshold).float()
    moving = torch.maximum(moving, torch.cat([moving[:, 1:], moving[:, -1:]], dim=1))  # where it was, too
    return 1.0 + strength * moving


def drop_actions(actions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``actions`` [B, T, A] with the clips where ``mask`` [B] is true marked "no action given" (a NaN row: the
    network puts its learned null action there; ``DiTConfig.null_action``). Classifier-free guidance on the action
    contrasts a model's predictions with and without them."""
    return torch.where(mask[:, None, None], torch.full_like(actions, float("nan")), actions)


def flow_matching_loss(denoiser: Denoiser, x0, actions, schedule: NoiseSchedule, attention: str = "causal",
                       change_strength: float = 0.0, generator=None, action_dropout: float = 0.0):
    """Diffusion-forcing flow-matching loss on a clip x0 [B, T, C, H, W] with actions [B, T, A].

    Each frame gets its own level; the loss is the weighted MSE between the predicted and the true clean frame
    over frames that carry noise (clean context frames are inputs, not targets). With ``action_dropout`` that
    share of the clips is trained without its actions (``drop_actions``), so the model also learns the
    action-free prediction that guidance needs. Returns (loss, stats).
    """
    B, T = x0.shape[:2]
    s = schedule.sample_train_levels(B, T, generator=generator, device=x0.device)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    if action_dropout > 0:
        actions = drop_actions(actions, torch.rand(B, generator=generator, device=x0.device) < action_dropout)
    x_s = add_noise(x0, eps, s)
    mask = causal_mask(T, x0.device) if attention == "causal" else bidirectional_mask(T, x0.device)
    pred = denoiser(x_s, s, actions, frame_mask=mask)
    w = change_weight(x0, change_strength) if change_strength > 0 else torch.ones_like(x0[:, :, :1])
    noisy = (s > 1e-4).float()[..., None, None, None]
    err = (pred.float() - x0.float()).pow(2) * w * noisy
    loss = err.sum() / (noisy.expand_as(err).sum().clamp(min=1.0))
    return loss, {"loss": loss.detach(), "noisy_frames": noisy.mean().detach()}


@torch.no_grad()
def sample_next_frame(denoiser: Denoiser, context, context_actions, action, steps: int,
                      attention: str = "causal", generator=None, context_sigma: float = 0.0):
    """Many-step Euler sampling of the frame after ``context`` [B, Tc, C, H, W] given its ``action`` [B, A].

    The context frames are shown at level ``context_sigma`` (0: clean; a small level such as 0.1 tells the model
    not to trust every detail of frames it generated itself, which slows the drift of long rollouts); the new
    frame starts as pure noise and is denoised over ``steps`` shifted levels, deterministically (DDIM-like steps
    on the flow path). Returns [B, C, H, W].
    """
    B, Tc = context.shape[:2]
    levels = denoiser.schedule.levels(steps, device=context.device)
    x = torch.randn(context[:, :1].shape, generator=generator, device=context.device, dtype=context.dtype)
    if context_sigma > 0:
        ctx_eps = torch.randn(context.shape, generator=generator, device=context.device, dtype=context.dtype)
        context = add_noise(context, ctx_eps, torch.full((B, Tc), context_sigma, device=context.device))
    actions = torch.cat([context_actions, action[:, None]], dim=1)
    T = Tc + 1
    mask = causal_mask(T, context.device) if attention == "causal" else bidirectional_mask(T, context.device)
    for s, s_next in zip(levels[:-1], levels[1:]):
        sigma = torch.cat([torch.full((B, Tc), context_sigma, device=x.device),
                           torch.full((B, 1), float(s), device=x.device)], 1)
        x0 = denoiser(torch.cat([context, x], dim=1), sigma, actions, frame_mask=mask)[:, -1:]
        x = euler_step(x, x0, s, s_next)
    return x[:, 0]
