"""Image fidelity metrics on batches of frames: MSE, PSNR and SSIM with the data range stated, never guessed.

The one place these formulas live: evaluation, the training and distillation reports, the sampler's printout and
the codec's measurements all call them. PSNR = 10 log10(L^2 / MSE) with L the data range. Over many samples the
figure is ``pooled_psnr``, the PSNR of the mean squared error: a mean of per-sample PSNRs would be infinite as soon
as one sample is an exact copy.

SSIM follows Wang et al. (2004): local means, variances and covariance under an 11x11 Gaussian window (sigma 1.5),
constants C1 = (0.01 L)^2 and C2 = (0.03 L)^2 with L the data range, averaged over the valid (unpadded) positions
and the colour channels. ``data_range`` is a required argument: a library that infers it from the arrays' dtype or
values silently changes C1 and C2, and with them every score.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def mse_per_frame(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean squared error of each pair of frames [N, H, W, C] -> float64 [N]."""
    d = a.astype(np.float64) - b.astype(np.float64)
    return (d ** 2).reshape(len(d), -1).mean(1)


def psnr_of_mse(mse, data_range: float):
    """PSNR in dB of a mean squared error (a number or an array of them; inf for 0)."""
    with np.errstate(divide="ignore"):
        return 10 * np.log10(data_range ** 2 / np.asarray(mse, np.float64))


def psnr_per_frame(a: np.ndarray, b: np.ndarray, data_range: float) -> np.ndarray:
    """PSNR in dB of each pair of frames [N, H, W, C] (inf for identical frames)."""
    return psnr_of_mse(mse_per_frame(a, b), data_range)


def psnr(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """PSNR in dB of one pair of frames [H, W, C] (inf for identical frames)."""
    return float(psnr_per_frame(a[None], b[None], data_range)[0])


def pooled_psnr(mse: np.ndarray, data_range: float, axis: int = 0) -> np.ndarray:
    """PSNR of the mean squared error over the samples along ``axis`` (e.g. [starts, horizons] -> [horizons]).
    The mean is floored at 1e-10 so that a model that copies every sample exactly still scores a finite figure
    (the report and its JSON want numbers)."""
    return psnr_of_mse(np.maximum(np.mean(mse, axis), 1e-10), data_range)


def _gaussian(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def ssim(a: np.ndarray, b: np.ndarray, data_range: float, window: int = 11, sigma: float = 1.5) -> np.ndarray:
    """SSIM of each pair of frames [N, H, W, C] (any real dtype), one value per frame in [-1, 1]."""
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"ssim needs two [N, H, W, C] arrays of one shape, got {a.shape} and {b.shape}")
    # float32 for speed; variances and covariance of values centred on half the range (no cancellation error)
    half = data_range / 2
    x = torch.from_numpy(np.ascontiguousarray(a)).float().permute(0, 3, 1, 2) - half  # [N, C, H, W]
    y = torch.from_numpy(np.ascontiguousarray(b)).float().permute(0, 3, 1, 2) - half
    C = x.shape[1]
    g = _gaussian(window, sigma).float()
    down, across = g.view(1, 1, -1, 1).repeat(C, 1, 1, 1), g.view(1, 1, 1, -1).repeat(C, 1, 1, 1)

    def blur(t):  # the separable Gaussian over valid positions only (no padding invents pixels at the border)
        return F.conv2d(F.conv2d(t, down, groups=C), across, groups=C)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    mu_x, mu_y = mu_x + half, mu_y + half
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.mean(dim=(1, 2, 3)).numpy()  # over positions and channels
