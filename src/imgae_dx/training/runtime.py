"""Where a training process runs: its device, its place in a ``torchrun`` job, the process-wide
CUDA switches, how batches and models reach the device, and the seeding of the global RNGs.

:func:`start_runtime` resolves ``training.device`` (under ``torchrun``: the GPU of this process's
local rank), joins the process group when there are several processes
(:func:`~imgae_dx.training.distributed.init_distributed`) and, on CUDA, sets cuDNN autotuning and
TF32 from ``training.cudnn_benchmark`` / ``training.tf32``. :func:`seed_everything` seeds Python,
numpy and torch with the run's seed (the same on every rank, so every rank builds the same initial
weights).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from imgae_dx.config import TrainingConfig
from imgae_dx.training import distributed as dist_utils
from imgae_dx.training.distributed import DistInfo
from imgae_dx.utils.device import resolve_device


@dataclass(frozen=True)
class Runtime:
    """This process's device and rank.

    Attributes:
        device: the torch device models and batches live on.
        dist: rank and world size (one process: rank 0 of 1).
        channels_last: models and batches use the channels-last memory format (CUDA only).
    """

    device: torch.device
    dist: DistInfo
    channels_last: bool = False

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, saves and draws progress."""
        return self.dist.is_main

    def to_device(self, x: Tensor) -> Tensor:
        """A batch (B×1×H×W) on the device: through pinned memory (and channels-last) on CUDA."""
        if not self.cuda:
            return x.to(self.device)
        x = x.pin_memory().to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def place(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device (channels-last where set) and give every rank rank 0's
        weights."""
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        dist_utils.broadcast_module(model)
        return model

    def buffer_sync(self, models: Mapping[str, nn.Module]) -> Callable[[str], None] | None:
        """Under DDP: ``f(name)`` giving every rank rank 0's buffers of ``models[name]`` (BatchNorm
        statistics; called after each step); None with one process."""
        if not self.dist.distributed:
            return None
        return lambda name: dist_utils.broadcast_module(models[name], buffers_only=True)

    def generator(self, seed: int) -> torch.Generator:
        """A generator on the device seeded with ``seed``."""
        return torch.Generator(device=self.device).manual_seed(seed)


def start_runtime(t: TrainingConfig) -> Runtime:
    """Resolve the device, join the process group (several processes) and set the CUDA switches."""
    device = resolve_device(t.device, dist_utils.detect().local_rank)
    dist = dist_utils.init_distributed(device, backend=t.dist_backend)
    rt = Runtime(device, dist, channels_last=device.type == "cuda" and t.channels_last)
    if rt.cuda:  # process-wide switches, as every CUDA training script sets them
        torch.backends.cudnn.benchmark = t.cudnn_benchmark
        torch.backends.cuda.matmul.allow_tf32 = t.tf32
        torch.backends.cudnn.allow_tf32 = t.tf32
    return rt


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global RNGs with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
