"""Metric sinks: ``metrics.jsonl`` always; TensorBoard or Weights & Biases on request.

The trainer logs typed records (:mod:`imgae_dx.run.records`: ``TrainRecord``, ``ValRecord``);
``metrics.jsonl`` gets each as one flat JSON line (flushed), the optional backend the same flat
values as scalars. TensorBoard and W&B are imported only when chosen; a missing package raises
:class:`LoggerUnavailableError` with the install command. The W&B run id is kept (the trainer
stores it in the checkpoint) so a resumed run continues the same W&B run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from imgae_dx.errors import UserError
from imgae_dx.run.records import Record, RecordWriter, to_json

_TAG_KEYS = ("step", "stage", "stage_index", "epoch", "model", "kind", "time")
# Shared by all models of a step: logged once under system/ in W&B.
_SYSTEM_KEYS = frozenset(
    {"images_per_s", "rss_mb", "cache_hit_rate", "bytes_fetched", "requests", "skipped",
     "mb_per_s", "images"}
)


class LoggerUnavailableError(UserError):
    """The chosen logger's package is not installed (message gives the install command)."""


_INSTALL_HINT = {
    "tensorboard": ("torch.utils.tensorboard", "tensorboard",
                    "--logger tensorboard needs the tensorboard package: "
                    "pip install 'imgae-dx[tensorboard]' (or pip install tensorboard)"),
    "wandb": ("wandb", "wandb",
              "--logger wandb needs the wandb package: pip install 'imgae-dx[wandb]' "
              "(or pip install wandb), then `wandb login` or WANDB_MODE=offline"),
}


def check_available(kind: str) -> None:
    """Raise :class:`LoggerUnavailableError` now if logger ``kind`` cannot be used (no import)."""
    import importlib.util

    if kind == "jsonl":
        return
    if kind not in _INSTALL_HINT:
        raise LoggerUnavailableError(f"unknown logger {kind!r}; allowed: jsonl, tensorboard, wandb")
    _, package, hint = _INSTALL_HINT[kind]
    if importlib.util.find_spec(package) is None:
        raise LoggerUnavailableError(hint)


class TensorBoardLogger:
    """Scalars to ``RUN_DIR/tensorboard`` (tag ``MODEL/KEY`` when the record names a model)."""

    def __init__(self, log_dir: str | os.PathLike[str]):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise LoggerUnavailableError(_INSTALL_HINT["tensorboard"][2]) from None
        self._w = SummaryWriter(log_dir=str(log_dir))

    def log(self, record: Mapping[str, Any]) -> None:
        step = int(record.get("step", 0))
        prefix = f"{record['model']}/" if record.get("model") else ""
        for k, v in record.items():
            if k in _TAG_KEYS or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            self._w.add_scalar(prefix + k, float(v), step)

    def close(self) -> None:
        self._w.flush()
        self._w.close()


class WandbLogger:
    """Weights & Biases: loss per model and stage, memory and streaming speed.

    ``run_id`` continues an existing run (``resume="allow"``); the id of the run in use is
    :attr:`run_id` (the trainer stores it in checkpoints).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        project: str,
        entity: str | None,
        config: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        name: str | None = None,
    ):
        try:
            import wandb
        except ImportError:
            raise LoggerUnavailableError(_INSTALL_HINT["wandb"][2]) from None
        self._wandb = wandb
        try:
            self._run = wandb.init(
                project=project,
                entity=entity,
                id=run_id,
                resume="allow",
                dir=str(run_dir),
                name=name,
                config=dict(config or {}),
                reinit="finish_previous",
            )
        except Exception as e:  # wandb raises its own types for auth / network problems
            raise LoggerUnavailableError(
                f"W&B could not start ({type(e).__name__}): run `wandb login`, set WANDB_API_KEY, "
                "or use WANDB_MODE=offline"
            ) from None
        self.run_id: str = self._run.id

    def log(self, record: Mapping[str, Any]) -> None:
        data: dict[str, Any] = {}
        model = record.get("model")
        stage = record.get("stage")
        for k, v in record.items():
            if k in _TAG_KEYS or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if not math.isfinite(float(v)):
                continue
            if model and k not in _SYSTEM_KEYS:
                data[f"{model}/{k}"] = v
                if stage and k in ("loss", "val_loss"):
                    data[f"{model}/{stage}/{k}"] = v
            else:
                data[f"system/{k}"] = v
        if "epoch" in record:
            data["epoch"] = record["epoch"]
        if "stage_index" in record:
            data["stage_index"] = record["stage_index"]
        if data:
            self._run.log(data, step=int(record.get("step", 0)))

    def close(self) -> None:
        self._run.finish()


class MetricsLogger:
    """What the trainer talks to: JSONL always, plus the optional backend.

    Args:
        run_dir: the run folder (``metrics.jsonl`` is written there).
        kind: ``"jsonl"``, ``"tensorboard"`` or ``"wandb"``.
        wandb_project / wandb_entity: W&B destination.
        config: resolved configuration (JSON-mode dict) attached to the W&B run.
        wandb_run_id: id of the W&B run to continue (from the checkpoint on resume).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        kind: str = "jsonl",
        *,
        wandb_project: str = "imgae-dx",
        wandb_entity: str | None = None,
        config: Mapping[str, Any] | None = None,
        wandb_run_id: str | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.kind = kind
        self.backend: TensorBoardLogger | WandbLogger | None = None
        if kind == "tensorboard":
            self.backend = TensorBoardLogger(self.run_dir / "tensorboard")
        elif kind == "wandb":
            self.backend = WandbLogger(
                self.run_dir, wandb_project, wandb_entity, config, run_id=wandb_run_id,
                name=self.run_dir.name,
            )
        elif kind != "jsonl":
            raise LoggerUnavailableError(f"unknown logger {kind!r}; allowed: jsonl, tensorboard, wandb")
        self.jsonl = RecordWriter(self.run_dir / "metrics.jsonl")

    @property
    def wandb_run_id(self) -> str | None:
        return self.backend.run_id if isinstance(self.backend, WandbLogger) else None

    def log(self, record: Record) -> None:
        self.jsonl.write(record)
        if self.backend is not None:
            self.backend.log(to_json(record))

    def close(self) -> None:
        self.jsonl.close()
        if self.backend is not None:
            self.backend.close()
            self.backend = None
