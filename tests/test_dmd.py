"""Distribution Matching (``losses.dmd_loss``): the student moves along ``critic_x0 - teacher_x0``, backwards.

DMD (Yin et al. 2024; Rolling Forcing, Sec. 3.3) pushes each generated sample along the difference of the real
and the fake score at a noised copy of it. In clean-frame terms the student's outputs G move by
``-(critic_x0 - teacher_x0) / mean|G - teacher_x0|``: away from what the critic (fitted to the student) would
reconstruct, toward what the teacher would. These tests pin the three facts that make that true: equal scores
give no gradient, the gradient on G is exactly that normalised difference, and one optimiser step of a student
network brings its outputs closer to the teacher's clean prediction.
"""
import copy

import torch
import torch.nn as nn

from worldmodel.distill import losses
from worldmodel.nn.attention import causal_mask
from worldmodel.nn.dit import make_model
from worldmodel.nn.flow import Denoiser, NoiseSchedule

ACTIONS = 2
N_CTX, BLOCK = 2, 2  # clean context frames, then the block of generated frames a score model denoises
SHIFT, T_MIN, T_MAX = 3.0, 0.02, 0.98  # the distiller's defaults (dmd_shift = the teacher's schedule shift)


def _denoiser(seed: int) -> Denoiser:
    """A tiny 16x16 DiT, its weights perturbed off adaLN-zero's identity start so every path carries signal."""
    torch.manual_seed(seed)
    net = make_model("tiny", channels=3, height=16, width=16, patch=4, action_dim=ACTIONS)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return Denoiser(net, NoiseSchedule())


def _clips(batch: int = 2, seed: int = 1):
    """Score clips as ``score_clips`` cuts them: (context [B, n, C, h, w], its actions, noise for the student's
    block [B, block, C, h, w], the block's actions)."""
    g = torch.Generator().manual_seed(seed)
    ctx = torch.rand(batch, N_CTX, 3, 16, 16, generator=g) * 2 - 1
    ctx_act = (torch.rand(batch, N_CTX, ACTIONS, generator=g) < 0.5).float()
    noise = torch.randn(batch, BLOCK, 3, 16, 16, generator=g)
    blk_act = (torch.rand(batch, BLOCK, ACTIONS, generator=g) < 0.5).float()
    return ctx, ctx_act, noise, blk_act


def _generate(student: Denoiser, ctx, ctx_act, noise, blk_act) -> torch.Tensor:
    """A one-step generator: the student's clean prediction of the block from pure noise after its clean
    context (with gradient) [B, block, C, h, w]."""
    B = ctx.shape[0]
    sigma = torch.cat([torch.zeros(B, N_CTX), torch.ones(B, BLOCK)], 1)
    out = student(torch.cat([ctx, noise], 1), sigma, torch.cat([ctx_act, blk_act], 1),
                  frame_mask=causal_mask(N_CTX + BLOCK))
    return out[:, N_CTX:]


class Recorded(nn.Module):
    """A score model that remembers what it was asked: the noisy blocks, their levels and its clean predictions."""

    def __init__(self, score: nn.Module):
        super().__init__()
        self.score, self.calls = score, []

    def forward(self, x, sigma, actions, **kw):
        out = self.score(x, sigma, actions, **kw)
        self.calls.append({"noisy": x[:, N_CTX:].detach(), "level": sigma[:, N_CTX].detach(),
                           "x0": out[:, N_CTX:].detach()})
        return out


class Offset(nn.Module):
    """A critic whose clean prediction is the teacher's plus a fixed offset [1, 1, C, h, w] on every frame."""

    def __init__(self, teacher: nn.Module, offset: torch.Tensor):
        super().__init__()
        self.teacher, self.offset = teacher, offset

    def forward(self, x, sigma, actions, **kw):
        return self.teacher(x, sigma, actions, **kw) + self.offset


class PointMass(nn.Module):
    """The ideal critic of a deterministic generator: its samples are a point mass at ``sample``, so the fake
    score's clean prediction of any noised copy is the sample itself (teacher's x0 + (sample - teacher's x0))."""

    def __init__(self, sample: torch.Tensor):
        super().__init__()
        self.sample = sample.detach()

    def forward(self, x, sigma, actions, **kw):
        ctx = x[:, :N_CTX]
        return torch.cat([ctx, self.sample], 1)


def _dmd(teacher, critic, ctx, ctx_act, blocks, blk_act, seed: int = 7):
    return losses.dmd_loss(teacher, critic, ctx, ctx_act, blocks, blk_act, SHIFT, T_MIN, T_MAX,
                           torch.Generator().manual_seed(seed))


def test_a_critic_equal_to_the_teacher_gives_the_student_no_gradient():
    """Where the fake score equals the real one (the critic starts as a copy of the teacher), the student's
    samples already match the teacher's distribution as far as DMD can tell: zero gradient, exactly. Fails if
    the two score models see different noisy copies (separate noise or levels) or the target is not G - grad."""
    teacher = _denoiser(0).requires_grad_(False)
    critic = Denoiser(copy.deepcopy(teacher.net), teacher.schedule)
    student = _denoiser(1)
    ctx, ctx_act, noise, blk_act = _clips()
    blocks = _generate(student, ctx, ctx_act, noise, blk_act)
    loss, stats = _dmd(teacher, critic, ctx, ctx_act, blocks, blk_act)
    loss.backward()
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None for g in grads)  # the loss does reach the student...
    assert max(g.abs().max().item() for g in grads) == 0.0  # ...with nothing to say
    assert loss.item() == 0.0 and stats["dmd_grad"].item() == 0.0


def test_the_gradient_on_the_outputs_is_the_normalised_critic_minus_teacher_difference():
    """With critic_x0 = teacher_x0 + c, d loss / d G = c / (mean|G - teacher_x0| * numel) per clip: the DMD
    direction (critic_x0 - teacher_x0), DMD's normaliser, and a positive sign (a gradient step moves G by -c)."""
    teacher = Recorded(_denoiser(0).requires_grad_(False))
    offset = 0.1 * torch.randn(1, 1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    critic = Offset(teacher.score, offset)
    ctx, ctx_act, noise, blk_act = _clips()
    with torch.no_grad():
        G = _generate(_denoiser(1), ctx, ctx_act, noise, blk_act)
    G.requires_grad_(True)
    loss, _ = _dmd(teacher, critic, ctx, ctx_act, G, blk_act)
    loss.backward()
    (call,) = teacher.calls
    normaliser = (G.detach() - call["x0"]).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
    expected = offset.expand_as(G) / normaliser / G.numel()
    torch.testing.assert_close(G.grad, expected, rtol=1e-4, atol=1e-9)
    cosine = nn.functional.cosine_similarity(G.grad.flatten(1), offset.expand_as(G).flatten(1), dim=1)
    assert (cosine > 0.999).all()  # the sign, stated on its own


def test_one_student_step_moves_its_outputs_toward_the_teachers_clean_prediction():
    """The student takes one SGD step on the DMD loss against a critic that has fitted its samples (a point
    mass at G: critic_x0 = G). Its new outputs G' are closer to the teacher's clean prediction than G was, both
    to the prediction DMD pointed at and to the teacher's prediction of G' noised the same way. Fails if the
    DMD direction is flipped (the step then moves away from the teacher)."""
    teacher = Recorded(_denoiser(0).requires_grad_(False))
    student = _denoiser(1)
    ctx, ctx_act, noise, blk_act = _clips()
    G = _generate(student, ctx, ctx_act, noise, blk_act)
    loss, _ = _dmd(teacher, PointMass(G), ctx, ctx_act, G, blk_act)
    assert loss.item() > 0
    student.zero_grad()
    loss.backward()
    lr = 1e-3
    with torch.no_grad():
        for p in student.parameters():
            p -= lr * p.grad / max(p.grad.norm().item(), 1e-12)  # a small step of every tensor's direction
        G_new = _generate(student, ctx, ctx_act, noise, blk_act)
        (call,) = teacher.calls
        s = call["level"][:, None, None, None, None]
        # the same noise at the same level on the new outputs: noisy' = noisy + (1 - s) (G' - G)
        noisy_new = call["noisy"] + (1 - s) * (G_new - G.detach())
        B = ctx.shape[0]
        sigma = torch.cat([torch.zeros(B, N_CTX), s.flatten()[:, None].expand(-1, BLOCK)], 1)
        x0_new = teacher.score(torch.cat([ctx, noisy_new], 1), sigma, torch.cat([ctx_act, blk_act], 1),
                               frame_mask=causal_mask(N_CTX + BLOCK))[:, N_CTX:]
    assert (G_new - G.detach()).abs().max() > 1e-5  # the step did move the outputs
    before = (G.detach() - call["x0"]).flatten(1).norm(dim=1)  # ~23 here; the step closes ~0.04 of it
    margin = 1e-4 * before  # far above float32 rounding of these norms
    assert ((G_new - call["x0"]).flatten(1).norm(dim=1) < before - margin).all()
    assert ((G_new - x0_new).flatten(1).norm(dim=1) < before - margin).all()


def test_action_guidance_moves_the_real_score_along_the_actions_effect():
    """guidance=g: the real score is the teacher's action-free prediction plus g times what the actions change
    (classifier-free guidance). The target then equals DMD's with a teacher whose prediction is that mix; with
    g = 1 the action-free pass is not even run."""
    torch.manual_seed(0)
    net = make_model("tiny", channels=3, height=16, width=16, patch=4, action_dim=ACTIONS, null_action=True)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    teacher = Recorded(Denoiser(net, NoiseSchedule()).requires_grad_(False))
    critic = _denoiser(2)
    ctx, ctx_act, noise, blk_act = _clips()
    with torch.no_grad():
        G = _generate(_denoiser(1), ctx, ctx_act, noise, blk_act)
    _dmd(teacher, critic, ctx, ctx_act, G, blk_act)
    assert len(teacher.calls) == 1
    teacher.calls.clear()
    G.requires_grad_(True)
    loss = losses.dmd_loss(teacher, critic, ctx, ctx_act, G, blk_act, SHIFT, T_MIN, T_MAX,
                           torch.Generator().manual_seed(7), guidance=3.0)[0]
    loss.backward()
    cond, free = teacher.calls
    assert not torch.allclose(cond["x0"], free["x0"])  # the actions matter to this teacher
    real = free["x0"] + 3.0 * (cond["x0"] - free["x0"])
    with torch.no_grad():
        fake = losses._denoise_blocks(critic, ctx, ctx_act, cond["noisy"], blk_act, cond["level"])
    normaliser = (G.detach() - real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
    torch.testing.assert_close(G.grad, (fake - real) / normaliser / G.numel(), rtol=1e-4, atol=1e-9)
