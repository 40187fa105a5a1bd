"""The denoiser: shapes, masks (a frame never depends on frames its mask hides), cached context, learning."""
import pytest
import torch

from worldmodel.nn.attention import LayerContext, bidirectional_mask, causal_mask
from worldmodel.nn.flow import Denoiser, NoiseSchedule, drop_actions, flow_matching_loss
from worldmodel.nn.dit import MODELS, count_params, make_model


def _model(**kw):
    torch.manual_seed(0)
    m = make_model("tiny", action_dim=3, patch=8, **kw).eval()
    with torch.no_grad():  # leave adaLN-zero's identity start so that every path carries signal
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def _inputs(T=5, B=2):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(B, T, 3, 64, 64, generator=g), torch.rand(B, T, generator=g),
            torch.randn(B, T, 3, generator=g))


def test_shapes_and_registry():
    m = _model()
    x, s, a = _inputs()
    assert m(x, s, a).shape == x.shape
    assert set(MODELS) >= {"tiny", "small", "base"}
    assert count_params(make_model("small", action_dim=3)) > 10 * count_params(make_model("tiny", action_dim=3))
    assert count_params(make_model("base", action_dim=3)) > 5 * count_params(make_model("small", action_dim=3))
    wide = make_model("tiny", action_dim=3, width=96)
    assert wide(torch.randn(1, 2, 3, 64, 96), torch.rand(1, 2), torch.randn(1, 2, 3)).shape == (1, 2, 3, 64, 96)


@pytest.mark.parametrize("stack_prev", [True, False])
def test_causal_mask_hides_later_frames(stack_prev):
    m = _model(stack_prev=stack_prev)
    x, s, a = _inputs()
    with torch.no_grad():
        ref = m(x, s, a, frame_mask=causal_mask(5))
        x2, s2, a2 = x.clone(), s.clone(), a.clone()
        x2[:, 3:] += 1.0
        s2[:, 3:] = 0.5
        a2[:, 3:] = -a2[:, 3:]
        out = m(x2, s2, a2, frame_mask=causal_mask(5))
    torch.testing.assert_close(out[:, :3], ref[:, :3], rtol=0, atol=1e-5)
    assert (out[:, 3:] - ref[:, 3:]).abs().max() > 1e-2  # ...and the later frames did change


def test_bidirectional_mask_lets_every_frame_see_every_frame():
    m = _model(stack_prev=False)
    x, s, a = _inputs()
    with torch.no_grad():
        ref = m(x, s, a, frame_mask=bidirectional_mask(5))
        x2 = x.clone()
        x2[:, 4] += 1.0
        out = m(x2, s, a, frame_mask=bidirectional_mask(5))
    assert (out[:, 0] - ref[:, 0]).abs().max() > 1e-3


def test_actions_condition_their_own_frame():
    m = _model()
    x, s, a = _inputs()
    with torch.no_grad():
        ref = m(x, s, a, frame_mask=causal_mask(5))
        a2 = a.clone()
        a2[:, 2] += 1.0
        out = m(x, s, a2, frame_mask=causal_mask(5))
    torch.testing.assert_close(out[:, :2], ref[:, :2], rtol=0, atol=1e-5)
    assert (out[:, 2] - ref[:, 2]).abs().max() > 1e-3


def test_a_missing_action_is_the_learned_null_action():
    """A NaN action row (flow.drop_actions) means "no action given": the network puts its null action there,
    whatever the row held, and a clip trained with every action dropped cannot tell its actions apart."""
    m = _model(null_action=True)
    x, s, a = _inputs()
    with torch.no_grad():
        m.cond.null_action.add_(torch.randn_like(m.cond.null_action))
        dropped = drop_actions(a, torch.tensor([True, False]))
        out = m(x, s, dropped, frame_mask=causal_mask(5))
        other = m(x, s, drop_actions(a + 1.0, torch.tensor([True, False])), frame_mask=causal_mask(5))
        ref = m(x, s, a, frame_mask=causal_mask(5))
    assert torch.isfinite(out).all() and torch.isnan(dropped[0]).all() and not torch.isnan(dropped[1]).any()
    torch.testing.assert_close(out[0], other[0])  # the dropped clip ignores what its actions were
    assert (out[0] - ref[0]).abs().max() > 1e-3  # and is not the conditioned prediction
    torch.testing.assert_close(out[1], ref[1])  # the kept clip is untouched
    den = Denoiser(m, NoiseSchedule())
    losses = [flow_matching_loss(den, x[:, :, :3], acts, NoiseSchedule(), generator=torch.Generator().manual_seed(2),
                                 action_dropout=1.0)[0] for acts in (a, a + 1.0)]
    assert losses[0].item() == losses[1].item()


def test_shifted_training_levels_reach_the_windows_top_levels():
    """The rolling window's two newest frames sit at levels 1.0 and 0.9: train_shift=3 (the sampler's shift) puts
    ~14 % of the training levels above 0.9, unshifted training ~1.4 %."""
    share = {}
    for shift in (1.0, 3.0):
        sched = NoiseSchedule(train_shift=shift, clean_context_prob=0.0)
        s = sched.sample_train_levels(4000, 8, generator=torch.Generator().manual_seed(0))
        share[shift] = (s > 0.9).float().mean().item()
    assert share[1.0] < 0.03 and 0.10 < share[3.0] < 0.18


def test_cached_context_equals_recomputing_the_whole_clip():
    """Keys/values of context frames (stored without time rotation) give the same outputs as a full pass."""
    m = _model()
    x, s, a = _inputs(T=6)
    with torch.no_grad():
        full = m(x, s, a, frame_mask=causal_mask(6))
        _, kv = m(x[:, :4], s[:, :4], a[:, :4], frame_mask=causal_mask(4), return_kv=True)
        context = [LayerContext(k, v, torch.arange(4)) for k, v in kv]
        mask = torch.ones(2, 6, dtype=torch.bool)
        mask[0, 5] = False
        out = m(x[:, 4:], s[:, 4:], a[:, 4:], prev=x[:, 3:5], prev_sigma=s[:, 3:5], frame_pos=torch.arange(4, 6),
                frame_mask=mask, context=context)
        # shifting every position by the same offset changes nothing: positions are relative
        shifted = [LayerContext(c.k, c.v, c.pos + 1000) for c in context]
        out_shifted = m(x[:, 4:], s[:, 4:], a[:, 4:], prev=x[:, 3:5], prev_sigma=s[:, 3:5],
                        frame_pos=torch.arange(1004, 1006), frame_mask=mask, context=shifted)
    torch.testing.assert_close(out, full[:, 4:], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out_shifted, out, rtol=1e-3, atol=1e-3)


def test_loss_falls_when_overfitting_a_tiny_clip_set():
    torch.manual_seed(0)
    m = make_model("tiny", action_dim=3, patch=8)
    schedule = NoiseSchedule()
    den = Denoiser(m, schedule)
    g = torch.Generator().manual_seed(0)
    x0 = torch.zeros(2, 4, 3, 64, 64)
    for t in range(4):  # a bright square moving right on a dark background
        x0[:, t, :, 20:28, 8 + 6 * t:16 + 6 * t] = 1.0
    x0 = x0 * 2 - 1
    a = torch.zeros(2, 4, 3)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)

    def loss_now():
        gen = torch.Generator().manual_seed(123)
        with torch.no_grad():
            return flow_matching_loss(den, x0, a, schedule, generator=gen)[0].item()

    before = loss_now()
    for _ in range(60):
        loss, _ = flow_matching_loss(den, x0, a, schedule, change_strength=5.0, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss_now() < 0.5 * before
