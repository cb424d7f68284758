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

The trainer's side: :meth:`Checkpointer.save_training` builds every model's payload from the models,
their :class:`~imgae_dx.training.step.TrainStep` (optimisers, GradScaler, schedule position), the
:class:`~imgae_dx.training.selection.Selector`, the loop's
:class:`~imgae_dx.training.state.TrainState`, every rank's :class:`RankState` and the run's
:class:`RunFacts`; :meth:`Checkpointer.resume` puts all of it back and returns the
:class:`TrainState` to continue from. :func:`swapped_weights` lends a model a checkpoint's weights
for a while (re-scoring and calibrating ``best.pt``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from imgae_dx import __version__
from imgae_dx.errors import CheckpointError
from imgae_dx.run.checkpoint import ArchiveRef, CheckpointPayload, RankState, read_checkpoint
from imgae_dx.training import distributed as dist_utils
from imgae_dx.training.loop import Progress
from imgae_dx.training.state import TrainState
from imgae_dx.utils.atomic import atomic_open, fsync_dir

if TYPE_CHECKING:
    from imgae_dx.training.selection import Selector
    from imgae_dx.training.step import TrainStep

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


@contextlib.contextmanager
def swapped_weights(model: nn.Module, weights: Mapping[str, torch.Tensor] | None) -> Iterator[nn.Module]:
    """Inside the block ``model`` holds ``weights`` (None: keeps its own, e.g. on a rank that
    receives them by broadcast inside the block); on leaving, also by an error, its own weights
    are back (an exact copy taken on entry)."""
    own = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        if weights is not None:
            model.load_state_dict(weights)
        yield model
    finally:
        model.load_state_dict(own)


def archive_ref(archive: Any) -> ArchiveRef:
    """Which bytes an opened :class:`~imgae_dx.streaming.sources.Archive` holds (identity,
    version, size)."""
    reader = archive.reader
    return ArchiveRef(str(archive.identity), str(reader.version), int(reader.size))


def rank_state(dataset: Any, steps: Mapping[str, TrainStep]) -> RankState:
    """This rank's share of a checkpoint: ``dataset``'s position (None between epochs), the global
    RNG states and every model's noise generator."""
    return RankState(dataset=dataset.state_dict() if dataset is not None else None, rng=capture_rng(),
                     generators={n: s.ctx.generator.get_state() for n, s in steps.items()})


@dataclass(frozen=True)
class RunFacts:
    """The checkpoint fields that hold for the whole run.

    Attributes:
        config_yaml: the resolved configuration (``RUN_DIR/config.yaml``).
        fingerprint: SHA-256 of the run-defining configuration.
        image_size: model resolution in pixels.
        stages: the run's stages in order.
        world_size: processes training together.
        precision: ``fp32`` | ``bf16`` | ``fp16``.
        archive: the opened archive (its :func:`archive_ref` is read at every save).
    """

    config_yaml: str
    fingerprint: str
    image_size: int
    stages: list[str]
    world_size: int
    precision: str
    archive: Any


class Checkpointer:
    """Writes and finds the checkpoints of ``models`` under ``RUN_DIR/checkpoints``.

    Args:
        run_dir: the run folder.
        models: model names.
        writer: whether this process writes (rank 0); other ranks only read.
        facts: the run's fixed fields; needed by :meth:`common_fields`, :meth:`save_training`
            and :meth:`resume`.
    """

    def __init__(self, run_dir: str | os.PathLike[str], models: Iterable[str], *, writer: bool = True,
                 facts: RunFacts | None = None):
        self.root = Path(run_dir) / "checkpoints"
        self.models = list(models)
        self.writer = writer
        self._facts = facts

    @property
    def facts(self) -> RunFacts:
        if self._facts is None:
            raise RuntimeError("this Checkpointer was made without the run's facts (facts=RunFacts(...))")
        return self._facts

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

    def common_fields(self, state: TrainState, *, ranks: list[RankState], val_stages: int,
                      wandb_run_id: str | None) -> dict[str, Any]:
        """The payload fields every model's checkpoint of one save shares."""
        f = self.facts
        return dict(
            config_yaml=f.config_yaml, fingerprint=f.fingerprint, image_size=f.image_size,
            package_version=__version__, step=state.progress.step,
            images_seen=state.progress.images_seen, stages=list(f.stages),
            stage=f.stages[state.stage_index], stage_k=state.stage_index + 1,
            position=replace(state.position), world_size=f.world_size, precision=f.precision,
            val_stages=val_stages, rank_states=ranks, wandb_run_id=wandb_run_id,
            archive=archive_ref(f.archive), saved_at=time.time())

    def save_training(self, state: TrainState, models: Mapping[str, nn.Module],
                      steps: Mapping[str, TrainStep], selector: Selector, *, wandb_run_id: str | None,
                      stage_k: int | None = None, best: Iterable[str] = (),
                      val: Mapping[str, float] | None = None, val_stages: int = 0) -> None:
        """Every model's ``last.pt`` (+ ``stage_K.pt``, ``best.pt`` as :meth:`save`): its weights,
        optimisers, scaler and schedule position, its selection state, the loop's ``state``,
        every rank's :func:`rank_state` and ``val`` (loss of each model on the selection set of
        ``val_stages`` stages; None mid-epoch). Marks ``state`` saved. Collective under DDP (the
        ranks' states are gathered); only the ``writer`` writes."""
        ranks = dist_utils.gather_objects(rank_state(state.dataset, steps))
        state.mark_saved()
        if not self.writer:
            return
        common = self.common_fields(state, ranks=ranks, val_stages=val_stages, wandb_run_id=wandb_run_id)
        payloads = {}
        for n, model in models.items():
            st = steps[n].state_dict()
            payloads[n] = CheckpointPayload(
                model_name=n, model={k: v.detach().cpu() for k, v in model.state_dict().items()},
                optimizers=st["objective"], scaler=st["scaler"], optimizer_steps=st["steps_done"],
                val_loss=(val or {}).get(n), selection=selector.state[n], **common)
        self.save(payloads, stage_k=stage_k, best=best)

    def resume(self, models: Mapping[str, nn.Module], steps: Mapping[str, TrainStep],
               selector: Selector, rank: int) -> tuple[TrainState, str | None]:
        """Load the :meth:`latest` checkpoints into ``models``, ``steps`` and ``selector``, restore
        ``rank``'s RNG and noise-generator states; returns the loop's state to continue from and
        the run's W&B id.

        Raises:
            CheckpointError: as :meth:`latest`, or a checkpoint that does not fit its model.
        """
        f = self.facts
        ckpts = self.latest(f.fingerprint, world_size=f.world_size, archive=archive_ref(f.archive),
                            stages=f.stages)
        first = next(iter(ckpts.values()))
        for name, ck in ckpts.items():
            try:
                models[name].load_state_dict(ck.model)
                steps[name].load_state_dict({"objective": ck.optimizers, "scaler": ck.scaler,
                                             "steps_done": ck.optimizer_steps})
            except (RuntimeError, KeyError, ValueError) as e:
                raise CheckpointError(f"{self.path(name)} does not fit model {name!r} "
                                      f"as configured ({str(e)[:200]})") from None
        selector.load({name: ck.selection for name, ck in ckpts.items()})
        mine = first.rank_states[rank]
        restore_rng(mine.rng)
        for n, st in mine.generators.items():
            steps[n].ctx.generator.set_state(st.to(torch.uint8))
        state = TrainState(progress=Progress(step=first.step, images_seen=first.images_seen),
                           position=replace(first.position), resumed_from_step=first.step,
                           resume_dataset=mine.dataset)
        if self.writer:
            p = state.position
            log.info("resuming %s from step %d (stage %d, epoch %d, batch %d)", self.root.parent,
                     first.step, p.stage_index + 1, p.epoch + 1, p.batch)
        return state, first.wandb_run_id

    def best_weights(self, model: str) -> dict[str, torch.Tensor]:
        """The model weights of ``best.pt`` (CPU tensors)."""
        return read_checkpoint(self.path(model, "best"), model_name=model).model

    @contextlib.contextmanager
    def best_swapped_in(self, name: str, model: nn.Module) -> Iterator[nn.Module]:
        """``model`` holds ``best.pt``'s weights inside the block (the writer — rank 0 — reads
        them, every rank receives them by broadcast) and its own after. Collective under DDP."""
        with swapped_weights(model, self.best_weights(name) if self.writer else None):
            dist_utils.broadcast_module(model)
            yield model

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
