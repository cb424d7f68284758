"""Training: the progressive streaming trainer and the parts it drives, one owner each:

=================================  =============================================================
:mod:`.streaming_trainer`          :class:`StreamingTrainer`: the loop over stages and epochs
:mod:`.runtime`                    device, ``torchrun`` process group, CUDA switches, seeding
:mod:`.precision`                  autocast dtype and GradScaler for the device (``training.amp``)
:mod:`.step`                       :class:`TrainStep`: the only place parameters change
:mod:`.loop`                       :func:`train_one_epoch`, :func:`validate` (plain iterables)
:mod:`.state`                      :class:`TrainState` (counters, position, last save), :class:`TrainResult`
:mod:`.stage_data`                 per-stage datasets, decode-once cache, replay; next stage early
:mod:`.finish`                     after the last stage: calibrations, the PCA baseline
:mod:`.selection`                  ``best.pt`` chosen on one fixed set of validation images
:mod:`.checkpointer`               the only writer and reader of checkpoints: builds and restores them
:mod:`.run_folder`                 what ``--out`` may hold; ``config.yaml``; ``metrics.jsonl``
:mod:`.reporting`                  typed records to :mod:`.loggers` (jsonl, TensorBoard, W&B), live plot
:mod:`.signals`                    SIGINT/SIGTERM → save ``last.pt`` and stop
:mod:`.distributed`                ``torchrun`` helpers: process group, gradient all-reduce, broadcasts
=================================  =============================================================

The names below are imported lazily: importing one module of the package does not pull in the
trainer and its dependencies.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "StreamingTrainer": "imgae_dx.training.streaming_trainer",
    "TrainResult": "imgae_dx.training.state",
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
