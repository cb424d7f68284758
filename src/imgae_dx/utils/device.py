"""The torch device a configuration asks for (training, evaluation and inference share the rule),
and what a CUDA device can do natively."""

from __future__ import annotations

import torch

from imgae_dx.errors import UserError

NATIVE_BF16_CAPABILITY = (8, 0)  # Ampere: the first GPUs with bf16 tensor cores


def has_native_bf16(capability: tuple[int, int]) -> bool:
    """True from compute capability 8.0 (Ampere) on. Not ``torch.cuda.is_bf16_supported()``: it
    says True on a T4 (sm 7.5), where bf16 is only emulated."""
    return tuple(capability) >= NATIVE_BF16_CAPABILITY


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The device for ``training.device`` (``auto`` | ``cpu`` | ``cuda``): under torchrun, the
    GPU of this process's local rank."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA device is available; use --device cpu")
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return torch.device("cpu")
