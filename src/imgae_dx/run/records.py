"""``metrics.jsonl`` rows: two typed record kinds, their JSON form, one writer, one reader.

The trainer (rank 0) is the only writer (through :class:`imgae_dx.training.loggers.MetricsLogger`);
the live plot, the report, the notebook and TensorBoard/W&B read the same types. One JSON object
per line, flat, with ``kind`` saying which type it is:

* :class:`TrainRecord` (``kind: "train"``) — every ``training.log_every_steps`` steps and at the end
  of each epoch, one per model: mean losses of the steps since the last row, LR, throughput, memory.
* :class:`ValRecord` (``kind: "val"``) — after each epoch, one per model: the loss on the stage's
  own validation split (the per-stage curve) and on the *selection set* (the validation splits of
  every stage streamed so far), which is what ``best.pt`` is chosen on.

A row's extra named values (``grad_norm``, ``kl_real``, …) are kept in ``terms`` and written flat.
Rows that are not valid records of a known kind (a torn last line after a crash, hand edits) are
skipped by :func:`read_records`. A value that is not finite (the loss of a stage without validation
images, a diverged step) is written as ``null`` and read back as None.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from imgae_dx.utils.atomic import atomic_write_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainRecord:
    """Training progress of one model (means over the steps since the previous row).

    Attributes:
        step: optimisation steps done (shared by all models); ``stage_index`` is K (from 1).
        loss: the headline loss (per-pixel MSE to the clean input, comparable across models).
        lr: learning rate of the model's (first) optimiser at ``step``.
        images_per_s: training images per second over all ranks since the previous row.
        rss_mb: resident memory of rank 0; ``elapsed_s``: seconds since the run (re)started.
        cache_hit_rate: share of this epoch's images read from the decoded-image cache.
        loss_scale: the fp16 GradScaler's scale (None when no scaler is active).
        precision: ``fp32`` | ``bf16`` | ``fp16``.
        terms: other named means (``grad_norm``, RA's ``kl_real``, …).
    """

    kind: ClassVar[str] = "train"
    step: int
    stage: str
    stage_index: int
    epoch: int
    model: str
    loss: float | None
    lr: float | None
    images_per_s: float | None
    rss_mb: float | None
    elapsed_s: float
    images_seen: int
    cache_hit_rate: float | None = None
    loss_scale: float | None = None
    precision: str = "fp32"
    terms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ValRecord:
    """Validation of one model after an epoch (normal images of held-out patients only).

    Attributes:
        val_loss: mean loss on this stage's validation split (``val_images`` images).
        selection_loss: mean loss on the selection set: the validation splits of the first
            ``selection_stages`` stages (``selection_images`` images). ``best.pt`` is chosen on it.
        best_loss: ``best.pt``'s loss on that same set after this epoch.
        improved: this epoch's weights became ``best.pt``.
        val_s: seconds the validation took.
        terms: other validation values on the stage split (U-Net ``mse_clean``, RA ``kl``).
    """

    kind: ClassVar[str] = "val"
    step: int
    stage: str
    stage_index: int
    epoch: int
    model: str
    val_loss: float | None
    val_images: int
    selection_loss: float | None
    selection_images: int
    selection_stages: int
    best_loss: float | None
    improved: bool
    val_s: float
    rss_mb: float | None
    elapsed_s: float
    terms: dict[str, float] = field(default_factory=dict)


Record = TrainRecord | ValRecord
_KINDS: dict[str, type[TrainRecord] | type[ValRecord]] = {"train": TrainRecord, "val": ValRecord}


def _clean(v: Any) -> Any:
    """JSON-safe value: non-finite floats → None, numpy/torch scalars → Python."""
    if hasattr(v, "item") and callable(v.item):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def to_json(rec: Record) -> dict[str, Any]:
    """The flat JSON object of a record (``kind`` first, ``terms`` merged in)."""
    out: dict[str, Any] = {"kind": rec.kind}
    for f in fields(rec):
        if f.name != "terms":
            out[f.name] = _clean(getattr(rec, f.name))
    for k, v in rec.terms.items():
        if k not in out:
            out[k] = _clean(v)
    return out


def from_json(obj: Mapping[str, Any]) -> Record | None:
    """The record a JSON object holds, or None when it is not a valid record of a known kind."""
    cls = _KINDS.get(obj.get("kind")) if isinstance(obj, Mapping) else None
    if cls is None:
        return None
    names = {f.name for f in fields(cls)} - {"terms"}
    try:
        kw = {k: obj[k] for k in names if k in obj}
        terms = {k: float(v) for k, v in obj.items()
                 if k not in names and k != "kind" and isinstance(v, (int, float))
                 and not isinstance(v, bool)}
        return cls(**kw, terms=terms)
    except TypeError:  # a required field is missing
        return None


class RecordWriter:
    """Appends records to ``metrics.jsonl`` (one line each, flushed)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, rec: Record) -> None:
        self._f.write(json.dumps(to_json(rec), allow_nan=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


def read_records(path: str | os.PathLike[str]) -> list[Record]:
    """The records of a ``metrics.jsonl`` in file order (invalid lines skipped, counted in the log)."""
    p = Path(path)
    if not p.exists():
        return []
    out: list[Record] = []
    bad = 0
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rec = from_json(json.loads(line))
        except json.JSONDecodeError:
            rec = None
        if rec is None:
            bad += 1
        else:
            out.append(rec)
    if bad:
        log.info("%s: %d line(s) are not metrics records and were skipped", p, bad)
    return out


def truncate_after(path: str | os.PathLike[str], max_step: int) -> int:
    """Drop rows with ``step > max_step`` (logged after the checkpoint a run resumes from), and a
    torn last line. Rewrites the file atomically; returns the number of lines removed."""
    path = Path(path)
    if not path.exists():
        return 0
    keep, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if isinstance(obj, dict) and isinstance(obj.get("step"), int) and obj["step"] > max_step:
            dropped += 1
            continue
        keep.append(line)
    if dropped:
        atomic_write_text(path, "".join(line + "\n" for line in keep))
    return dropped
