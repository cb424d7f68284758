"""The torch device a configuration asks for (training, evaluation and inference share the rule)."""

from __future__ import annotations

import torch

from imgae_dx.errors import UserError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The device for ``training.device`` (``auto`` | ``cpu`` | ``cuda``): under torchrun, the
    GPU of this process's local rank."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA device is available; use --device cpu")
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return torch.device("cpu")
