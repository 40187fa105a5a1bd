"""The networks: rotary attention over frame tokens, the DiT denoiser, the codecs, flow matching."""
