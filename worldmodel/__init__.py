"""The world model: codec, denoiser, Rolling Forcing inference and training (plain PyTorch, no window)."""
