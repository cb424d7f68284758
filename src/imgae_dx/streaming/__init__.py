"""Streaming: byte ranges of one archive (Kaggle, HTTP, local zip, folder) into training.

The public names are imported lazily (module ``__getattr__``), so ``import imgae_dx.streaming``
costs nothing and needs neither torch nor kagglesdk::

    from imgae_dx.streaming import KaggleStreamClient, ColabStreamingSetup, StreamingTrainer
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY: dict[str, str] = {
    "KaggleStreamClient": "imgae_dx.streaming.kaggle_client",
    "KaggleCredentials": "imgae_dx.streaming.credentials",
    "ColabStreamingSetup": "imgae_dx.streaming.colab_setup",
    "StreamingTrainer": "imgae_dx.training.streaming_trainer",
    "StreamingNIHDataset": "imgae_dx.data.dataset",
    "StreamingDataset": "imgae_dx.data.dataset",
}

__all__ = [
    "ColabStreamingSetup",
    "KaggleCredentials",
    "KaggleStreamClient",
    "StreamingDataset",
    "StreamingNIHDataset",
    "StreamingTrainer",
]

if TYPE_CHECKING:  # pragma: no cover
    from imgae_dx.data.dataset import StreamingDataset, StreamingNIHDataset
    from imgae_dx.streaming.colab_setup import ColabStreamingSetup
    from imgae_dx.streaming.credentials import KaggleCredentials
    from imgae_dx.streaming.kaggle_client import KaggleStreamClient
    from imgae_dx.training.streaming_trainer import StreamingTrainer


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
