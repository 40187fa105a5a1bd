"""The KV cache of a streaming session: attention-sink frames kept forever plus a ring of recent clean frames.

Keys are stored with their spatial rotation but without their time rotation (``attention.LayerContext``); every
tick the cache lays its frames out at fresh positions: sink frames at ``0..S-1``, recent frames at ``S..S+n-1``
in age order, the window right after. Positions therefore never grow however long a session runs, and the sink
always sits just before the recent frames (Rolling Forcing, Sec. 3.2: attention sink with re-indexed positions).

All buffers are allocated once, so memory is constant for the whole session.
"""
from __future__ import annotations

import torch

from worldmodel.nn.attention import LayerContext, causal_mask


class KVCache:
    """``sink`` sink frames + a ring of ``recent`` frames, for ``layers`` layers of ``heads`` x ``head_dim``, for
    ``batch`` sessions that advance in lockstep (training rollouts; the engine uses one)."""

    def __init__(self, layers: int, heads: int, head_dim: int, tokens_per_frame: int, sink: int, recent: int,
                 device=None, dtype=torch.float32, batch: int = 1):
        self.n_tokens = tokens_per_frame
        self.sink_capacity, self.recent_capacity = sink, recent
        slots = sink + recent
        shape = (layers, batch, heads, slots * tokens_per_frame, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # [layer, B, heads, slots*N, head_dim]
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.frame_age = torch.full((slots,), -1, dtype=torch.long)  # -1 = empty; else the tick it was pushed
        self.last_clean: torch.Tensor | None = None  # the newest cached clean latent [B, 1, C, h, w] (stack_prev)
        self.n_sink = 0
        self._pushes = 0

    @property
    def n_recent(self) -> int:
        return int((self.frame_age[self.sink_capacity:] >= 0).sum())

    @property
    def n_frames(self) -> int:
        return self.n_sink + self.n_recent

    def _write(self, slot: int, kv: list[tuple[torch.Tensor, torch.Tensor]], frame: int) -> None:
        n = self.n_tokens
        for layer, (k, v) in enumerate(kv):  # k, v: [B, heads, T*N, head_dim]
            self.k[layer, :, :, slot * n:(slot + 1) * n] = k[:, :, frame * n:(frame + 1) * n].detach()
            self.v[layer, :, :, slot * n:(slot + 1) * n] = v[:, :, frame * n:(frame + 1) * n].detach()
        self.frame_age[slot] = self._pushes
        self._pushes += 1

    def push(self, kv: list[tuple[torch.Tensor, torch.Tensor]], latent: torch.Tensor) -> None:
        """Add the clean frames whose per-layer keys/values are ``kv`` (T frames) and latents [1, T, C, h, w]:
        into the sink while it has room, then into the ring, evicting the oldest recent frame. What is stored
        never carries gradient (``kv`` and ``latent`` are detached)."""
        for t in range(latent.shape[1]):
            if self.n_sink < self.sink_capacity:
                self._write(self.n_sink, kv, t)
                self.n_sink += 1
            elif self.recent_capacity > 0:
                ring = self.frame_age[self.sink_capacity:]
                empty = (ring < 0).nonzero()
                slot = int(empty[0]) if len(empty) else int(ring.argmin())
                self._write(self.sink_capacity + slot, kv, t)
            self.last_clean = latent[:, t:t + 1].detach()

    @property
    def full(self) -> bool:
        """The next push will evict a recent frame."""
        return self.n_sink == self.sink_capacity and self.n_recent == self.recent_capacity > 0

    def layout(self, without_evicted: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The occupied slots in attention order and their time positions now: (slots [n], pos [n], n).

        Sink frames first (positions 0..S-1), then recent frames oldest first (S..S+n-1). With
        ``without_evicted``, the recent frame that the next push will evict is left out.
        """
        sink = torch.arange(self.n_sink)
        ring_age = self.frame_age[self.sink_capacity:]
        occupied = (ring_age >= 0).nonzero().flatten()
        recent = self.sink_capacity + occupied[ring_age[occupied].argsort()]
        if without_evicted and self.full:
            recent = recent[1:]
        slots = torch.cat([sink, recent])
        return slots, torch.arange(len(slots)), len(slots)

    @property
    def slots(self) -> int:
        return self.sink_capacity + self.recent_capacity

    def context(self, without_evicted: bool = False) -> tuple[list[LayerContext], torch.Tensor, int]:
        """What a pass attends to in the cache this tick: (per-layer keys/values over *every* slot, [slots]
        booleans marking the slots it may see, how many that is).

        The keys/values are views of the preallocated buffers (no copy) in slot order, so a pass has the same
        shapes from the first tick to the last; empty slots (and, ``without_evicted``, the frame the next push
        will evict) are hidden by the mask. Each seen slot carries its time position of the current layout.
        """
        slots, pos, n = self.layout(without_evicted)
        seen = torch.zeros(self.slots, dtype=torch.bool)
        seen[slots] = True
        slot_pos = torch.zeros(self.slots, dtype=torch.long)
        slot_pos[slots] = pos
        slot_pos = slot_pos.to(self.k.device)
        return [LayerContext(self.k[i], self.v[i], slot_pos) for i in range(self.k.shape[0])], seen.to(self.k.device), n

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


def cached_pass(denoiser, cache: KVCache, x, sigma, actions, reencode: bool = False):
    """One forward over input frames x [B, T, C, h, w] (levels sigma [B, T], actions [B, T, A]) attending to
    the cache and, bidirectionally, to each other; returns clean-frame predictions [B, T, C, h, w].

    With ``reencode``, x[:, 0] is a finished clean frame whose keys/values the caller pushes into the cache
    (also returned): it attends only to the cache and itself, and this pass already sees the cache as it
    will be after that push, without the frame the push evicts. A frame's clean re-encode thus sees the sink
    and the C-1 newest recent frames, whether it runs alone or fused in front of the next window.

    Every pass sees every cache slot, masked, so the steady-state tick has one fixed shape (``compile``).
    """
    context, seen, n_ctx = cache.context(without_evicted=reencode)
    B, T, slots = x.shape[0], x.shape[1], seen.numel()
    device = x.device
    mask = torch.ones(T, slots + T, dtype=torch.bool, device=device)
    mask[:, :slots] = seen
    if reencode:
        mask[0, slots + 1:] = False
    prev = torch.cat([cache.last_clean, x[:, :-1]], dim=1)
    prev_sigma = torch.cat([torch.zeros(B, 1, device=device), sigma[:, :-1]], dim=1)
    return denoiser(x, sigma, actions, prev=prev, prev_sigma=prev_sigma,
                    frame_pos=torch.arange(n_ctx, n_ctx + T, device=device), frame_mask=mask, context=context,
                    return_kv=reencode)


@torch.no_grad()
def start_cache(denoiser, start: torch.Tensor, action_dim: int, sink: int, recent: int) -> KVCache:
    """A cache holding the clean start latents [B, S, C, h, w], as ``WorldSession.reset`` fills it: one causal
    pass at level 0 with no key held; the first ``sink`` frames go to the sink, the rest into the ring (which
    keeps at least one slot when there is no sink: the newest frame must be seen)."""
    net = denoiser.net.cfg
    B, S = start.shape[:2]
    recent = max(recent, 1 if sink == 0 else 0)
    cache = KVCache(net.depth, net.heads, net.dim // net.heads, net.tokens_per_frame, sink, recent,
                    device=start.device, dtype=start.dtype, batch=B)
    noop = torch.zeros(B, S, action_dim, device=start.device)
    _, kv = denoiser(start, torch.zeros(B, S, device=start.device), noop, frame_mask=causal_mask(S, start.device),
                     return_kv=True)
    cache.push(kv, start)
    return cache
