"""Calibrate a run's models after the fact, by streaming its validation split once.

For runs whose trainer did not write ``checkpoints/MODEL/calibration.json`` (or whose file is for
other weights): the run's ``val`` split (normal images of the validation patients, the run's view
cohort, every stage the checkpoint trained on) is streamed from the run's source through the
training pipeline (:class:`~imgae_dx.data.dataset.StreamingDataset`, cache off), held as uint8
at model size (N × size² bytes: ~60 MB for the ~3,500 PA validation normals of the full dataset
at 128 px), and scored by every model with :func:`~imgae_dx.run.calibration.calibrate`. The
test split is never opened. The models are the run loader's (:class:`imgae_dx.run.loader.RunModel`);
the caller (:func:`imgae_dx.inference.loading.load_run_models`) saves each calibration at
``RUN_DIR/checkpoints/MODEL/calibration.json``, as the trainer would have written it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from imgae_dx.data.decode import to_uint8, to_unit
from imgae_dx.errors import SourceError
from imgae_dx.inference.errors import CalibrationError
from imgae_dx.run.calibration import Calibration, CalibrationSource, calibrate
from imgae_dx.run.loader import RunModel


def validation_images(cfg: Any, stages_wanted: Sequence[str] | str, *, progress: bool = False
                      ) -> tuple[np.ndarray, list[str]]:
    """uint8 N×H×W of the run's normal validation images (each member once) and the stages read.

    Raises:
        CalibrationError: the run's source cannot be read, or its validation split is empty.
    """
    from tqdm.auto import tqdm

    from imgae_dx.data.dataset import StreamingDataset
    from imgae_dx.data.datasets import open_dataset
    from imgae_dx.data.memory import MemoryManager
    from imgae_dx.streaming.sources import open_archive

    data_cfg = cfg.data.model_copy(update={"cache": "off"})
    memory = MemoryManager(data_cfg.memory_budget_mb)
    try:
        archive = open_archive(cfg.source, data_cfg)
    except SourceError as e:
        raise CalibrationError(f"calibrating needs the run's validation images, but its source cannot "
                               f"be read: {e}") from None
    images: list[np.ndarray] = []
    seen: set[int] = set()
    try:
        index = open_dataset(archive, data_cfg, cfg.seed, quiet=True)
        stages = index.resolve_stages(stages_wanted)
        for stage in stages:
            ds = StreamingDataset(archive, index, stage, "val", data_cfg, seed=cfg.seed,
                                  batch_size=cfg.training.batch_size, cache=None, memory=memory,
                                  drop_last=False)
            bar = tqdm(total=len(ds), desc=f"calibrate {stage} (val)", unit="img", disable=not progress,
                       leave=False)
            try:
                for batch in ds.batches():
                    u8 = to_uint8(batch.images[:, 0].numpy())
                    for m, img in zip(batch.members.tolist(), u8, strict=True):
                        if m not in seen:  # an undecodable member is replaced by a neighbour: once
                            seen.add(m)
                            images.append(img)
                    bar.update(len(batch))
            finally:
                bar.close()
                ds.close()
    finally:
        archive.close()
    if not images:
        raise CalibrationError(f"the validation split of stages {', '.join(stages)} (view "
                               f"{cfg.data.view}) holds no image in {cfg.source}: nothing to calibrate on")
    return np.stack(images), stages


def _batches(images: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
    for i in range(0, len(images), batch_size):
        yield torch.from_numpy(to_unit(images[i:i + batch_size]))[:, None]


def calibrate_run(cfg: Any, models: Sequence[RunModel], *, view: str | None = None,
                  progress: bool = False) -> list[Calibration]:
    """Calibrate ``models`` (of the run with config ``cfg``); nothing is written. ``view``: the
    cohort recorded in the calibration (default ``data.view``; ``all`` for images without views).

    Returns:
        One :class:`Calibration` per model, in order.
    """
    stages: list[str] = sorted({s for m in models for s in m.checkpoint.stages})
    images, read = validation_images(cfg, stages or cfg.stages, progress=progress)
    out = []
    for m in models:
        src = CalibrationSource(checkpoint=m.checkpoint.file, step=m.checkpoint.step,
                                stages=tuple(read), split="val", view=view or cfg.data.view)
        out.append(calibrate(m.model, _batches(images, cfg.training.batch_size), source=src))
    return out
