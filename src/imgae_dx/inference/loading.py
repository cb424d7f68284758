"""Trained models with their calibration, from a run folder or from a bundle: what ``predict``
and ``export`` score with.

``load_models(path, model_name="all", device="auto")`` → ``list[LoadedModel]``:

* a **run folder** (``config.yaml`` + ``checkpoints/``): each model as the run loader gives it
  (:class:`imgae_dx.run.loader.RunFolder`: ``best.pt``, else ``last.pt``, read with
  ``weights_only``), with its ``calibration.json``. A calibration that is missing, or that belongs
  to other weights or settings (another step, anomaly map or size), is computed by streaming the
  run's validation split (:func:`imgae_dx.inference.run_calibration.calibrate_run`, announced
  through ``notify``) and saved where the trainer writes it — the one file ``predict``/``export``
  may write into a run folder; when the run folder is read-only, it is kept for this process only
  (announced);
* a **bundle** (``imgae-dx export``: ``BUNDLE_DIR/MODEL/{config.json, model.safetensors,
  calibration.json}``) or one model folder of it: JSON and safetensors only — nothing is
  unpickled, and every file is checked (:mod:`imgae_dx.inference.bundle_format`) before the
  network is built.

Each model carries its training resize policy (``LoadedModel.resize``: a bundle's
``preprocessing.resize``, a run's ``data.resize``), which ``predict`` applies to every file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imgae_dx.data.decode import Resize
from imgae_dx.errors import UserError
from imgae_dx.inference.bundle_format import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    bundle_model_dirs,
    check_weights,
    read_calibration,
    read_config,
    read_weights,
)
from imgae_dx.inference.errors import BundleError
from imgae_dx.inference.images import DEFAULT_RESIZE
from imgae_dx.inference.run_calibration import calibrate_run
from imgae_dx.models import load_model
from imgae_dx.run.calibration import Calibration, calibration_path
from imgae_dx.run.checkpoint import ArchiveRef, CheckpointSummary
from imgae_dx.run.loader import RunFolder, RunModel, select_names

Notify = Callable[[str], None]


@dataclass
class LoadedModel:
    """One model ready to score.

    Attributes:
        name: ``unet`` | ``ra`` | ``ae`` | ``pca``.
        model: the ``nn.Module`` in eval mode, on its device.
        calibration: its normal validation scores.
        image_size: model resolution in pixels.
        checkpoint: which training state the weights are (file, step, stage, stages, …).
        origin: the run folder or bundle model folder they were loaded from.
        resize: the ``data.resize`` policy the model was trained with (squash | pad | crop).
        view, seed: the run's view cohort (``all`` when its images have no view positions) and seed.
        dataset: the training data's ``data.dataset`` (``nih`` for a bundle from before the field).
        source, archive: a run's configured source and the archive its checkpoint records (None
            for a bundle, whose ``config.json`` holds the source's identity).
    """

    name: str
    model: Any
    calibration: Calibration
    image_size: int
    checkpoint: CheckpointSummary
    origin: str
    resize: Resize = DEFAULT_RESIZE
    view: str | None = None
    seed: int | None = None
    dataset: str = "nih"
    source: str | None = None
    archive: ArchiveRef | None = None

    @classmethod
    def of_run(cls, m: RunModel, calibration: Calibration, run: RunFolder) -> LoadedModel:
        """A run folder's model (:class:`~imgae_dx.run.loader.RunModel`) with its calibration."""
        cfg = m.config
        return cls(m.name, m.model, calibration, m.image_size, m.checkpoint, str(run.path), cfg.data.resize,
                   view=run.view, seed=cfg.seed, dataset=cfg.data.dataset or "nih", source=cfg.source,
                   archive=m.archive)


def load_run_models(run_dir: str | os.PathLike[str], model_name: str = "all", *,
                    device: torch.device | None = None, notify: Notify | None = None,
                    progress: bool = False) -> list[LoadedModel]:
    """The run's models (best.pt, else last.pt) with their calibration (computed when needed)."""
    run = RunFolder(run_dir)
    models = run.load_models(model_name, device=device or torch.device("cpu"))
    cals: dict[str, Calibration] = {}
    stale: list[RunModel] = []
    for m in models:
        cal, why = run.saved_calibration(m)
        if cal is not None:
            cals[m.name] = cal
            continue
        stale.append(m)
        if notify:
            notify(f"{why}: computing it from the run's validation normals (once)")
    if stale:
        for m, cal in zip(stale, calibrate_run(run.config, stale, view=run.view, progress=progress), strict=True):
            cals[m.name] = cal
            dest = calibration_path(run.path, m.name)
            try:
                cal.save(dest)
                where = f"saved to {dest}"
            except OSError as e:  # a read-only run folder: use it, keep nothing
                where = f"not saved ({dest}: {e.strerror or e}); kept for this command only"
            if notify:
                notify(f"calibration of {m.name}: {cal.n} validation normals, {where}")
    return [LoadedModel.of_run(m, cals[m.name], run) for m in models]


def load_bundle_models(bundle_dir: str | os.PathLike[str], model_name: str = "all", *,
                       device: torch.device | None = None) -> list[LoadedModel]:
    """Models of a bundle: every file checked first (:mod:`~imgae_dx.inference.bundle_format`),
    then the tensors read from safetensors and the network built (no pickle)."""
    bundle = Path(bundle_dir)
    dirs = bundle_model_dirs(bundle)
    if not dirs:
        raise BundleError(f"{bundle} is not a model bundle: no MODEL/{CONFIG_NAME} with {WEIGHTS_NAME} "
                          "(write one with `imgae-dx export --run RUN_DIR --out BUNDLE_DIR`)")
    device = device or torch.device("cpu")
    out = []
    for name in select_names(list(dirs), model_name, f"bundle {bundle}"):
        folder = dirs[name]
        cfg = read_config(folder)
        if cfg.model != name and folder != bundle:
            raise BundleError(f"{folder / CONFIG_NAME} is the config of {cfg.model!r}, in the folder "
                              f"of {name!r}: the bundle was rearranged — export it again")
        check_weights(cfg, folder)
        cal = read_calibration(folder, cfg)
        state = read_weights(folder)
        model = load_model(cfg.model, cfg.image_size, cfg.model_cfg, state, str(folder / WEIGHTS_NAME),
                           device)
        out.append(LoadedModel(cfg.model, model, cal, cfg.image_size, cfg.checkpoint.summary(), str(folder),
                               cfg.preprocessing.resize, view=cfg.view, seed=cfg.seed,
                               dataset=cfg.dataset))
    return out


def load_models(path: str | os.PathLike[str], model_name: str = "all", *, device: str = "auto",
                notify: Notify | None = None, progress: bool = False) -> list[LoadedModel]:
    """A run folder's or a bundle's models (see the module doc); ``device``: auto | cpu | cuda."""
    from imgae_dx.utils.device import resolve_device

    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{p} does not exist: pass a run folder (imgae-dx train --out) or a bundle "
                        "(imgae-dx export --out)")
    dev = resolve_device(device)
    if (p / "config.yaml").is_file():
        return load_run_models(p, model_name, device=dev, notify=notify, progress=progress)
    return load_bundle_models(p, model_name, device=dev)
