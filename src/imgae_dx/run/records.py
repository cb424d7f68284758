"""``metrics.jsonl`` rows: two typed record kinds, their JSON form, one writer, one reader.

The trainer (rank 0) is the only writer (through :class:`imgae_dx.training.loggers.MetricsLogger`);
the live plot, the report, the notebook and TensorBoard/W&B read the same types. One JSON object
per line, flat, ``format`` first (:data:`RECORD_FORMAT`, ``imgae_dx.record/2``), then ``kind``
saying which type it is:

* :class:`TrainRecord` (``kind: "train"``) — every ``training.log_every_steps`` steps and at the end
  of each epoch, one per model: mean losses of the steps since the last row, LR, throughput, memory.
* :class:`ValRecord` (``kind: "val"``) — after each epoch, one per model: the loss on the stage's
  own validation split (the per-stage curve) and on the *selection set* (the validation splits of
  every stage streamed so far), which is what ``best.pt`` is chosen on.

A row's extra named values (``grad_norm``, ``kl_real``, …) are kept in ``terms`` and written flat.
A value that is not finite (the loss of a stage without validation images, a diverged step) is
written as ``null`` and read back as None.

Reading (:func:`read_records`): a row without ``format`` was written before the tag (format 1,
which has the fields of format 2) and reads as one of this format. A row of another format (a
newer imgae-dx), of an unknown kind, or missing a field its type requires is skipped and reported
at warning level with its line number; so is a line that is not JSON, except the last one, which a
crash may have cut short (reported at info level).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from imgae_dx.utils.atomic import atomic_write_text

log = logging.getLogger(__name__)

RECORD_VERSION = 2
RECORD_FORMAT = f"imgae_dx.record/{RECORD_VERSION}"
_FORMAT_PREFIX = "imgae_dx.record/"
#: formats this version reads: 1 (rows without the tag) has the fields of 2
READABLE_VERSIONS = (1, 2)


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


class RecordError(ValueError):
    """A JSON object that is not a record this version can read (the message says why)."""


def to_json(rec: Record) -> dict[str, Any]:
    """The flat JSON object of a record (``format`` and ``kind`` first, ``terms`` merged in)."""
    out: dict[str, Any] = {"format": RECORD_FORMAT, "kind": rec.kind}
    for f in fields(rec):
        if f.name != "terms":
            out[f.name] = _clean(getattr(rec, f.name))
    for k, v in rec.terms.items():
        if k not in out:
            out[k] = _clean(v)
    return out


def _version(fmt: Any) -> int:
    """The version of a row's ``format`` (1 when absent); RecordError when it is not one."""
    if fmt is None:
        return 1
    if isinstance(fmt, str) and fmt.startswith(_FORMAT_PREFIX) and fmt[len(_FORMAT_PREFIX):].isdigit():
        return int(fmt[len(_FORMAT_PREFIX):])
    raise RecordError(f"format {fmt!r} is not a metrics record format")


def parse_record(obj: Any) -> Record:
    """The record a JSON object holds (see the module doc for older rows).

    Raises:
        RecordError: not an object, another format, an unknown kind, or a required field missing.
    """
    if not isinstance(obj, Mapping):
        raise RecordError("not a JSON object")
    version = _version(obj.get("format"))
    if version > RECORD_VERSION:
        raise RecordError(f"format {obj['format']!r} is from a newer imgae-dx (this one reads "
                          f"{RECORD_FORMAT!r} and untagged rows): upgrade imgae-dx to read it")
    if version not in READABLE_VERSIONS:
        raise RecordError(f"format {obj['format']!r} is not one this imgae-dx reads")
    cls = _KINDS.get(obj.get("kind"))  # type: ignore[arg-type]
    if cls is None:
        raise RecordError(f"unknown kind {obj.get('kind')!r} (train or val)")
    names = {f.name for f in fields(cls)} - {"terms"}
    missing = sorted(f.name for f in fields(cls) if f.name in names and f.name not in obj
                     and f.default is MISSING and f.default_factory is MISSING)
    if missing:
        raise RecordError(f"a {cls.kind} record without {', '.join(missing)}")
    kw = {k: obj[k] for k in names if k in obj}
    terms = {k: float(v) for k, v in obj.items()
             if k not in names and k not in ("kind", "format") and isinstance(v, (int, float))
             and not isinstance(v, bool)}
    return cls(**kw, terms=terms)


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
    """The records of a ``metrics.jsonl`` in file order; lines that are not readable records are
    skipped and reported (module doc)."""
    p = Path(path)
    if not p.exists():
        return []
    out: list[Record] = []
    skipped: list[str] = []
    lines = p.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                log.info("%s: line %d is cut short (a write interrupted by a crash) and was skipped", p, number)
            else:
                skipped.append(f"line {number}: not JSON")
            continue
        try:
            out.append(parse_record(obj))
        except RecordError as e:
            skipped.append(f"line {number}: {e}")
    if skipped:
        more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        log.warning("%s: %d line(s) are not readable metrics records and were skipped (%s%s)",
                    p, len(skipped), "; ".join(skipped[:5]), more)
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
