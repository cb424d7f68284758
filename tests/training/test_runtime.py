"""The runtime of one CPU process: device, rank, batches and models on the device, seeding."""

from __future__ import annotations

import random

import numpy as np
import torch

from imgae_dx.config import load_config
from imgae_dx.training.runtime import seed_everything, start_runtime


def test_one_cpu_process_is_rank_0_of_1_and_keeps_tensors_as_they_are():
    rt = start_runtime(load_config(overrides={"training.device": "cpu"}).training)
    assert rt.device == torch.device("cpu") and not rt.cuda and not rt.channels_last
    assert rt.is_main and (rt.dist.rank, rt.dist.world_size) == (0, 1)
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(rt.to_device(x), x)
    model = torch.nn.Conv2d(1, 2, 3)
    assert rt.place(model) is model and model.weight.device.type == "cpu"
    assert rt.buffer_sync({"m": model}) is None  # nothing to share with one process
    assert torch.equal(torch.rand(3, generator=rt.generator(4)), torch.rand(3, generator=rt.generator(4)))


def test_seed_everything_makes_python_numpy_and_torch_repeat():
    def draw():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    seed_everything(11)
    a = draw()
    seed_everything(11)
    assert draw() == a
    seed_everything(12)
    assert draw() != a
