"""After the last stage: each model's calibration, and the PCA baseline.

* :class:`Calibrator` — the scores a checkpoint gives the validation normals of every stage (the
  selection set, :class:`~imgae_dx.training.selection.ValidationPool`), written as
  ``checkpoints/MODEL/calibration.json`` (:mod:`imgae_dx.run.calibration`): what ``predict``
  reports percentiles and flags against, and what the evaluator's operating point uses.
* :func:`fit_pca_baseline` — picks up to ``model.pca.fit_images`` normal training images spread
  evenly over the run's stages (a seeded permutation of each stage's training split, so the choice
  is a pure function of the seed), reads them from the run's decode-once cache (streaming what it
  does not hold, through the same pipeline as training), fits :class:`~imgae_dx.models.pca.PCAModel`
  (:func:`~imgae_dx.models.pca.fit.fit_principal_components`) with ``k`` chosen on the validation
  normals, and writes ``checkpoints/pca/{last,best}.pt`` and its calibration.

Nothing of the test split is read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgae_dx.config import Config
from imgae_dx.errors import UserError
from imgae_dx.models.pca import PCAModel, fit_principal_components
from imgae_dx.run.calibration import calibrate, calibration_path
from imgae_dx.run.checkpoint import CheckpointPayload, read_checkpoint
from imgae_dx.training.checkpointer import Checkpointer, swapped_weights
from imgae_dx.training.selection import ValidationPool, collect
from imgae_dx.training.stage_data import StageData

log = logging.getLogger(__name__)


class Calibrator:
    """Writes calibrations from the validation normals of every stage (rank 0)."""

    def __init__(self, run_dir: Path, pool: ValidationPool, stages: list[str], view: str,
                 device: torch.device) -> None:
        self.run_dir, self.pool, self.stages, self.view, self.device = run_dir, pool, stages, view, device

    def write(self, name: str, model: Any, kind: str, step: int | None) -> None:
        """Score the validation normals with ``model`` (eval mode) as ``checkpoints/NAME/KIND.pt``."""
        batches = (x.to(self.device) for s in self.pool.stages for x in self.pool.batches(s))
        cal = calibrate(model, batches, source={
            "checkpoint": f"checkpoints/{name}/{kind}.pt", "step": step, "stages": list(self.stages),
            "view": self.view})
        cal.save(calibration_path(self.run_dir, name))

    def calibrate_checkpoint(self, name: str, model: Any, checkpointer: Checkpointer,
                             best_step: int | None, last_step: int) -> None:
        """Calibrate ``best.pt`` (``last.pt`` when no epoch was validated): its weights swapped into
        the live model, then back."""
        kind = "best" if checkpointer.path(name, "best").is_file() else "last"
        weights = read_checkpoint(checkpointer.path(name, kind), model_name=name).model
        with swapped_weights(model, weights):
            model.eval()
            try:
                self.write(name, model, kind, best_step if kind == "best" else last_step)
            finally:
                model.train()


def training_subset(cfg: Config, index: Any, stages: list[str]) -> dict[str, np.ndarray]:
    """Per stage, the training members the baseline is fitted on (≤ ``fit_images`` in all)."""
    d = cfg.data
    per_stage = {s: index.split(s, "train", view=d.view, val_fraction=d.val_fraction, seed=cfg.seed)
                 for s in stages}
    total = sum(len(m) for m in per_stage.values())
    want = min(cfg.model.pca.fit_images, total)
    out = {}
    rng = np.random.default_rng([cfg.seed, 0x9CA])
    for s, members in per_stage.items():
        n = int(round(want * len(members) / total)) if total else 0
        out[s] = np.sort(rng.permutation(members)[:n])
    return out


def fit_pca(cfg: Config, archive: Any, index: Any, stages: list[str], pool: ValidationPool,
            memory: Any = None, cache: Any = None) -> tuple[PCAModel, dict[str, Any]]:
    """Stream the chosen training normals (read from ``cache`` — the run's decode-once cache —
    where it holds them) and fit the baseline; returns (model, facts)."""
    from imgae_dx.data.dataset import StreamingDataset
    from imgae_dx.models import create_model

    data = cfg.data if cache is not None else cfg.data.model_copy(update={"cache": "off"})
    parts = []
    for stage, members in training_subset(cfg, index, stages).items():
        if len(members) == 0:
            continue
        ds = StreamingDataset(archive, index, stage, "train", data, seed=cfg.seed,
                              batch_size=cfg.training.batch_size, cache=cache, memory=memory,
                              drop_last=False, members=members)
        try:
            imgs = collect(b.images for b in ds.batches())
        finally:
            ds.close()
        if len(imgs):
            parts.append(imgs)
    train = np.concatenate(parts) if parts else np.zeros((0, 1, 1), np.uint8)
    val = pool.images()
    model = create_model("pca", cfg.data.image_size, cfg=cfg.model.pca)
    facts = fit_principal_components(
        model, torch.from_numpy(train.reshape(len(train), -1).astype(np.float32) / 255.0),
        torch.from_numpy(val.reshape(len(val), -1).astype(np.float32) / 255.0))
    facts.update(train_images=int(len(train)), val_images=int(len(val)))
    return model, facts


def fit_pca_baseline(cfg: Config, archive: Any, index: Any, data: StageData, pool: ValidationPool,
                     calibrator: Calibrator, fields: dict[str, Any]) -> dict[str, Any]:
    """Fit the baseline on the run's stages (``data``: their datasets, memory manager and
    decode-once cache), write ``checkpoints/pca/{last,best}.pt`` (``fields``: the payload fields
    the run's checkpoints share) and its calibration; returns the fit's facts."""
    try:
        model, facts = fit_pca(cfg, archive, index, data.stages, pool, data.memory, data.shared)
    except ValueError as e:
        raise UserError(f"the PCA baseline cannot be fitted: {e}; widen the split (data.view all, "
                        "more --stages) or drop pca from --model") from None
    payload = CheckpointPayload(model_name="pca", model={k: v.cpu() for k, v in model.state_dict().items()},
                                val_loss=facts["val_mse"], **fields)
    Checkpointer(calibrator.run_dir, ["pca"]).save({"pca": payload}, best=["pca"])
    log.info("pca: k = %d of %d components (%.1f %% of the validation variance), fitted on %d "
             "training normals; validation MSE %.5f", facts["k"], facts["components"],
             100 * facts["explained"], facts["train_images"], facts["val_mse"])
    calibrator.write("pca", model.to(calibrator.device).eval(), "best", fields["step"])
    return facts
