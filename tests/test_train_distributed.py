"""Data-parallel training on CPU: two gloo processes under torchrun train as one process does."""

from __future__ import annotations

import json

import pytest
import torch
from _train_helpers import write_dataset

from iclora_train.config import TrainConfig
from iclora_train.launch import launch_training
from iclora_train.trainer import train_lora


@pytest.mark.slow  # two fresh Python processes importing torch and diffusers: ~30 s on 2 busy cores
def test_two_processes_give_the_loss_curve_and_lora_of_one_with_the_same_global_batch(tmp_path):
    from safetensors.torch import load_file

    ds = write_dataset(tmp_path / "ds", 4, panel=32)
    cfg = TrainConfig(base="tiny-random", steps=3, batch_size=4, learning_rate=1e-2, checkpoint_every=0,
                      validation_every=0, max_sequence_length=32, mixed_precision="no", save_dtype="fp32")
    one = train_lora(str(ds), tmp_path / "one", cfg, progress=False)
    launch_training(str(ds), tmp_path / "two", cfg.model_copy(update={"batch_size": 2}), 2, timeout=300)
    two = json.loads((tmp_path / "two" / "train_log.json").read_text())["steps"]
    assert [e["loss"] for e in two] == pytest.approx(one.losses, rel=1e-5)
    assert one.losses[-1] != pytest.approx(one.losses[0], rel=1e-3)  # the LoRA moved
    a, b = load_file(str(one.weights)), load_file(str(tmp_path / "two" / one.weights.name))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-4)  # Adam magnifies float-order noise


@pytest.mark.slow
def test_a_failed_launch_is_one_error(tmp_path):
    from iclora_train.errors import LaunchError

    cfg = TrainConfig(base="tiny-random", steps=1, checkpoint_every=0, validation_every=0)
    with pytest.raises(LaunchError, match="training with 2 processes failed .*missing does not exist"):
        launch_training(str(tmp_path / "missing"), tmp_path / "lora", cfg, 2, timeout=300)
