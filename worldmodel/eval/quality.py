"""Frame quality Q for the paper's long-horizon drift, without a pretrained network: FD-pix.

The paper measures drift as dDrift = Q(first 5 s) - Q(last 5 s) of a long session, with Q an image-quality score.
No perceptual network can be downloaded here, so Q is built from the games' own frames and named for what it is:
**FD-pix**, the Frechet distance between the distribution of per-frame pixel statistics of a generated clip and that
of real clips of the same game (**FD-pix+enc** when a codec's latents are added).

Every frame gives a short vector of statistics (at most 36 numbers, + 3 per latent channel) in families:

- ``gamut`` (5): how far its colours lie from the colours real frames use. Every real pixel colour, scaled by
  brightness factors 1/4 .. 4 (the same surface nearer or farther in the fog), marks its bin of a 64^3 colour grid;
  bins within one bin of a marked one count as real; a pixel's distance is the Chebyshev distance of its bin to the
  nearest real bin. Fractions of pixels 1, 2, 4, 8 bins away (square roots) and the mean. Colour shift,
  noise and the mixed colours of blur leave the gamut.
- ``palette`` (<= 16): how much of each of 16 main colours (k-means on real pixels; Pong has only 7 colours) the
  frame shows, as square roots of the fractions so that a 4x4 ball or a 3x12 paddle counts: lost or extra sprites
  move these.
- ``structure`` (9): statistics of edges that do not depend on where things are: fractions of pixels with a gradient
  of 2 .. 128 levels, and the sharpness ratios sum(d_s^2) / sum(d_2s^2) of differences over s and 2s pixels
  (s = 1, 2): 1/2 for hard edges, falling to 1/4 as blur widens them, 1 for white noise.
- ``motion`` (6): fractions of pixels that changed since the previous frame by 2, 8, 32, 128 levels, the mean change,
  and c1 / (c1 + c2) of the mean changes over one frame and over two (1/3 .. 1/2 for steady motion, 0 for a
  repeated frame). Frozen and stuttering clips collapse them.
- ``latent`` (3 per channel, only with a codec): spatial mean and standard deviation of each latent channel and its
  mean absolute change since the previous frame.

Each statistic is standardised by the real frames' mean and standard deviation (floored at ``min_std`` so that a
statistic that never varies in the real game keeps a finite scale). A family scores the Frechet distance between
diagonal Gaussians, |mu_g - mu_r|^2 + |sd_g - sd_r|^2 in standard units, per statistic; Q is the mean over families,
so each aspect weighs the same however many statistics it has. Lower is better; a real clip scores about 1 (the
finite-sample floor), not 0. The diagonal covariance keeps Q stable at 150 frames (5 s at 30 fps), where a full
covariance of a few dozen dimensions would be mostly sampling noise.

Weaknesses. Q sees single frames and pairs of frames: sharp, well-coloured frames of a wrong game state (a paddle in
the wrong place, a maze that rearranges itself, broken physics) score like real ones; fidelity under the same actions
and the control probes (``games.probes``) measure those. The gamut is sampled: a colour that the reference clips
never showed (a rare landmark wall) counts as off-gamut, so fit on thousands of frames from many episodes. Decoded
frames of a lossy codec leave the gamut everywhere; to measure the dynamics apart from the codec, fit the reference on
real frames passed through the codec. Real clips of a varied game differ among themselves (maze: each quarter of the
map has its own wall colour), so differences of Q smaller than the spread of held-out real clips mean nothing. The
scale is relative and very uneven: noise and colour shift leave the gamut and score in the tens to hundreds, while
blur and stutter move Q by a few times the real floor, and a colour shift of less than ~16 grey levels goes unseen
once the reference has filled in a varied game's gamut (maze). Compare Q between models of one game against one
fitted reference, never across games. ``tests/test_quality.py`` holds the calibration: every corruption, at four
strengths, against held-out real clips.
"""
from __future__ import annotations

import numpy as np

from games.data.errors import InputError

LEVELS = 64  # colour grid bins per channel (4 grey levels each)
GAMUT_TOLERANCE = 1  # bins around the real colours that still count as real (the gamut is sampled, not known)
GAMUT_BRIGHTNESS = np.geomspace(0.25, 4.0, 129)  # a real colour times any of these is real too
GAMUT_THRESHOLDS = (1, 2, 4, 8)  # bins of distance to the real gamut
GAMUT_CAP = 16  # bins; farther colours count as this far
PALETTE = 16  # main colours of the real game
GRADIENT_THRESHOLDS = (2, 4, 8, 16, 32, 64, 128)  # grey levels
MOTION_THRESHOLDS = (2, 8, 32, 128)  # grey levels


# ---- corruptions: how Q is calibrated (and tested) ----------------------------------------------------------------
def corrupt(frames: np.ndarray, kind: str, strength: float, seed: int = 0) -> np.ndarray:
    """``frames`` uint8 [T, H, W, 3] degraded by ``kind``: "blur" (Gaussian, sigma in pixels), "noise" (additive
    Gaussian, sigma in grey levels), "colour" (channel offsets +s, -s, +s/2 grey levels) or "freeze" (every
    ``strength``-th frame held for ``strength`` frames; ``strength >= T`` holds the first frame throughout)."""
    x = np.asarray(frames)
    if kind == "freeze":
        k = int(strength)
        return np.repeat(x[::k], k, axis=0)[:len(x)]
    if kind == "blur":
        out = _gaussian_blur(x.astype(np.float32), float(strength))
    elif kind == "noise":
        out = x + np.random.default_rng(seed).normal(0.0, strength, x.shape).astype(np.float32)
    elif kind == "colour":
        out = x + np.array([strength, -strength, strength / 2], np.float32)
    else:
        raise InputError(f"unknown corruption {kind!r}; choose from blur, noise, colour, freeze")
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of float frames [T, H, W, C] along H and W, edges replicated."""
    r = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    for axis in (1, 2):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (r, r)
        p = np.moveaxis(np.pad(x, pad, mode="edge"), axis, 0)
        n = x.shape[axis]
        x = np.moveaxis(sum(w * p[i:i + n] for i, w in enumerate(k)), 0, axis)
    return x


# ---- the real game's colours ---------------------------------------------------------------------------------------
class ColourTable:
    """Per-bin look-ups on a LEVELS^3 colour grid, one gather a pixel: the nearest of the real game's ``palette``
    main colours, and the distance in bins from the real gamut (see the module docstring)."""

    def __init__(self, real_clips: list[np.ndarray], palette: int = PALETTE, seed: int = 0):
        bins = np.concatenate([self.bin(c).ravel() for c in real_clips])
        # The gamut: every real colour, made brighter and darker (near walls or far in the fog, the same surface).
        seen = self.centre(np.unique(bins))  # [S, 3]
        scaled = (seen[None] * GAMUT_BRIGHTNESS[:, None, None]).reshape(-1, 3)  # [B * S, 3]
        scaled = scaled[scaled.max(1) < 256].astype(np.uint8)[None]  # a brighter colour must still exist
        front = np.zeros(LEVELS ** 3, bool)
        front[self.bin(scaled).ravel()] = True
        front = front.reshape(LEVELS, LEVELS, LEVELS)
        for _ in range(GAMUT_TOLERANCE):
            front = _dilate(front)
        # Distance transform by repeated 3x3x3 dilation: a bin first reached after k dilations is k bins away.
        self.gamut_distance = np.full(LEVELS ** 3, GAMUT_CAP, np.int8)  # [LEVELS^3]
        for k in range(GAMUT_CAP):
            self.gamut_distance[front.ravel() & (self.gamut_distance == GAMUT_CAP)] = k
            front = _dilate(front)
        sample = self.centre(bins[np.random.default_rng(seed).integers(len(bins), size=20000)])
        self.palette = _kmeans(sample, palette, seed)  # [K, 3]
        self.palette_index = _nearest(self.centre(np.arange(LEVELS ** 3)), self.palette)  # [LEVELS^3]

    @staticmethod
    def bin(frames: np.ndarray) -> np.ndarray:
        """Grid bin of every pixel of uint8 frames [T, H, W, 3] -> [T, H * W]."""
        q = frames.astype(np.int32) // (256 // LEVELS)
        return ((q[..., 0] * LEVELS + q[..., 1]) * LEVELS + q[..., 2]).reshape(len(frames), -1)

    @staticmethod
    def centre(bins: np.ndarray) -> np.ndarray:
        """The colour float32 [..., 3] at the centre of grid ``bins``."""
        step = 256 // LEVELS
        rgb = np.stack([bins // LEVELS ** 2, bins // LEVELS % LEVELS, bins % LEVELS], -1)
        return (rgb * step + (step - 1) / 2).astype(np.float32)

    def lookup(self, frames: np.ndarray):
        """(palette index, gamut distance in bins) of every pixel of uint8 frames [T, H, W, 3], each [T, H * W]."""
        bins = self.bin(frames)
        return self.palette_index[bins], self.gamut_distance[bins]


def _dilate(mask: np.ndarray) -> np.ndarray:
    """A 3-D boolean ``mask`` grown by one cell in every direction (diagonals included)."""
    for axis in range(3):
        grown = mask.copy()
        m, g = np.moveaxis(mask, axis, 0), np.moveaxis(grown, axis, 0)
        g[1:] |= m[:-1]
        g[:-1] |= m[1:]
        mask = grown
    return mask


def _kmeans(points: np.ndarray, k: int, seed: int, iters: int = 10) -> np.ndarray:
    """``k`` centres [k, 3] of ``points`` [P, 3] by Lloyd's algorithm from seeded distinct points (all the distinct
    points when there are no more than ``k``, as with Pong's handful of colours)."""
    distinct = np.unique(points, axis=0)
    if len(distinct) <= k:
        return distinct
    centres = distinct[np.random.default_rng(seed).choice(len(distinct), k, replace=False)]
    for _ in range(iters):
        assign = _nearest(points, centres)
        counts = np.bincount(assign, minlength=k)[:, None]
        sums = np.stack([np.bincount(assign, points[:, c], minlength=k) for c in range(3)], 1)
        centres = np.where(counts > 0, sums / np.maximum(counts, 1), centres).astype(np.float32)
    return centres


def _nearest(points: np.ndarray, centres: np.ndarray, block: int = 32768) -> np.ndarray:
    """Index [P] of the nearest of ``centres`` [K, 3] to each of ``points`` [P, 3], in blocks to bound memory."""
    out = np.empty(len(points), np.int64)
    c2 = (centres ** 2).sum(1)
    for s in range(0, len(points), block):
        p = points[s:s + block]
        out[s:s + block] = (c2[None] - 2 * p @ centres.T).argmin(1)  # |p|^2 is the same for every centre
    return out


# ---- Q ---------------------------------------------------------------------------------------------------------------
def as_clips(frames) -> list[np.ndarray]:
    """One clip uint8 [T, H, W, 3], several stacked [E, T, H, W, 3], or a list of clips -> a list of clips."""
    clips = [frames] if isinstance(frames, np.ndarray) and frames.ndim == 4 else list(frames)
    if not clips or any(np.ndim(c) != 4 or np.shape(c)[-1] != 3 or len(c) < 3 for c in clips):
        raise InputError("frames must be clips [T, H, W, 3] of at least 3 frames each")
    if any(np.asarray(c).dtype != np.uint8 for c in clips):
        raise InputError("frames must be uint8 (0..255)")
    return [np.asarray(c) for c in clips]


class FrameQuality:
    """Q (FD-pix): fitted once on real clips of a game, then ``score(frames)`` of any clip of that game."""

    def __init__(self, real_frames, codec=None, min_std: float = 0.02, seed: int = 0):
        """``real_frames``: real clips of consecutive frames (see ``as_clips``); thousands of frames from many
        episodes. ``codec``: a ``worldmodel.nn.codec`` codec whose latents add the ``latent`` family (optional)."""
        clips = as_clips(real_frames)
        self.frame_shape = clips[0].shape[1:]
        self.codec = codec
        self.name = "FD-pix+enc" if codec is not None else "FD-pix"
        self.colours = ColourTable(clips, seed=seed)
        feats = [self.features(c, standardise=False) for c in clips]
        self.mean, self.std = {}, {}
        for fam in feats[0]:
            f = np.concatenate([x[fam] for x in feats])  # [N, D]
            self.mean[fam], self.std[fam] = f.mean(0), np.maximum(f.std(0), min_std)

    def features(self, frames: np.ndarray, standardise: bool = True) -> dict[str, np.ndarray]:
        """Statistics of a clip uint8 [T, H, W, 3] (T >= 3): {family: [T - 2, D]} for frames 2 .. T-1 (the first two
        are the history of the motion statistics), in standard units of the real frames unless not ``standardise``."""
        x = as_clips(frames)[0]
        if x.shape[1:] != self.frame_shape:
            raise InputError(f"frames of shape {x.shape[1:]} against real frames of shape {self.frame_shape}")
        cur = x[2:]
        palette, gamut = self.colours.lookup(cur)  # [n, H*W] each
        n, k = palette.shape[0], len(self.colours.palette)
        counts = np.bincount((palette + k * np.arange(n)[:, None]).ravel(), minlength=n * k).reshape(n, k)
        out = {
            "gamut": np.stack([np.sqrt(np.count_nonzero(gamut >= t, axis=1) / gamut.shape[1])
                               for t in GAMUT_THRESHOLDS] + [gamut.mean(1) / 4], 1),
            "palette": np.sqrt(counts / palette.shape[1]),
            "structure": _structure(cur.astype(np.int16)),
            "motion": _motion(x.astype(np.int16)),
        }
        if self.codec is not None:
            out["latent"] = self._latent(x)
        if not standardise:
            return out
        return {fam: (v - self.mean[fam]) / self.std[fam] for fam, v in out.items()}

    def _latent(self, x: np.ndarray, batch: int = 256) -> np.ndarray:
        import torch

        device = next(iter(self.codec.parameters()), torch.empty(0)).device
        with torch.no_grad():
            z = np.concatenate([self.codec.encode(torch.from_numpy(x[s:s + batch]).to(device)).float().cpu().numpy()
                                for s in range(0, len(x), batch)])  # [T, C, h, w]
        change = np.abs(z[2:] - z[1:-1]).mean((2, 3))
        return np.concatenate([z[2:].mean((2, 3)), z[2:].std((2, 3)), change], 1)  # [T - 2, 3C]

    def parts(self, frames) -> dict[str, float]:
        """The Frechet distance of each family (per statistic, in standard units) and Q, their mean, as ``total``."""
        parts = {fam: float(np.mean(z.mean(0) ** 2 + (z.std(0) - 1.0) ** 2))  # the real frames are N(0, 1)
                 for fam, z in self.features(frames).items()}
        parts["total"] = float(np.mean(list(parts.values())))
        return parts

    def score(self, frames) -> float:
        """Q of a clip uint8 [T, H, W, 3] (T >= 3; 150 frames = 5 s is the intended length): lower is better."""
        return self.parts(frames)["total"]


def _channel_max(a: np.ndarray) -> np.ndarray:
    """The largest of the 3 channels of [..., 3] (much faster than ``a.max(-1)`` on a short last axis)."""
    return np.maximum(np.maximum(a[..., 0], a[..., 1]), a[..., 2])


def _structure(x: np.ndarray) -> np.ndarray:
    """Edge statistics of frames int16 [n, H, W, 3] -> [n, 9]: square roots of the fractions of pixels whose
    largest one-pixel gradient (any channel, either direction) reaches each threshold, and the sharpness ratios."""
    n = len(x)
    gx = _channel_max(np.abs(np.diff(x, axis=2)))  # [n, H, W-1]
    gy = _channel_max(np.abs(np.diff(x, axis=1)))  # [n, H-1, W]
    grad = np.maximum(gx[:, :-1], gy[:, :, :-1]).reshape(n, -1)
    fractions = [np.sqrt(np.count_nonzero(grad >= t, axis=1) / grad.shape[1]) for t in GRADIENT_THRESHOLDS]
    xf = x.astype(np.float32)
    energy = {s: np.square(xf[:, s:] - xf[:, :-s]).sum((1, 2, 3))  # [n]: rows s apart, then columns
              + np.square(xf[:, :, s:] - xf[:, :, :-s]).sum((1, 2, 3)) for s in (1, 2, 4)}
    sharpness = [energy[s] / np.maximum(energy[2 * s], 1.0) for s in (1, 2)]
    return np.stack(fractions + sharpness, 1)


def _motion(x: np.ndarray) -> np.ndarray:
    """Change statistics of a clip int16 [T, H, W, 3] -> [T - 2, 6] for frames 2 .. T-1."""
    d1 = _channel_max(np.abs(x[2:] - x[1:-1])).reshape(len(x) - 2, -1)  # [T-2, H*W] change over one frame
    d2 = _channel_max(np.abs(x[2:] - x[:-2])).reshape(len(x) - 2, -1)  # change over two frames
    m1, m2 = d1.mean(1), d2.mean(1)
    fractions = [np.sqrt(np.count_nonzero(d1 >= t, axis=1) / d1.shape[1]) for t in MOTION_THRESHOLDS]
    return np.stack(fractions + [np.log1p(m1) / 4, m1 / np.maximum(m1 + m2, 0.05)], 1)


def drift(quality: FrameQuality, frames: np.ndarray, fps: float, seconds: float = 5.0) -> dict:
    """The paper's dDrift of a long session uint8 [T, H, W, 3] from Q of its first and its last ``seconds``.

    The paper's Q is higher-is-better and dDrift = Q(first) - Q(last); FD-pix is lower-is-better, so here
    ``ddrift = last - first``: in both a positive dDrift means that the session got worse as it went on."""
    n = int(round(fps * seconds))
    if n < 3 or len(frames) < 2 * n:
        raise InputError(f"drift needs a session of at least 2 x {seconds:g} s = {2 * n} frames at {fps:g} fps "
                         f"(and 3 frames a part), got {len(frames)}")
    first, last = quality.score(frames[:n]), quality.score(frames[-n:])
    return {"first": first, "last": last, "ddrift": last - first, "frames": n}
