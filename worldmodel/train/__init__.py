"""Training: clips from recordings, the run plumbing, teacher and codec training."""
