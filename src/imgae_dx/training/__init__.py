"""Training: the progressive streaming trainer, checkpoints, distributed helpers, loggers.

Names are imported lazily so ``import imgae_dx.training.metrics`` (evaluation) does not pull
in the trainer and its dependencies.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "StreamingTrainer": "imgae_dx.training.streaming_trainer",
    "TrainResult": "imgae_dx.training.streaming_trainer",
    "TrainingInterrupted": "imgae_dx.training.signals",
    "Checkpointer": "imgae_dx.training.checkpointer",
    "TrainStep": "imgae_dx.training.step",
    "MetricsLogger": "imgae_dx.training.loggers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'imgae_dx.training' has no attribute {name!r}")
