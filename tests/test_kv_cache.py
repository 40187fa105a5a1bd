"""The KV cache after many ring evictions: a cached pass equals one full pass over what the cache still holds.

After many more pushes than the ring holds, ``cached_pass`` over a window must equal an uncached pass of the
network over [sink frames, surviving recent frames oldest first, the window] at positions 0..n-1 (Rolling
Forcing, Sec. 3.2: the sink sits just before the recent frames, positions re-indexed every tick, never absolute).

The cached frames' keys/values were computed when they were pushed, by a pass that saw what the cache held
*then*; a full pass over the surviving frames can only reproduce them where a frame's keys do not depend on
that. Two configurations make the equivalence exact, and the reference pass gives each cached frame exactly the
inputs it had when encoded (its own level 0, action and, with ``stack_prev``, the frame pushed before it):

- ``engine``: pushed as the engine does (``start_cache``, then ``cached_pass(..., reencode=True)`` + ``push``)
  with a depth-1 DiT: its only keys/values are computed from each frame's own tokens before any attention, so the
  context a frame saw when encoded (now partly evicted) cannot matter.
- ``alone``: a depth-2 DiT whose frames were each encoded by a pass of that frame alone; in the reference the
  cached frames attend only to themselves, which makes their second-layer keys the same at any position (a
  frame's query and key share its time rotation).
"""
import pytest
import torch

from worldmodel.engine.kv_cache import KVCache, cached_pass, start_cache
from worldmodel.nn.dit import make_model
from worldmodel.nn.flow import Denoiser, NoiseSchedule

ACTIONS = 2
SIZE = dict(channels=3, height=16, width=16, patch=4, action_dim=ACTIONS)  # 16 tokens per frame


def _denoiser(depth: int) -> Denoiser:
    """A tiny DiT, perturbed off adaLN-zero's identity start so that every path (and position) carries signal."""
    torch.manual_seed(0)
    net = make_model("tiny", depth=depth, **SIZE).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return Denoiser(net, NoiseSchedule())


def _filled_cache(scheme: str, sink: int, recent: int, batch: int = 2):
    """A cache after ``sink + 3 * recent + 1`` pushes (2 * recent + 1 ring evictions, the ring's slot order
    rotated away from its age order). Returns (denoiser, cache, every pushed frame [B, P, C, h, w] in push order,
    their actions [B, P, A])."""
    den = _denoiser(depth=1 if scheme == "engine" else 2)
    g = torch.Generator().manual_seed(1)
    pushes = sink + 3 * recent + 1
    frames = torch.rand(batch, pushes, 3, 16, 16, generator=g) * 2 - 1
    actions = (torch.rand(batch, pushes, ACTIONS, generator=g) < 0.5).float()
    zeros = torch.zeros(batch, 1)
    with torch.no_grad():
        if scheme == "engine":
            n_start = max(sink, 1)
            actions[:, :n_start] = 0  # start_cache encodes the start frames with no-op actions
            cache = start_cache(den, frames[:, :n_start], ACTIONS, sink, recent)
            for k in range(n_start, pushes):
                _, kv = cached_pass(den, cache, frames[:, k:k + 1], zeros, actions[:, k:k + 1], reencode=True)
                cache.push(kv, frames[:, k:k + 1])
        else:
            cfg = den.net.cfg
            cache = KVCache(cfg.depth, cfg.heads, cfg.dim // cfg.heads, cfg.tokens_per_frame, sink, recent,
                            batch=batch)
            for k in range(pushes):
                prev = frames[:, k - 1:k] if k else torch.zeros_like(frames[:, :1])
                _, kv = den(frames[:, k:k + 1], zeros, actions[:, k:k + 1], prev=prev,
                            prev_sigma=zeros if k else zeros + 1, return_kv=True)
                cache.push(kv, frames[:, k:k + 1])
    return den, cache, frames, actions


def _window(batch: int = 2):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(batch, 3, 3, 16, 16, generator=g)
    sigma = torch.tensor([[0.25, 0.5, 0.75]]).expand(batch, -1)
    return x, sigma, (torch.rand(batch, 3, ACTIONS, generator=g) < 0.5).float()


def _full_pass(den, scheme, frames, actions, kept: list[int], x, sigma, acts, positions: torch.Tensor):
    """The uncached reference: one pass over [pushed frames ``kept`` (in that order), the window] at
    ``positions``; each cached frame at level 0 with the ``prev`` it was encoded with, attending as it did when
    encoded (``engine``: irrelevant at depth 1, kept causal; ``alone``: itself only); the window sees them all
    and itself. Returns the window's clean predictions."""
    B, n, T = x.shape[0], len(kept), x.shape[1]
    ctx = frames[:, kept]
    prev_of = [frames[:, k - 1] if k else torch.zeros_like(frames[:, 0]) for k in kept]
    prev = torch.cat([torch.stack(prev_of, 1), frames[:, kept[-1:]], x[:, :-1]], 1)
    prev_sigma = torch.cat([torch.tensor([[0.0 if k else 1.0 for k in kept]]).expand(B, -1), torch.zeros(B, 1),
                            sigma[:, :-1]], 1)
    mask = torch.ones(n + T, n + T, dtype=torch.bool)
    mask[:n, :n] = torch.ones(n, n, dtype=torch.bool).tril() if scheme == "engine" else torch.eye(n, dtype=torch.bool)
    mask[:n, n:] = False
    out = den(torch.cat([ctx, x], 1), torch.cat([torch.zeros(B, n), sigma], 1), torch.cat([actions[:, kept], acts], 1),
              prev=prev, prev_sigma=prev_sigma, frame_pos=positions, frame_mask=mask)
    return out[:, n:]


CASES = [("engine", 2, 3), ("engine", 0, 3), ("alone", 2, 3), ("alone", 1, 4)]


@pytest.mark.parametrize("scheme,sink,recent", CASES)
def test_cached_pass_after_many_evictions_equals_a_full_pass_at_reindexed_positions(scheme, sink, recent):
    """The sink's first frames and the ``recent`` newest frames, oldest first, at 0..n-1, the window at n..:
    fails if the ring evicts the wrong frame, lays its slots out in slot order, or feeds absolute positions."""
    den, cache, frames, actions = _filled_cache(scheme, sink, recent)
    pushes = frames.shape[1]
    survivors = list(range(pushes - recent, pushes))
    # the ring evicted its oldest frames; with this many pushes its slots are no longer in age order, so the
    # layout must sort them (a layout in slot order fails the comparison below)
    assert sorted(cache.frame_age[sink:].tolist()) == survivors
    assert cache.frame_age[:sink].tolist() == list(range(sink))  # the sink holds the first frames, forever
    x, sigma, acts = _window()
    kept = list(range(sink)) + survivors
    with torch.no_grad():
        cached = cached_pass(den, cache, x, sigma, acts)
        reindexed = _full_pass(den, scheme, frames, actions, kept, x, sigma, acts, torch.arange(len(kept) + 3))
        # the same frames at their absolute push indices, the window after the newest: what re-indexing avoids
        absolute = _full_pass(den, scheme, frames, actions, kept, x, sigma, acts,
                              torch.tensor(kept + [pushes, pushes + 1, pushes + 2]))
    torch.testing.assert_close(cached, reindexed, rtol=1e-4, atol=1e-4)
    if sink:  # (without a sink the absolute layout is the re-indexed one shifted: rotary positions are relative)
        assert (cached - absolute).abs().max() > 1e-2  # the network can tell the two layouts apart


@pytest.mark.parametrize("scheme,sink,recent", CASES[:1] + CASES[2:3])
def test_a_cache_laid_out_at_absolute_push_indices_no_longer_matches(monkeypatch, scheme, sink, recent):
    """The equality above holds because the cache feeds re-indexed positions: laying its frames out at their
    absolute push indices (``frame_age``) instead breaks it. Guards that the cached pass takes its positions
    from ``KVCache.layout`` and that the comparison is sensitive to them."""
    den, cache, frames, actions = _filled_cache(scheme, sink, recent)
    pushes = frames.shape[1]
    kept = list(range(sink)) + list(range(pushes - recent, pushes))
    x, sigma, acts = _window()
    with torch.no_grad():
        reindexed = _full_pass(den, scheme, frames, actions, kept, x, sigma, acts, torch.arange(len(kept) + 3))
        original = KVCache.layout

        def absolute(self, without_evicted=False):
            slots, _, n = original(self, without_evicted)
            return slots, self.frame_age[slots], n

        monkeypatch.setattr(KVCache, "layout", absolute)
        cached = cached_pass(den, cache, x, sigma, acts)
    assert (cached - reindexed).abs().max() > 1e-2
