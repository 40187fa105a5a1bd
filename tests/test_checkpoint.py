"""Checkpoints and training state: bit-exact round trips, one-line errors for bad files, bit-exact resume."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from games.data.actions import ActionSpace
from worldmodel.checkpoint import (CheckpointError, check_action_space, describe_checkpoint, load_checkpoint,
                                   save_checkpoint)
from worldmodel.train.state import load_train_state, restore_rng_state, rng_state, save_train_state

SPACE = ActionSpace(keys=("UP", "DOWN"), mouse=True, buttons=("LEFT",))


def metadata(**changes) -> dict:
    meta = {"kind": "teacher", "model": {"size": "tiny", "dim": 32, "depth": 2, "patch": 8},
            "action_space": SPACE.to_dict(), "codec": {"name": "patches", "patch": 8},
            "schedule": {"kind": "flow", "shift": 5.0}, "step": 1234,
            "provenance": {"data": "/data/pong", "game": "pong", "time": "2025-01-01T00:00:00Z"}}
    meta.update(changes)
    return meta


def weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shared = torch.randn(16, 8, generator=g)
    return {"model.embed.weight": shared, "model.head.weight": shared,  # tied weights share memory
            "model.blocks.0.scale": torch.randn(8, generator=g).to(torch.bfloat16),
            "model.steps": torch.arange(5), "model.view": shared[2:4, 1:3],  # a non-contiguous view
            "model.empty": torch.zeros(0, 3), "ema.flag": torch.tensor([True, False])}


def assert_error(path, *needles, **kw):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, validate=False, **kw)  # the file format; tests/test_hardening.py: the metadata
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


def test_checkpoint_round_trips_bit_exactly(tmp_path):
    path = save_checkpoint(tmp_path / "run" / "teacher.safetensors", weights(), metadata())
    assert path.exists() and not list(path.parent.glob(".*partial"))
    ckpt = load_checkpoint(path, expect="teacher", validate=False)
    original = weights()
    assert set(ckpt.tensors) == set(original)
    for name, t in original.items():
        assert ckpt.tensors[name].dtype == t.dtype and torch.equal(ckpt.tensors[name], t), name
    assert ckpt.metadata == metadata()
    assert ckpt.path == path


def test_failed_save_keeps_the_old_file(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", weights(), metadata())
    with pytest.raises(TypeError):
        save_checkpoint(path, {"model.x": np.zeros(3)}, metadata(step=9))
    with pytest.raises(ValueError, match="step"):
        save_checkpoint(path, weights(), {k: v for k, v in metadata().items() if k != "step"})
    assert load_checkpoint(path, validate=False).metadata["step"] == 1234
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


def test_bad_files_give_one_line_errors(tmp_path):
    assert_error(tmp_path / "nope.safetensors", "does not exist")
    good = save_checkpoint(tmp_path / "good.safetensors", weights(), metadata())
    data = good.read_bytes()

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[:-10])
    assert_error(truncated, "truncated")
    truncated.write_bytes(data[:20])
    assert_error(truncated, "truncated")

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a checkpoint at all" * 10)
    assert_error(garbage, "not a safetensors file")
    garbage.write_bytes(b"")
    assert_error(garbage, "empty")

    flipped = bytearray(data)
    flipped[-3] ^= 0xFF  # one byte of tensor data
    corrupt = tmp_path / "flipped.safetensors"
    corrupt.write_bytes(bytes(flipped))
    assert_error(corrupt, "corrupt", "checksum")

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(plain))
    assert_error(plain, "is a safetensors file but not a rollingworld checkpoint")

    newer = tmp_path / "newer.safetensors"
    save_file({"w": torch.zeros(3)}, str(newer),
              metadata={"format": "rollingworld-checkpoint", "version": "2", "rollingworld": json.dumps(metadata())})
    assert_error(newer, "version 2", "newer")

    incomplete = tmp_path / "incomplete.safetensors"
    meta = {k: v for k, v in metadata().items() if k != "schedule"}
    save_file({"w": torch.zeros(3)}, str(incomplete),
              metadata={"format": "rollingworld-checkpoint", "version": "1", "rollingworld": json.dumps(meta)})
    assert_error(incomplete, "missing metadata field schedule")

    assert_error(good, "is a teacher checkpoint", "a codec checkpoint is needed", expect="codec")


def test_training_state_is_not_a_checkpoint(tmp_path):
    path = save_train_state(tmp_path / "state.safetensors", {"model": nn.Linear(2, 2)}, {}, {"step": 1})
    assert_error(path, "is a rollingworld training state, not a checkpoint")
    ckpt = save_checkpoint(tmp_path / "c.safetensors", weights(), metadata())
    with pytest.raises(CheckpointError, match="is a rollingworld checkpoint, not a training state"):
        load_train_state(ckpt, {"model": nn.Linear(2, 2)}, {})


def test_action_space_mismatch_names_the_difference():
    meta = metadata(action_space=ActionSpace(keys=("UP", "DOWN"), mouse=True).to_dict())
    check_action_space(meta, ActionSpace(keys=("UP", "DOWN"), mouse=True))
    with pytest.raises(CheckpointError) as info:
        check_action_space(meta, ActionSpace(keys=("W", "A", "S", "D")))
    assert str(info.value) == "checkpoint was trained on keys UP, DOWN + mouse; these actions have keys W, A, S, D"
    with pytest.raises(CheckpointError, match="keys DOWN, UP"):  # same keys, another vector layout
        check_action_space(meta, ActionSpace(keys=("DOWN", "UP"), mouse=True))
    with pytest.raises(CheckpointError, match="at 10 px per tick"):
        check_action_space(meta, ActionSpace(keys=("UP", "DOWN"), mouse=True, mouse_scale=10.0))


def test_describe_lists_size_parameters_and_controls(tmp_path):
    tensors = {"model.a": torch.zeros(1000, 1000), "model.b": torch.zeros(234), "ema.a": torch.zeros(10)}
    path = save_checkpoint(tmp_path / "c.safetensors", tensors, metadata())
    text = "\n".join(describe_checkpoint(path, validate=False))  # made-up weights: the description only
    assert "kind: teacher" in text
    assert "model: tiny, 1.00M parameters" in text  # 1,000,234: only "model." tensors count
    assert "dim=32" in text and "depth=2" in text
    assert "keys UP, DOWN + mouse (buttons LEFT)" in text
    assert "step: 1,234" in text and "game: pong" in text and "/data/pong" in text
    assert "4.00 MB on disk" in text
    with pytest.raises(CheckpointError):
        describe_checkpoint(tmp_path / "missing.safetensors")


# ------------------------------------------------------------------------------------------------ training state

def tiny_net() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Dropout(0.3), nn.Linear(16, 6))


def train(net, opt, data_rng: np.random.Generator, steps: int) -> None:
    """Steps that draw from every generator a resume must restore: numpy (data), torch (noise, dropout), python."""
    for _ in range(steps):
        x = torch.from_numpy(data_rng.standard_normal((4, 6)).astype(np.float32))
        x = x + 0.1 * torch.randn_like(x) * random.random()
        loss = (net(x) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def fresh(seed: int):
    torch.manual_seed(seed)
    net = tiny_net()
    return net, torch.optim.AdamW(net.parameters(), lr=1e-2, betas=(0.0, 0.999), weight_decay=0.05)


def test_resume_continues_bit_exactly(tmp_path):
    random.seed(1)
    data_rng = np.random.default_rng(2)
    net, opt = fresh(0)
    train(net, opt, data_rng, 5)
    path = save_train_state(tmp_path / "state.safetensors", {"model": net}, {"opt": opt},
                            {"step": 5, "lr_scale": 0.1 + 0.2, "rng": rng_state({"data": data_rng})})
    train(net, opt, data_rng, 5)
    w1 = {k: v.clone() for k, v in net.state_dict().items()}

    # scramble every generator, then resume into a fresh network built from another seed
    random.seed(99)
    data_rng = np.random.default_rng(99)
    net2, opt2 = fresh(123)
    extra = load_train_state(path, {"model": net2}, {"opt": opt2})
    assert extra["step"] == 5 and extra["lr_scale"] == 0.1 + 0.2
    assert opt2.param_groups[0]["betas"] == (0.0, 0.999)
    restore_rng_state(extra["rng"], {"data": data_rng})
    train(net2, opt2, data_rng, 5)
    w2 = net2.state_dict()
    assert set(w1) == set(w2)
    for k in w1:
        assert torch.equal(w1[k], w2[k]), k


def test_resume_without_restoring_rng_differs(tmp_path):
    """The test above would pass trivially if training were deterministic without the RNG state; it is not."""
    random.seed(1)
    data_rng = np.random.default_rng(2)
    net, opt = fresh(0)
    path = save_train_state(tmp_path / "s.safetensors", {"model": net}, {"opt": opt})
    train(net, opt, data_rng, 3)
    net2, opt2 = fresh(5)
    load_train_state(path, {"model": net2}, {"opt": opt2})
    train(net2, opt2, np.random.default_rng(2), 3)
    assert not torch.equal(net[0].weight, net2[0].weight)


def test_bad_training_state_gives_one_line_errors(tmp_path):
    net, opt = fresh(0)
    train(net, opt, np.random.default_rng(0), 1)
    path = save_train_state(tmp_path / "s.safetensors", {"model": net}, {"opt": opt}, {"step": 1})
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(path.read_bytes()[:-7])
    other = nn.Sequential(nn.Linear(6, 32), nn.GELU(), nn.Dropout(0.3), nn.Linear(32, 6))
    cases = [(truncated, {"model": net}, {"opt": opt}, "truncated"),
             (path, {"net": net}, {"opt": opt}, "holds modules ['model']"),
             (path, {"model": other}, {"opt": torch.optim.AdamW(other.parameters())}, "other shapes for 0.weight")]
    for file, modules, optimizers, needle in cases:
        with pytest.raises(CheckpointError) as info:
            load_train_state(file, modules, optimizers)
        assert needle in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="no numpy generator 'data'"):
        restore_rng_state(rng_state({}), {"data": np.random.default_rng(0)})
