"""A run folder's trained models: the one loader of ``evaluate``, ``predict`` and ``export``.

``RunFolder(run_dir)`` reads ``RUN_DIR/config.yaml`` (:class:`~imgae_dx.errors.RunFolderError`
when there is none). ``RunFolder.load_models(model_name, device=…)`` gives one :class:`RunModel`
per model of the run (``config.yaml``'s ``models``; or the one ``model_name`` names):

1. the checkpoint it is scored with, :func:`~imgae_dx.run.checkpoint.checkpoint_file`
   (``checkpoints/MODEL/best.pt``, else ``last.pt``), read by
   :func:`~imgae_dx.run.checkpoint.read_checkpoint` (``weights_only``, onto the CPU);
2. the network built from the configuration saved in that checkpoint (optionally changed by
   ``adjust``: the evaluator's scoring overlay) and loaded strictly by
   :func:`imgae_dx.models.load_model`, in eval mode on ``device``. A checkpoint of another image
   size than ``config.yaml``'s ``data.image_size`` is refused (the folder is inconsistent).

``RunFolder.saved_calibration(m)`` is the model's ``checkpoints/MODEL/calibration.json`` when it
belongs to these weights and scoring settings, else None and why. Computing a missing one streams
the run's validation split: :mod:`imgae_dx.inference.run_calibration` does that for ``predict``
and ``export``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgae_dx.config import MODEL_NAMES, Config, config_from_yaml_text
from imgae_dx.errors import CheckpointError, RunFolderError, UserError
from imgae_dx.models import load_model
from imgae_dx.run.calibration import Calibration, calibration_path, model_scoring
from imgae_dx.run.checkpoint import ArchiveRef, CheckpointSummary, checkpoint_file, read_checkpoint

#: (the configuration saved with a checkpoint, the checkpoint file) → the configuration to build with
Adjust = Callable[[Config, Path], Config]


@dataclass
class RunModel:
    """One trained model of a run folder, ready to score.

    Attributes:
        name: ``unet`` | ``ra`` | ``ae`` | ``pca``.
        model: the ``nn.Module`` in eval mode, on its device.
        config: the configuration it was built with (the one saved in its checkpoint, adjusted).
        image_size: model resolution in pixels.
        checkpoint: which training state the weights are (file relative to the run, step, stage, …).
        path: the checkpoint file.
        file_stamp: ``size:mtime_ns`` of that file when it was read (the evaluator's resume identity).
        archive: the archive the checkpoint records having trained on (None when it records none).
        wandb_run_id: the training run's W&B id (None when it did not log to W&B).
    """

    name: str
    model: Any
    config: Config
    image_size: int
    checkpoint: CheckpointSummary
    path: Path
    file_stamp: str
    archive: ArchiveRef | None = None
    wandb_run_id: str | None = None

    @property
    def model_config(self) -> Any:
        """The model's section of :attr:`config` (``config.model.<name>``)."""
        return getattr(self.config.model, self.name)


def select_names(available: list[str], model_name: str, where: str) -> list[str]:
    """``all`` → every available model; a name → ``[name]`` if available, else UserError naming
    what ``where`` (a run folder, a bundle) holds."""
    if model_name == "all":
        return list(available)
    if model_name not in MODEL_NAMES:
        raise UserError(f"unknown model {model_name!r}; choose one of {', '.join(MODEL_NAMES)} or all")
    if model_name not in available:
        raise UserError(f"{where} holds no {model_name!r} model (it has: {', '.join(available) or 'none'})")
    return [model_name]


class RunFolder:
    """A training run's ``--out`` folder, opened for reading its models (see the module doc).

    Attributes:
        path: the folder.
        config: its ``config.yaml``.
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.path = Path(run_dir)
        p = self.path / "config.yaml"
        if not p.is_file():
            raise RunFolderError(f"{self.path} has no config.yaml: pass the --out folder of a training run "
                                 "(`imgae-dx train --out RUN_DIR`)")
        self.config = config_from_yaml_text(p.read_text(), str(p))

    @functools.cached_property
    def view(self) -> str:
        """The view cohort the run's images were chosen in: ``data.view``, or ``all`` when its
        ``split.csv`` records no view position (a dataset without views, which ignores the key)."""
        from imgae_dx.run.splits import read_split_table

        table = read_split_table(self.path)
        if table is not None and len(table) and not any(table.view):
            return "all"
        return str(self.config.data.view)

    def load_model(self, name: str, *, device: Any = "cpu", adjust: Adjust | None = None) -> RunModel:
        """Model ``name`` from its ``best.pt`` (else ``last.pt``).

        Raises:
            CheckpointError: no checkpoint, an unreadable one, one of another model or image size,
                or weights that do not fit the configured architecture.
        """
        path = checkpoint_file(self.path, name)
        ck = read_checkpoint(path, model_name=name, map_location="cpu")
        cfg = (config_from_yaml_text(ck.config_yaml, f"the configuration saved in {path}")
               if ck.config_yaml else self.config)
        size = int(ck.image_size)
        if size != self.config.data.image_size:
            raise CheckpointError(f"{path} was trained at {size}px but the run's config.yaml says "
                                  f"data.image_size={self.config.data.image_size}; the run folder is "
                                  "inconsistent")
        if adjust is not None:
            cfg = adjust(cfg, path)
        model = load_model(name, size, getattr(cfg.model, name), ck.model, str(path), device)
        st = path.stat()
        return RunModel(name=name, model=model, config=cfg, image_size=size,
                        checkpoint=CheckpointSummary.of(ck, str(path.relative_to(self.path))), path=path,
                        file_stamp=f"{st.st_size}:{st.st_mtime_ns}", archive=ck.archive,
                        wandb_run_id=ck.wandb_run_id)

    def load_models(self, model_name: str = "all", *, device: Any = "cpu",
                    adjust: Adjust | None = None) -> list[RunModel]:
        """Every model of the run (``model_name="all"``) or the one named, in ``config.yaml`` order."""
        names = select_names(list(self.config.models), model_name, f"run folder {self.path}")
        return [self.load_model(n, device=device, adjust=adjust) for n in names]

    def saved_calibration(self, m: RunModel) -> tuple[Calibration | None, str | None]:
        """``(calibration, None)`` when ``checkpoints/MODEL/calibration.json`` holds the scores of
        these weights (step), size and scoring settings; else ``(None, why)``.

        Raises:
            CalibrationError: the file exists but cannot be read.
        """
        path = calibration_path(self.path, m.name)
        if not path.is_file():
            return None, f"{path} does not exist"
        cal = Calibration.load(path)
        why = cal.matches(model_scoring(m.model_config), m.image_size, m.checkpoint.step)
        return (None, f"{path} is stale ({why})") if why is not None else (cal, None)
