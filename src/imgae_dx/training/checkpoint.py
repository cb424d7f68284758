"""Checkpoints: atomic writes, safe loads, RNG capture and run identity checks.

A checkpoint is a ``dict`` holding only tensors and primitive containers (``dict``, ``list``,
``tuple``, ``str``, ``int``, ``float``, ``bool``, ``None``), so it loads with
``torch.load(weights_only=True)``: a file that needs arbitrary unpickling is refused. numpy arrays
and scalars inside a payload (e.g. a dataset position) are converted on save into tagged tensors
and restored on load. The resolved configuration travels as YAML text.

Writes are atomic: the payload goes to a temporary file in the destination folder, is fsynced, and
replaces the destination with ``os.replace`` — a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import random
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgae_dx.errors import CheckpointError
from imgae_dx.utils.atomic import atomic_open, fsync_dir

FORMAT = "imgae_dx.checkpoint/1"

# Config keys that may change between a run and its resume (speed, I/O and reporting knobs);
# every other key is part of the run's identity.
RESUMABLE_KEYS: tuple[str, ...] = (
    "out",
    "logging",
    "evaluation",
    "training.device",
    "training.compile",
    "training.cudnn_benchmark",
    "training.tf32",
    "training.checkpoint_every_steps",
    "training.checkpoint_every_minutes",
    "training.log_every_steps",
    "training.live_plot_every_s",
    "training.memory_check_every_steps",
    "data.requests_in_flight",
    "data.decode_workers",
    "data.cache",
    "data.cache_dir",
    "data.memory_budget_mb",
    "data.index_cache_dir",
    "data.http",
)

_NDARRAY_TAG = "__ndarray__"
_NPSCALAR_TAG = "__npscalar__"


# ------------------------------------------------------------------------------ safe payloads
def to_safe(obj: Any, where: str = "checkpoint") -> Any:
    """Return ``obj`` with numpy values turned into tagged tensors; refuse anything unsafe.

    Raises:
        CheckpointError: an object that ``torch.load(weights_only=True)`` could not read back.
    """
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor, torch.Size)):
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
    if isinstance(obj, torch.dtype):
        return obj
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


# ------------------------------------------------------------------------------ save / load
def save_checkpoint(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (temp file in the same folder, fsync, os.replace).

    Returns:
        The destination path.
    """
    path = Path(path)
    safe = to_safe(dict(payload))
    try:
        with atomic_open(path) as f:
            torch.save(safe, f)
    except OSError as e:
        raise CheckpointError(
            f"could not write checkpoint {path}: {e.strerror or e}; the previous checkpoint there "
            "is intact — free disk space (or choose another --out) and resume with --resume"
        ) from None
    return path


def copy_checkpoint(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Atomically make ``dst`` a copy of ``src``: a hard link where possible, else a byte copy.

    Checkpoints are never modified in place (always replaced), so a hard link is a safe copy.
    """
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:  # no hard links here (e.g. some network / FUSE mounts): copy the bytes
            with open(src, "rb") as fi, atomic_open(dst) as fo:
                shutil.copyfileobj(fi, fo, 16 * 1024 * 1024)
            return dst
        os.replace(tmp, dst)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise CheckpointError(
            f"could not copy checkpoint {src} to {dst}: {e.strerror or e}; {src} itself is intact"
        ) from None
    fsync_dir(dst.parent)
    return dst


def state_dict_digest(sd: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict's names and tensor bytes: equal digests = bit-identical weights."""
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    model_name: str | None = None,
    fingerprint: str | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``) and check it belongs to this run.

    Args:
        path: the ``.pt`` file.
        model_name: if given, the checkpoint must hold this model.
        fingerprint: if given, the checkpoint's run fingerprint (:func:`config_fingerprint`) must match.

    Raises:
        CheckpointError: missing, corrupt/truncated, unsafe pickle payload, another model or config.
    """
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
            "delete it or resume from another checkpoint"
        ) from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {path} is not an imgae-dx checkpoint (format {FORMAT!r} expected)"
        )
    ckpt = from_safe(raw)
    if model_name is not None and ckpt.get("model_name") != model_name:
        raise CheckpointError(
            f"checkpoint {path} holds model {ckpt.get('model_name')!r}, not {model_name!r}"
        )
    if fingerprint is not None and ckpt.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"checkpoint {path} belongs to a run with another configuration "
            f"(fingerprint {str(ckpt.get('fingerprint'))[:12]} ≠ {fingerprint[:12]}); "
            "resume with the run's own config or start a new --out folder"
        )
    return ckpt


# ------------------------------------------------------------------------------ run identity
def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def identity_items(config_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The flattened config keys that define a run (everything not in :data:`RESUMABLE_KEYS`)."""
    flat = _flatten(config_dict)
    return {
        k: v
        for k, v in sorted(flat.items())
        if not any(k == r or k.startswith(r + ".") for r in RESUMABLE_KEYS)
    }


def config_fingerprint(config_dict: Mapping[str, Any]) -> str:
    """SHA-256 of the run-defining configuration (JSON-mode dump of :class:`Config`)."""
    blob = json.dumps(identity_items(config_dict), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human-readable ``key: old → new`` lines for run-defining keys that differ."""
    a, b = identity_items(old), identity_items(new)
    lines = []
    for k in sorted(set(a) | set(b)):
        if a.get(k, "<unset>") != b.get(k, "<unset>"):
            lines.append(f"{k}: {a.get(k, '<unset>')!r} → {b.get(k, '<unset>')!r}")
    return lines


# ------------------------------------------------------------------------------ RNG states
def capture_rng() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA, when initialised) RNG states as tensors."""
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": {
            "version": int(py_version),
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss": py_gauss,
        },
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state(
        (nps["kind"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"],
         nps["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"].to(torch.uint8))
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda_states = list(state["cuda"])
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in cuda_states])
