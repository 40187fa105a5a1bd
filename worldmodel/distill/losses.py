"""The losses of distillation: ODE-init regression targets, Distribution Matching (DMD) and the critic.

- ``teacher_window``: the teacher's many-step solutions for the W frames of a rolling window after real start
  frames, autoregressively (each frame's Euler path from its own fixed noise, given the real frames and the
  teacher's finished frames before it). A frame's path is read at the window's levels: the student's ODE-init
  input for that frame is the point of the path at the level the frame holds in the window, its target the end.
- ``ode_loss``: the student's rolling pass over such a window (cache = the start frames) against the targets.
- ``score_clips``: generated frames cut into blocks, each after the clean frames that precede it, as the
  teacher saw clips in training (a clean prefix, then frames at a noise level; clips no longer than its clips).
- ``dmd_loss``: both score models denoise the noised blocks; the student's outputs move along
  ``(critic_x0 - teacher_x0) / mean|G - teacher_x0|`` (DMD's normalised gradient, as an MSE to a detached target).
- ``critic_loss``: flow matching of the critic (fake score) on the student's detached outputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from worldmodel.nn.attention import causal_mask
from worldmodel.nn.flow import Denoiser, add_noise, change_weight, drop_actions, euler_step, shift_levels
from worldmodel.engine.kv_cache import cached_pass, start_cache


@torch.no_grad()
def teacher_window(teacher: Denoiser, start, start_actions, actions, teacher_levels: list[float], window: int,
                   generator: torch.Generator, max_context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ODE-init pairs for the W frames after ``start`` [B, S, C, h, w].

    ``start_actions`` [B, S, A] and ``actions`` [B, W, A]: the actions that produced each frame.
    ``teacher_levels``: the teacher's Euler levels (1 -> 0), which must contain the window's levels at every
    ``len(teacher_levels - 1) / window``-th step. Returns (inputs, targets), each [B, W, C, h, w]: window frame
    ``i`` (oldest first) at the level it holds in a full window (index ``W - 1 - i``), and its finished frame.
    """
    steps = len(teacher_levels) - 1
    if steps % window:
        raise ValueError(f"teacher steps ({steps}) must be a multiple of the window ({window})")
    every = steps // window
    B = start.shape[0]
    ctx, ctx_act = start, start_actions
    inputs, targets = [], []
    for i in range(window):
        x = torch.randn(start[:, :1].shape, generator=generator, device=start.device)
        path = []
        for k, (s, s_next) in enumerate(zip(teacher_levels[:-1], teacher_levels[1:])):
            if k % every == 0:
                path.append(x)
            ctx, ctx_act = ctx[:, -max_context:], ctx_act[:, -max_context:]
            T = ctx.shape[1] + 1
            sigma = torch.cat([torch.zeros(B, T - 1, device=x.device), torch.full((B, 1), s, device=x.device)], 1)
            x0 = teacher(torch.cat([ctx, x], 1), sigma, torch.cat([ctx_act, actions[:, i:i + 1]], 1),
                         frame_mask=causal_mask(T, x.device))[:, -1:]
            x = euler_step(x, x0, s, s_next)
        inputs.append(path[window - 1 - i])
        targets.append(x)
        ctx, ctx_act = torch.cat([ctx, x], 1), torch.cat([ctx_act, actions[:, i:i + 1]], 1)
    return torch.cat(inputs, 1), torch.cat(targets, 1)


def ode_loss(student: Denoiser, start, inputs, targets, actions, levels: list[float], sink: int, recent: int,
             change_strength: float) -> torch.Tensor:
    """The student's rolling-window pass over ``inputs`` [B, W, ...] (oldest at the lowest level), attending to
    the cached start frames, regressed onto the teacher's finished frames ``targets``."""
    B, W = inputs.shape[:2]
    with torch.no_grad():
        cache = start_cache(student, start, actions.shape[-1], sink, recent)
    sigma = torch.tensor([levels[W - 1 - i] for i in range(W)], device=inputs.device)[None].expand(B, -1)
    pred = cached_pass(student, cache, inputs, sigma, actions)
    return _weighted_mse(pred, targets, start[:, -1:], change_strength)


def _weighted_mse(pred, target, before, change_strength: float) -> torch.Tensor:
    """MSE weighted like the teacher's loss: ``1 + change_strength`` where a target frame differs from the one
    before it (``before`` [B, 1, ...]: the frame preceding the first target)."""
    if change_strength <= 0:
        return (pred - target).pow(2).mean()
    w = change_weight(torch.cat([before, target], 1), change_strength)[:, 1:]
    return ((pred - target).pow(2) * w).mean()


def score_clips(context_frames, context_actions, frames, actions, block: int, n_context: int):
    """Cut generated ``frames`` [B, N, ...] into blocks of ``block`` frames, each after the ``n_context`` frames
    before it in ``context_frames`` [B, S + N, ...] (start frames, then the generated frames, detached).

    Returns (context [B*nb, n_context, ...], context actions, blocks [B*nb, block, ...], block actions).
    """
    B, N = frames.shape[:2]
    S = context_frames.shape[1] - N
    if N % block or S < n_context:
        raise ValueError(f"{N} frames do not cut into blocks of {block} after {n_context} context frames")
    ctx, ctx_act, blk, blk_act = [], [], [], []
    for b in range(N // block):
        lo = S + b * block
        ctx.append(context_frames[:, lo - n_context:lo])
        ctx_act.append(context_actions[:, lo - n_context:lo])
        blk.append(frames[:, b * block:(b + 1) * block])
        blk_act.append(actions[:, b * block:(b + 1) * block])
    return torch.cat(ctx), torch.cat(ctx_act), torch.cat(blk), torch.cat(blk_act)


def sample_dmd_levels(n: int, shift: float, t_min: float, t_max: float, generator, device) -> torch.Tensor:
    """One level per clip: uniform in [t_min, t_max], shifted toward noise like the sampler's levels."""
    u = t_min + (t_max - t_min) * torch.rand(n, generator=generator, device=device)
    return shift_levels(u, shift)


def _denoise_blocks(score: Denoiser, ctx, ctx_act, noisy, blk_act, t):
    """A score model's clean predictions of the noisy blocks, after their clean context (causal, as trained)."""
    n, T = ctx.shape[1], ctx.shape[1] + noisy.shape[1]
    sigma = torch.cat([torch.zeros(ctx.shape[0], n, device=t.device), t[:, None].expand(-1, noisy.shape[1])], 1)
    out = score(torch.cat([ctx, noisy], 1), sigma, torch.cat([ctx_act, blk_act], 1), frame_mask=causal_mask(T, t.device))
    return out[:, n:]


def dmd_loss(teacher: Denoiser, critic: Denoiser, ctx, ctx_act, blocks, blk_act, shift: float, t_min: float,
             t_max: float, generator, guidance: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Distribution matching on the student's outputs ``blocks`` (with gradient): returns (loss, stats).

    ``guidance`` != 1: the real score is guided by the action (classifier-free guidance: the teacher's prediction
    without the clip's actions, moved ``guidance`` times the way its actions move it), so the student learns the
    action's effect more strongly than the teacher shows it."""
    t = sample_dmd_levels(blocks.shape[0], shift, t_min, t_max, generator, blocks.device)
    eps = torch.randn(blocks.shape, generator=generator, device=blocks.device)
    with torch.no_grad():
        noisy = add_noise(blocks.detach(), eps, t[:, None])
        real = _denoise_blocks(teacher, ctx, ctx_act, noisy, blk_act, t)
        if guidance != 1:
            none = torch.ones(ctx.shape[0], dtype=torch.bool, device=ctx.device)
            free = _denoise_blocks(teacher, ctx, drop_actions(ctx_act, none), noisy, drop_actions(blk_act, none), t)
            real = free + guidance * (real - free)
        fake = _denoise_blocks(critic, ctx, ctx_act, noisy, blk_act, t)
        normaliser = (blocks.detach() - real).abs().mean(dim=(1, 2, 3, 4), keepdim=True).clamp(min=1e-6)
        grad = (fake - real) / normaliser
        target = blocks.detach() - grad
    loss = 0.5 * F.mse_loss(blocks, target)
    return loss, {"dmd_loss": loss.detach(), "dmd_grad": grad.abs().mean(), "dmd_level": t.mean()}


def critic_loss(critic: Denoiser, ctx, ctx_act, blocks, blk_act, shift: float, t_min: float, t_max: float,
                generator, change_strength: float) -> torch.Tensor:
    """Flow matching of the critic on the student's (detached) blocks at the levels DMD uses."""
    blocks = blocks.detach()
    t = sample_dmd_levels(blocks.shape[0], shift, t_min, t_max, generator, blocks.device)
    eps = torch.randn(blocks.shape, generator=generator, device=blocks.device)
    pred = _denoise_blocks(critic, ctx, ctx_act, add_noise(blocks, eps, t[:, None]), blk_act, t)
    return _weighted_mse(pred, blocks, ctx[:, -1:], change_strength)
