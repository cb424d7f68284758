"""Trained models with their calibration, from a run folder or from a bundle.

``load_models(path, model_name="all", device="auto")`` → ``list[LoadedModel]``:

* a **run folder** (``config.yaml`` + ``checkpoints/``): each model's ``checkpoints/MODEL/best.pt``
  (else ``last.pt``, as the evaluator chooses), read with
  :func:`imgae_dx.run.checkpoint.read_checkpoint`, and its ``calibration.json`` next to it. A
  calibration that is missing, or that belongs to other weights or settings (another step,
  anomaly map or size), is computed by streaming the run's validation split
  (:func:`imgae_dx.inference.run_calibration.calibrate_run`, announced through ``notify``) and
  saved where the trainer writes it — the one file ``predict``/``export`` may write into a run
  folder; when the run folder is read-only, it is kept for this process only (announced);
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

from imgae_dx.config import MODEL_NAMES
from imgae_dx.data.decode import Resize
from imgae_dx.errors import RunFolderError, UserError
from imgae_dx.inference.bundle_format import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    check_weights,
    read_calibration,
    read_config,
)
from imgae_dx.inference.errors import BundleError
from imgae_dx.inference.images import DEFAULT_RESIZE
from imgae_dx.models import load_model
from imgae_dx.run.calibration import Calibration, calibration_path, model_scoring
from imgae_dx.run.checkpoint import ArchiveRef, CheckpointSummary, checkpoint_file, read_checkpoint

Notify = Callable[[str], None]


@dataclass
class LoadedModel:
    """One model ready to score.

    Attributes:
        name: ``unet`` | ``ra`` | ``ae``.
        model: the ``nn.Module`` in eval mode, on its device.
        calibration: its normal validation scores.
        image_size: model resolution in pixels.
        checkpoint: which training state the weights are (file, step, stage, stages, …).
        origin: the run folder or bundle model folder they were loaded from.
        resize: the ``data.resize`` policy the model was trained with (squash | pad | crop).
        view, seed: the run's view cohort and seed.
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
    source: str | None = None
    archive: ArchiveRef | None = None


def select_names(available: list[str], model_name: str, where: str) -> list[str]:
    """``all`` → every available model; a name → [name] if available, else UserError."""
    if model_name == "all":
        return list(available)
    if model_name not in MODEL_NAMES:
        raise UserError(f"unknown model {model_name!r}; choose one of {', '.join(MODEL_NAMES)} or all")
    if model_name not in available:
        raise UserError(f"{where} holds no {model_name!r} model (it has: {', '.join(available) or 'none'})")
    return [model_name]


def _run_config(run_dir: Path) -> Any:
    from imgae_dx.config import config_from_yaml_text

    p = run_dir / "config.yaml"
    if not p.is_file():
        raise RunFolderError(f"{run_dir} has no config.yaml: pass the --out folder of a training run "
                             "(`imgae-dx train --out RUN_DIR`) or a bundle folder of `imgae-dx export`")
    return config_from_yaml_text(p.read_text(), str(p))


def load_run_models(run_dir: str | os.PathLike[str], model_name: str = "all", *,
                    device: torch.device | None = None, notify: Notify | None = None,
                    progress: bool = False) -> list[LoadedModel]:
    """The run's models (best.pt, else last.pt) with their calibration (computed when needed)."""
    from imgae_dx.config import config_from_yaml_text

    run_dir = Path(run_dir)
    cfg = _run_config(run_dir)
    device = device or torch.device("cpu")
    out: list[LoadedModel] = []
    stale: dict[str, str] = {}
    for name in select_names(list(cfg.models), model_name, f"run folder {run_dir}"):
        path = checkpoint_file(run_dir, name)
        ck = read_checkpoint(path, model_name=name)
        run_cfg = config_from_yaml_text(ck.config_yaml, f"{path} config") if ck.config_yaml else cfg
        model_cfg = getattr(run_cfg.model, name)
        model = load_model(name, ck.image_size, model_cfg, ck.model, str(path), device)
        cal_file = calibration_path(run_dir, name)
        cal: Calibration | None = None
        if cal_file.is_file():
            cal = Calibration.load(cal_file)
            why = cal.matches(model_scoring(model_cfg), ck.image_size, ck.step)
            if why is not None:
                stale[name] = f"{cal_file} is stale ({why})"
                cal = None
        else:
            stale[name] = f"{cal_file} does not exist"
        out.append(LoadedModel(name, model, cal, ck.image_size,  # type: ignore[arg-type]
                               CheckpointSummary.of(ck, str(path.relative_to(run_dir))), str(run_dir),
                               run_cfg.data.resize, view=run_cfg.data.view, seed=run_cfg.seed,
                               source=run_cfg.source, archive=ck.archive))
    if stale:
        from imgae_dx.inference.run_calibration import calibrate_run

        for why in stale.values():
            if notify:
                notify(f"{why}: computing it from the run's validation normals (once)")
        todo = [m for m in out if m.name in stale]
        for m, cal in zip(todo, calibrate_run(cfg, todo, progress=progress), strict=True):
            m.calibration = cal
            dest = calibration_path(run_dir, m.name)
            try:
                cal.save(dest)
                where = f"saved to {dest}"
            except OSError as e:  # a read-only run folder: use it, keep nothing
                where = f"not saved ({dest}: {e.strerror or e}); kept for this command only"
            if notify:
                notify(f"calibration of {m.name}: {cal.n} validation normals, {where}")
    return out


# ------------------------------------------------------------------------------ bundles
def is_bundle_model_dir(p: Path) -> bool:
    return (p / CONFIG_NAME).is_file() and (p / WEIGHTS_NAME).is_file()


def bundle_model_dirs(bundle: Path) -> dict[str, Path]:
    """Model name → folder of a bundle (or of one of its model folders)."""
    if is_bundle_model_dir(bundle):
        return {read_config(bundle).model: bundle}
    return {d.name: d for d in sorted(bundle.iterdir()) if d.is_dir() and is_bundle_model_dir(d)} \
        if bundle.is_dir() else {}


def load_bundle_models(bundle_dir: str | os.PathLike[str], model_name: str = "all", *,
                       device: torch.device | None = None) -> list[LoadedModel]:
    """Models of a bundle: every file checked first (:mod:`~imgae_dx.inference.bundle_format`),
    then the tensors read from safetensors and the network built (no pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

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
        try:
            state = load_file(str(folder / WEIGHTS_NAME), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise BundleError(f"{folder / WEIGHTS_NAME} is damaged ({e})") from None
        model = load_model(cfg.model, cfg.image_size, cfg.model_cfg, state, str(folder / WEIGHTS_NAME),
                           device)
        out.append(LoadedModel(cfg.model, model, cal, cfg.image_size, cfg.checkpoint.summary(), str(folder),
                               cfg.preprocessing.resize, view=cfg.view, seed=cfg.seed))
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
