"""Streaming inference: the KV cache, the rolling window tick, the playable session, batched rollouts, sampling."""
