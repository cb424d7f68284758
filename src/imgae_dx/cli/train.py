"""``imgae-dx train``: flags → configuration overrides → :class:`StreamingTrainer`.

Flag mapping (flags win over ``--config FILE``, which wins over the packaged defaults):

=====================  ===============================================
``--source``           ``source``
``--dataset``          ``data.dataset`` (``nih`` | ``zhanglab`` | ``folder``; default: detected)
``--stages``           ``stages`` (``all``, ``images_001,images_002`` or ``part_001,…``)
``--epochs-per-stage`` ``training.epochs_per_stage``
``--model``            ``models``: ``unet`` | ``ra`` | ``ae`` → that model alone;
                       ``all`` → every model (``unet``, ``ra``, ``ae``) from one stream
``--image-size``       ``data.image_size``
``--batch-size``       ``training.batch_size``
``--out``              ``out`` (the run folder)
``--device``           ``training.device``
``--logger``           ``logging.logger``
=====================  ===============================================

``--resume`` without ``--config`` starts from the run's own ``RUN_DIR/config.yaml`` (then the
flags), so ``imgae-dx train --out RUN --resume`` continues a run with its settings. Exit codes:
0 finished, 2 bad input (one-line error), 128+N when stopped by signal N after saving ``last.pt``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from imgae_dx.config import MODEL_NAMES, load_config


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted config overrides for the flags that were given (``None`` = not given)."""
    model = getattr(args, "model", None)
    models = None if model is None else (list(MODEL_NAMES) if model == "all" else [model])
    return {
        "source": getattr(args, "source", None),
        "data.dataset": getattr(args, "dataset", None),
        "stages": getattr(args, "stages", None),
        "training.epochs_per_stage": getattr(args, "epochs_per_stage", None),
        "models": models,
        "data.image_size": getattr(args, "image_size", None),
        "training.batch_size": getattr(args, "batch_size", None),
        "out": getattr(args, "out", None),
        "training.device": getattr(args, "device", None),
        "logging.logger": getattr(args, "logger", None),
    }


def build_config(args: argparse.Namespace):
    """The run's :class:`~imgae_dx.config.Config` from the parsed flags."""
    overrides = overrides_from_args(args)
    path = getattr(args, "config", None)
    saved_run = False
    if path is None and getattr(args, "resume", False):
        out = overrides.get("out") or load_config().out
        run_cfg = Path(out).expanduser() / "config.yaml"
        if run_cfg.is_file():
            path, saved_run = run_cfg, True
    return load_config(path, overrides, saved_run=saved_run)


def run(args: argparse.Namespace) -> int:
    """Train; returns the exit code (see the module doc)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from imgae_dx.training.streaming_trainer import StreamingTrainer

    cfg = build_config(args)
    trainer = StreamingTrainer(cfg, resume=bool(getattr(args, "resume", False)))
    result = trainer.train_progressive_stages()
    if trainer.is_main:
        if result.interrupted:
            print(
                f"stopped by signal {result.signal} at step {result.step}: last.pt saved in "
                f"{result.run_dir}/checkpoints; continue with --out {result.run_dir} --resume",
                file=sys.stderr,
            )
        else:
            print(
                f"trained {', '.join(cfg.models)} on {len(result.stages)} stage(s), "
                f"{result.step} steps, {result.images_seen} images in {result.wall_s:.1f} s; "
                f"best val loss: {result.best_val_text()}; run folder: {result.run_dir}"
            )
    return result.exit_code
