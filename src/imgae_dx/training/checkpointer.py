"""The one writer of checkpoint files, and the reader that picks up a run where it stopped.

Per model, ``RUN_DIR/checkpoints/MODEL/``::

    last.pt      every N steps or M minutes, after each epoch, on SIGINT/SIGTERM
    prev.pt      the last.pt before the current one
    stage_K.pt   after stage K (K from 1): that moment's last.pt
    best.pt      the epoch-end last.pt with the lowest loss on the selection set
                 (:mod:`imgae_dx.training.selection`)

Every write is atomic (temporary file in the same folder, fsync, ``os.replace``): a crash leaves the
old file or the new one, never a torn one. ``stage_K.pt``, ``best.pt`` and ``prev.pt`` are hard
links to the ``last.pt`` of their moment (byte copies where links are unsupported) — checkpoints
are replaced, never modified in place, so a link is a safe copy. The payload is a
:class:`~imgae_dx.run.checkpoint.CheckpointPayload`.

With several models, a kill between two models' ``last.pt`` writes leaves them one save apart;
:meth:`Checkpointer.latest` then continues every model from ``prev.pt`` where that makes them meet
at the same step.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgae_dx.errors import CheckpointError
from imgae_dx.run.checkpoint import ArchiveRef, CheckpointPayload, read_checkpoint
from imgae_dx.utils.atomic import atomic_open, fsync_dir

log = logging.getLogger(__name__)


def write_payload(path: str | os.PathLike[str], payload: CheckpointPayload) -> Path:
    """Write ``payload`` to ``path`` atomically. Raises :class:`CheckpointError` on I/O errors
    (the previous file at ``path`` is then intact)."""
    path = Path(path)
    data = payload.to_dict()
    try:
        with atomic_open(path) as f:
            torch.save(data, f)
    except OSError as e:
        raise CheckpointError(
            f"could not write checkpoint {path}: {e.strerror or e}; the previous checkpoint there "
            "is intact — free disk space (or choose another --out) and resume with --resume"
        ) from None
    return path


def link_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Atomically make ``dst`` a copy of ``src``: a hard link where possible, else a byte copy."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:  # no hard links here (some network / FUSE mounts, Drive): copy the bytes
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


class Checkpointer:
    """Writes and finds the checkpoints of ``models`` under ``RUN_DIR/checkpoints``.

    Args:
        run_dir: the run folder.
        models: model names.
        writer: whether this process writes (rank 0); other ranks only read.
    """

    def __init__(self, run_dir: str | os.PathLike[str], models: Iterable[str], *, writer: bool = True):
        self.root = Path(run_dir) / "checkpoints"
        self.models = list(models)
        self.writer = writer

    def path(self, model: str, name: str = "last") -> Path:
        """``checkpoints/MODEL/NAME.pt``."""
        return self.root / model / f"{name}.pt"

    def save(self, payloads: Mapping[str, CheckpointPayload], *, stage_k: int | None = None,
             best: Iterable[str] = ()) -> None:
        """Write every model's ``last.pt`` (the old one becomes ``prev.pt``); with ``stage_k`` also
        ``stage_K.pt``, and ``best.pt`` for the models in ``best``. No-op unless ``writer``."""
        if not self.writer:
            return
        best = set(best)
        for name, payload in payloads.items():
            last = self.path(name)
            if last.is_file():
                link_copy(last, self.path(name, "prev"))
            write_payload(last, payload)
            if stage_k is not None:
                link_copy(last, self.path(name, f"stage_{stage_k}"))
            if name in best:
                link_copy(last, self.path(name, "best"))

    def best_weights(self, model: str) -> dict[str, torch.Tensor]:
        """The model weights of ``best.pt`` (CPU tensors)."""
        return read_checkpoint(self.path(model, "best"), model_name=model).model

    def latest(self, fingerprint: str, *, world_size: int, archive: ArchiveRef,
               stages: list[str]) -> dict[str, CheckpointPayload]:
        """Every model's ``last.pt`` to resume from, all at the same step (``prev.pt`` where a kill
        fell between two models' writes), checked against the run being resumed.

        Raises:
            CheckpointError: the models cannot meet at one step, or the run had another process
                count, another version of the same archive, or other stages.
        """
        ckpts = {m: read_checkpoint(self.path(m), model_name=m, fingerprint=fingerprint)
                 for m in self.models}
        steps = {m: c.step for m, c in ckpts.items()}
        if len(set(steps.values())) > 1:
            common = min(steps.values())
            for m, ck in list(ckpts.items()):
                prev = self.path(m, "prev")
                if ck.step != common and prev.is_file():
                    pck = read_checkpoint(prev, model_name=m, fingerprint=fingerprint)
                    if pck.step == common:
                        log.warning("%s: the run was stopped while saving; %s continues from "
                                    "prev.pt (step %d)", self.root.parent, m, common)
                        ckpts[m] = pck
            steps = {m: c.step for m, c in ckpts.items()}
        if len(set(steps.values())) > 1:
            raise CheckpointError(
                f"the last.pt files of {self.root.parent} are from different steps ({steps}): the "
                "run was stopped while they were being written, so the models cannot continue "
                "together; start a new --out (the stage_K.pt files keep every finished stage)"
            )
        first = next(iter(ckpts.values()))
        if first.world_size != world_size:
            raise CheckpointError(
                f"the run was saved with {first.world_size} process(es) but this resume has "
                f"{world_size}; resume with the same --nproc_per_node")
        saved = first.archive
        if saved and saved.identity == archive.identity and (saved.version, saved.size) != (
                archive.version, archive.size):
            raise CheckpointError(
                f"{archive.identity} is no longer the archive this run was trained on (version "
                f"{saved.version}, {saved.size} bytes; now {archive.version}, {archive.size} bytes): "
                "the saved stream positions would point into another dataset version; start a new "
                "--out folder")
        if first.stages != stages[: len(first.stages)]:
            raise CheckpointError(
                f"the run trained stages {', '.join(first.stages)} but the source now resolves to "
                f"{', '.join(stages)}; resume with the same source and --stages")
        return ckpts


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
