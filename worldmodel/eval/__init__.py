"""Evaluation: the metrics (MSE, PSNR, SSIM), fidelity by horizon, drift and its frame quality Q, the report."""
