"""Codecs: exact pixels, autoencoder shapes, config round trips, sprite-weighted loss, the registry's errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from games.data.errors import InputError
from games.registry import make_game
from worldmodel.nn.codec import CODECS, Codec, ConvAutoencoder, PatchCodec, make_codec, time_codec

TINY_AE = dict(type="conv_ae", down=4, latent_channels=4, width=8, blocks=1)


def pong_frames(n: int, seed: int = 0) -> np.ndarray:
    """``n`` consecutive real pong frames [n, 64, 64, 3] uint8 under random paddle moves."""
    game = make_game("pong")
    rng = np.random.default_rng(seed)
    frames = [game.reset(seed)]
    for _ in range(n - 1):
        frames.append(game.step(rng.uniform(-1, 1, game.action_space.size).astype(np.float32)))
    game.close()
    return np.stack(frames)


def test_pixels_round_trip_is_exact():
    codec = make_codec({"type": "pixels"})
    frames = torch.randint(0, 256, (2, 3, 16, 24, 3), dtype=torch.uint8)
    z = codec.encode(frames)
    assert z.shape == (2, 3, 3, 16, 24) and codec.latent_shape(16, 24) == (3, 16, 24)
    assert z.min() >= -1 and z.max() <= 1
    assert torch.equal(Codec.to_uint8(codec.decode(z)), frames)
    assert torch.equal(codec.to_uint8(codec.decode(codec.encode(frames.float() / 255))), frames)  # float input


@pytest.mark.parametrize("down,channels", [(4, 4), (8, 16)])
@pytest.mark.parametrize("height,width", [(64, 64), (96, 64), (64, 96)])
def test_autoencoder_shapes(down, channels, height, width):
    codec = make_codec(dict(TINY_AE, down=down, latent_channels=channels))
    frames = torch.randint(0, 256, (2, 3, height, width, 3), dtype=torch.uint8)
    z = codec.encode(frames)
    assert codec.latent_shape(height, width) == (channels, height // down, width // down)
    assert z.shape == (2, 3, *codec.latent_shape(height, width)) and z.dtype == torch.float32
    y = codec.decode(z)
    assert y.shape == frames.shape and y.min() >= 0 and y.max() <= 1
    assert codec.encode(frames[0, 0]).shape == z.shape[2:]  # a single frame, no batch dims
    with pytest.raises(InputError, match="multiple of down"):
        codec.encode(torch.zeros(1, height + 2, width, 3, dtype=torch.uint8))


@pytest.mark.parametrize("config", [{"type": "pixels"}, TINY_AE])
def test_config_round_trip_gives_the_same_outputs(config):
    torch.manual_seed(0)
    codec = make_codec(config)
    frames = torch.from_numpy(pong_frames(16))
    if isinstance(codec, ConvAutoencoder):
        codec.calibrate(frames)
        assert codec.config()["shift"] != [0.0] * 4  # calibration is part of the config
    saved = json.loads(json.dumps(codec.config()))
    assert saved["type"] == config["type"]
    twin = make_codec(saved)
    assert type(twin) is type(codec)
    twin.load_state_dict(codec.state_dict())
    z = codec.encode(frames)
    assert torch.equal(twin.encode(frames), z)
    assert torch.equal(twin.decode(z), codec.decode(z))
    assert twin.config() == saved


def test_calibrated_latents_are_standardised():
    torch.manual_seed(0)
    codec = make_codec(TINY_AE)
    frames = torch.from_numpy(pong_frames(32))
    z = codec.calibrate(frames).encode(frames)  # [32, 4, 16, 16]
    per_channel = z.transpose(0, 1).flatten(1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(4), atol=1e-4)
    assert torch.allclose(per_channel.std(1), torch.ones(4), atol=1e-3)


def test_loss_weights_sprites_and_changes():
    codec = make_codec(dict(TINY_AE, sprite_weight=20.0, change_weight=10.0))
    clip = torch.zeros(1, 2, 16, 16, 3, dtype=torch.uint8)
    clip[..., :] = torch.tensor([12, 14, 32], dtype=torch.uint8)  # background
    clip[0, 0, 2:6, 2:6] = 255  # a 4x4 ball that moves
    clip[0, 1, 8:12, 2:6] = 255
    w = codec.pixel_weights(clip)  # [1, 2, 16, 16]
    assert w[0, 0, 3, 3] == 21 and w[0, 0, 9, 3] == 1  # first frame: sprite only, no previous frame
    assert w[0, 1, 9, 3] == 31  # sprite and changed
    assert w[0, 1, 3, 3] == 11  # where the ball was: background now, but changed
    assert w[0, 1, 14, 14] == 1
    assert codec.pixel_weights(clip[0]).shape == (2, 16, 16)  # frames without a clip: no change term


def test_autoencoder_loss_falls_when_overfitting():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    codec = make_codec(TINY_AE)
    clips = torch.from_numpy(pong_frames(8)).view(4, 2, 64, 64, 3)
    opt = torch.optim.AdamW(codec.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss, stats = codec.loss(clips)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(stats["loss"])
    assert set(stats) >= {"loss", "l1", "mse", "psnr", "latent_rms"}
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:5]), losses[::10]


def test_registry_errors():
    assert set(CODECS) == {"pixels", "conv_ae"} and CODECS["pixels"] is PatchCodec
    with pytest.raises(InputError, match="unknown codec type 'vqgan'"):
        make_codec({"type": "vqgan"})
    with pytest.raises(InputError, match="unknown codec type"):
        make_codec({"type": "torch.nn.Linear"})  # a class name in a file is never instantiated
    with pytest.raises(InputError, match="type"):
        make_codec({"down": 4})
    with pytest.raises(InputError, match="unknown setting.*depth"):
        make_codec(dict(TINY_AE, depth=3))
    with pytest.raises(InputError, match="power of two"):
        make_codec(dict(TINY_AE, down=6))
    with pytest.raises(InputError, match="no settings"):
        make_codec({"type": "pixels", "down": 4})
    with pytest.raises(InputError, match="shift"):
        make_codec(dict(TINY_AE, shift=[0.0, 0.0]))


@pytest.mark.benchmark
def test_autoencoder_is_fast_on_one_thread():
    """The recommended codec (docs/codec.md) encodes and decodes a 64x64 frame in under 5 ms on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        enc, dec = time_codec(make_codec(dict(type="conv_ae", down=4, latent_channels=4, width=16)), 64, 64)
    finally:
        torch.set_num_threads(threads)
    assert enc + dec < 5e-3, (enc, dec)
