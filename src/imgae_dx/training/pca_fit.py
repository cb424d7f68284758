"""Fitting the PCA baseline after the deep models: which training normals, streamed how.

:func:`fit_pca` picks up to ``model.pca.fit_images`` normal training images spread evenly over the
run's stages (a seeded permutation of each stage's training split, so the choice is a pure function
of the seed), streams them through the same pipeline as training (one pass, no cache), and fits
:class:`~imgae_dx.models.pca.PCAModel` on them with ``k`` chosen on the validation normals of every
stage (the selection set, :class:`~imgae_dx.training.selection.ValidationPool`). Nothing of the test
split is read.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from imgae_dx.config import Config
from imgae_dx.models.pca import PCAModel
from imgae_dx.training.selection import ValidationPool, collect


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
            memory: Any = None) -> tuple[PCAModel, dict[str, Any]]:
    """Stream the chosen training normals and fit the baseline; returns (model, facts)."""
    from imgae_dx.data.dataset import StreamingNIHDataset
    from imgae_dx.models import create_model

    data = cfg.data.model_copy(update={"cache": "off"})
    parts = []
    for stage, members in training_subset(cfg, index, stages).items():
        if len(members) == 0:
            continue
        ds = StreamingNIHDataset(archive, index, stage, "train", data, seed=cfg.seed,
                                 batch_size=cfg.training.batch_size, cache=None, memory=memory,
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
    facts = model.fit(torch.from_numpy(train.reshape(len(train), -1).astype(np.float32) / 255.0),
                      torch.from_numpy(val.reshape(len(val), -1).astype(np.float32) / 255.0))
    facts.update(train_images=int(len(train)), val_images=int(len(val)))
    return model, facts
