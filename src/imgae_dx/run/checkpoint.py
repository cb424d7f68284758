"""The checkpoint file: one versioned payload type, its safe encoding, and its typed reader.

A checkpoint (``RUN_DIR/checkpoints/MODEL/{last,prev,stage_K,best}.pt``) holds one
:class:`CheckpointPayload`: one model's weights and optimiser state plus everything an exact
resume needs. It is written only by :class:`imgae_dx.training.checkpointer.Checkpointer`; the
trainer (resume), the evaluator, the report and ``predict``/``export`` read it through
:func:`read_checkpoint`, so they all see the same typed fields. :class:`CheckpointSummary` is what
a checkpoint is without its tensors (file, progress, validation loss): the evaluator records it
per model in ``eval/metrics.json`` and ``predict``/``export`` carry it with each loaded model.

On disk a payload is a ``dict`` of tensors and primitive containers (``dict``, ``list``, ``tuple``,
``str``, ``int``, ``float``, ``bool``, ``None``) under ``format = "imgae_dx.checkpoint/2"``, so it
loads with ``torch.load(weights_only=True)``: a file that needs arbitrary unpickling is refused.
numpy arrays and scalars (a dataset position) become tagged tensors and come back as numpy. A
file of another format version is refused with a message that says which version wrote it.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgae_dx.errors import CheckpointError

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 2
FORMAT = f"imgae_dx.checkpoint/{FORMAT_VERSION}"
_FORMAT_PREFIX = "imgae_dx.checkpoint/"

_NDARRAY_TAG = "__ndarray__"
_NPSCALAR_TAG = "__npscalar__"


# ------------------------------------------------------------------------------ payload types
@dataclass
class Position:
    """Where training continues: 0-based stage index, epoch, and batches done in that epoch."""

    stage_index: int = 0
    epoch: int = 0
    batch: int = 0


@dataclass
class ArchiveRef:
    """Which archive bytes the saved dataset positions refer to (identity is secret-free)."""

    identity: str
    version: str
    size: int


@dataclass
class RankState:
    """One rank's share of the state (its dataset position, RNG streams, noise generators)."""

    dataset: dict[str, Any] | None
    rng: dict[str, Any]
    generators: dict[str, torch.Tensor]


@dataclass
class Selection:
    """``best.pt`` bookkeeping of one model (see :mod:`imgae_dx.training.selection`).

    Attributes:
        best_loss: validation loss of ``best.pt`` on the selection set (None: not validated yet).
        set_stages: the selection set is the validation split of the first ``set_stages`` stages.
        best_step: training step at which ``best.pt`` was written.
        bad_epochs: epochs since the last improvement (early stopping).
    """

    best_loss: float | None = None
    set_stages: int = 0
    best_step: int | None = None
    bad_epochs: int = 0


@dataclass
class CheckpointPayload:
    """Everything one model's checkpoint holds (``RUN_DIR/checkpoints/MODEL/*.pt``).

    Attributes:
        model_name: ``unet`` | ``ra`` | ``ae``.
        model: the ``nn.Module`` state dict (CPU tensors).
        config_yaml: the run's resolved configuration (``RUN_DIR/config.yaml`` at save time).
        fingerprint: SHA-256 of the run-defining configuration (:mod:`imgae_dx.run.identity`).
        image_size: model resolution in pixels.
        step: optimisation steps done; ``images_seen``: images over all ranks.
        stages: the run's stages in order; ``stage``/``stage_k``: the stage being trained when
            saved (for ``stage_K.pt`` and ``best.pt``: the one just validated), K from 1.
        position: where training continues.
        optimizers: the objective's optimiser state dicts by name (RA: encoder, decoder).
        optimizer_steps: steps the LR schedule has seen; ``scaler``: GradScaler state (fp16).
        precision: ``fp32`` | ``bf16`` | ``fp16`` (what the steps ran in).
        val_loss: loss of *these* weights on the selection set of ``val_stages`` stages (None when
            saved mid-epoch, before validation).
        selection: the ``best.pt`` bookkeeping at save time.
        rank_states: one :class:`RankState` per rank (index = rank).
    """

    model_name: str
    model: dict[str, torch.Tensor]
    config_yaml: str
    fingerprint: str
    image_size: int
    package_version: str
    step: int = 0
    images_seen: int = 0
    stages: list[str] = field(default_factory=list)
    stage: str = ""
    stage_k: int = 0
    position: Position = field(default_factory=Position)
    world_size: int = 1
    optimizers: dict[str, Any] = field(default_factory=dict)
    optimizer_steps: int = 0
    scaler: dict[str, Any] | None = None
    precision: str = "fp32"
    val_loss: float | None = None
    val_stages: int = 0
    selection: Selection = field(default_factory=Selection)
    rank_states: list[RankState] = field(default_factory=list)
    archive: ArchiveRef | None = None
    wandb_run_id: str | None = None
    saved_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The on-disk dict (safe types only), ``format`` first."""
        return to_safe({"format": FORMAT, **_shallow_dict(self)})

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "checkpoint") -> CheckpointPayload:
        """Inverse of :meth:`to_dict`; raises :class:`CheckpointError` on another format/shape."""
        fmt = raw.get("format") if isinstance(raw, Mapping) else None
        if not isinstance(fmt, str) or not fmt.startswith(_FORMAT_PREFIX):
            raise CheckpointError(f"{where} is not an imgae-dx checkpoint (no {_FORMAT_PREFIX}N format tag)")
        if fmt != FORMAT:
            written_by = raw.get("package_version", "an older version")
            raise CheckpointError(
                f"{where} has checkpoint format {fmt!r} (written by imgae-dx {written_by}); this "
                f"version reads {FORMAT!r} only. Train the run again with this version, or use "
                f"imgae-dx {written_by} to evaluate or resume it"
            )
        d = from_safe({k: v for k, v in raw.items() if k != "format"})
        try:
            d["position"] = Position(**d["position"])
            d["selection"] = Selection(**d["selection"])
            d["archive"] = ArchiveRef(**d["archive"]) if d.get("archive") else None
            d["rank_states"] = [RankState(**r) for r in d["rank_states"]]
            known = {f.name for f in fields(cls)}
            unknown = set(d) - known
            if unknown:
                raise TypeError(f"unexpected fields {sorted(unknown)}")
            return cls(**d)
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{where} is damaged or incomplete ({e}); use another checkpoint "
                                  "(prev.pt, stage_K.pt)") from None


@dataclass(frozen=True, kw_only=True)
class CheckpointSummary:
    """A checkpoint without its tensors: which file, how far training had got, how good it was.

    The evaluator writes one per model into ``eval/metrics.json`` (``models.MODEL.checkpoint``);
    ``predict``/``export`` keep one with each loaded model. Fields a file written by an earlier
    version lacks are None (``stage_k``, ``position``, ``precision``, ``package_version``,
    ``fingerprint``) or empty (``stages``).

    Attributes:
        file: the checkpoint file relative to the run folder (``checkpoints/unet/best.pt``).
        step, images_seen, stage, stage_k, position, stages, precision, package_version,
        fingerprint, saved_at: as in :class:`CheckpointPayload`.
        val_loss: loss of these weights on the selection set of ``val_stages`` stages (None when
            saved before validation).
    """

    file: str
    stage: str | None = None
    stage_k: int | None = None
    position: Position | None = None
    step: int
    images_seen: int | None = None
    val_loss: float | None = None
    val_stages: int | None = None
    saved_at: float | None = None
    stages: list[str] = field(default_factory=list)
    precision: str | None = None
    package_version: str | None = None
    fingerprint: str | None = None

    @classmethod
    def of(cls, ck: CheckpointPayload, file: str) -> CheckpointSummary:
        """The summary of a read payload (``file``: its path relative to the run folder)."""
        return cls(file=file, step=ck.step, stage=ck.stage, stage_k=ck.stage_k,
                   position=Position(**ck.position.__dict__), images_seen=ck.images_seen,
                   val_loss=ck.val_loss, val_stages=ck.val_stages, saved_at=ck.saved_at,
                   stages=list(ck.stages), precision=ck.precision, package_version=ck.package_version,
                   fingerprint=ck.fingerprint)

    def to_json(self) -> dict[str, Any]:
        """The JSON object (``position`` as ``{stage_index, epoch, batch}``)."""
        return _shallow_dict(self)


def _shallow_dict(obj: Any) -> Any:
    """Dataclasses → dicts, recursively, without copying tensors (``dataclasses.asdict`` would)."""
    if hasattr(obj, "__dataclass_fields__"):
        return {f.name: _shallow_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, list):
        return [_shallow_dict(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------ safe encoding
def to_safe(obj: Any, where: str = "checkpoint") -> Any:
    """Return ``obj`` with numpy values turned into tagged tensors; refuse anything unsafe.

    Raises:
        CheckpointError: an object that ``torch.load(weights_only=True)`` could not read back.
    """
    import torch

    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor, torch.Size, torch.dtype)):
        return obj
    if isinstance(obj, np.ndarray):
        return {_NDARRAY_TAG: torch.from_numpy(np.ascontiguousarray(obj).copy()), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return {_NPSCALAR_TAG: obj.item(), "dtype": str(obj.dtype)}
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise CheckpointError(f"{where}: key {k!r} of type {type(k).__name__} cannot be saved safely")
            out[k] = to_safe(v, f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        items = [to_safe(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise CheckpointError(
        f"{where}: value of type {type(obj).__name__} cannot be saved safely "
        "(only tensors, numpy arrays and primitive containers are allowed)"
    )


def from_safe(obj: Any) -> Any:
    """Inverse of :func:`to_safe`: tagged tensors back to numpy arrays / scalars."""
    if isinstance(obj, dict):
        if _NDARRAY_TAG in obj and set(obj) == {_NDARRAY_TAG, "dtype"}:
            return obj[_NDARRAY_TAG].numpy().astype(np.dtype(obj["dtype"]), copy=True)
        if _NPSCALAR_TAG in obj and set(obj) == {_NPSCALAR_TAG, "dtype"}:
            return np.dtype(obj["dtype"]).type(obj[_NPSCALAR_TAG])
        return {k: from_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_safe(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(from_safe(v) for v in obj)
    return obj


# ------------------------------------------------------------------------------ reading
def load_raw(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a checkpoint file, errors turned into one line."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} was refused: it holds objects other than tensors and primitive "
            f"values (unsafe pickle payload): {msg[:200]}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {str(e)[:200]}); "
            "delete it or use another checkpoint (prev.pt, stage_K.pt)"
        ) from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"checkpoint {path} is not an imgae-dx checkpoint")
    return raw


def checkpoint_file(run_dir: str | os.PathLike[str], name: str) -> Path:
    """The checkpoint a run is scored with: ``checkpoints/NAME/best.pt``, else ``last.pt``
    (CheckpointError when neither exists)."""
    folder = Path(run_dir) / "checkpoints" / name
    for p in (folder / "best.pt", folder / "last.pt"):
        if p.is_file():
            return p
    raise CheckpointError(f"no checkpoint for model {name!r} in {folder} (best.pt or last.pt); "
                          f"train it first (`imgae-dx train --out {run_dir} --model {name}`)")


def read_checkpoint(
    path: str | os.PathLike[str],
    *,
    model_name: str | None = None,
    fingerprint: str | None = None,
    map_location: str | torch.device = "cpu",
) -> CheckpointPayload:
    """Load a checkpoint safely and check it is what the caller expects.

    Args:
        path: the ``.pt`` file.
        model_name: if given, the checkpoint must hold this model.
        fingerprint: if given, it must belong to a run with this configuration fingerprint.

    Raises:
        CheckpointError: missing, corrupt or truncated, unsafe pickle payload, another format
            version, another model or another run configuration.
    """
    ck = CheckpointPayload.from_dict(load_raw(path, map_location), f"checkpoint {path}")
    if model_name is not None and ck.model_name != model_name:
        raise CheckpointError(f"checkpoint {path} holds model {ck.model_name!r}, not {model_name!r}")
    if fingerprint is not None and ck.fingerprint != fingerprint:
        raise CheckpointError(
            f"checkpoint {path} belongs to a run with another configuration "
            f"(fingerprint {ck.fingerprint[:12]} ≠ {fingerprint[:12]}); "
            "resume with the run's own config or start a new --out folder"
        )
    return ck


def state_dict_digest(sd: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict's names and tensor bytes: equal digests = bit-identical weights."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
