"""Progressive streaming trainer: the wiring of the training engine from the configuration.

``StreamingTrainer(config).train_progressive_stages()`` trains every model in ``config.models`` on
the normal training images of each stage in order (NIH: ``images_001``, …; other datasets:
``part_001``, …): ``training.epochs_per_stage`` epochs per stage (more for a stage too small to draw
``training.min_images_per_stage`` images in them, and for the last stage of a run too small to draw
``training.min_images_per_run``), each followed by validation and checkpoints. Each decoded batch
feeds every model (``--model all`` costs one pass over the stream). The parts, one owner each:

=================================  =============================================================
:mod:`.precision`                  autocast dtype and GradScaler for the device (``training.amp``)
:mod:`.step`                       :class:`TrainStep`: the only place parameters change
:mod:`.loop`                       :func:`train_one_epoch`, :func:`validate` (plain iterables)
:mod:`.stage_data`                 per-stage datasets, decode-once cache, replay; next stage early
:mod:`.finish`                     after the last stage: calibrations, the PCA baseline
:mod:`.selection`                  ``best.pt`` chosen on one fixed set of validation images
:mod:`.checkpointer`               the only writer of checkpoint files; resume's reader
:mod:`.run_folder`                 what ``--out`` may hold; ``config.yaml``; ``metrics.jsonl``
:mod:`.reporting`                  typed records to :mod:`.loggers` (jsonl, TensorBoard, W&B), live plot
:mod:`.signals`                    SIGINT/SIGTERM → save ``last.pt`` and stop
=================================  =============================================================

Exact resume: ``last.pt`` holds the models, optimisers, schedule position, GradScaler, step,
stage, epoch, the dataset position of every rank and every RNG state, so a resumed CPU run ends
bit-identical to an uninterrupted one. Distributed (``torchrun``): each rank streams disjoint
range requests with equal batch counts; gradients are averaged by an explicit all-reduce (see
:mod:`.distributed`); only rank 0 logs, saves and draws progress. Early stopping
(``training.early_stopping_patience``): within a stage, when no model has improved for that many
epochs, the stage's remaining epochs are skipped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgae_dx import __version__
from imgae_dx.config import GRADIENT_MODELS, Config, load_config
from imgae_dx.errors import CheckpointError
from imgae_dx.models.objectives import StepContext
from imgae_dx.run.checkpoint import (
    ArchiveRef,
    CheckpointPayload,
    Position,
    RankState,
)
from imgae_dx.run.identity import config_fingerprint
from imgae_dx.training import distributed as dist_utils
from imgae_dx.training import run_folder
from imgae_dx.training.checkpointer import Checkpointer, capture_rng, restore_rng
from imgae_dx.training.finish import Calibrator, fit_pca_baseline
from imgae_dx.training.loggers import check_available as check_logger
from imgae_dx.training.loop import Progress, ValSums, train_one_epoch, validate
from imgae_dx.training.precision import resolve_precision
from imgae_dx.training.reporting import Reporter, pooled_loss
from imgae_dx.training.selection import Selector, ValidationPool, collect
from imgae_dx.training.signals import StopRequest, TrainingInterrupted
from imgae_dx.training.stage_data import StageData
from imgae_dx.training.step import TrainStep, lr_factor, memory_guard
from imgae_dx.utils.device import resolve_device

__all__ = ["StreamingTrainer", "TrainResult", "TrainingInterrupted"]
log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What :meth:`StreamingTrainer.train_progressive_stages` returns."""

    run_dir: Path
    step: int
    stages: list[str]
    stages_done: list[str]
    best_val: dict[str, float | None]
    images_seen: int
    wall_s: float
    interrupted: bool = False
    signal: int | None = None
    resumed_from_step: int | None = None
    checkpoints: dict[str, Path] = field(default_factory=dict)

    def best_val_text(self) -> str:
        """``unet 0.00243, ra 0.00276`` (``-`` for a model never validated)."""
        return ", ".join(f"{m} {v:.5f}" if v is not None else f"{m} -" for m, v in self.best_val.items())

    @property
    def exit_code(self) -> int:
        """0 when finished; 128 + signal number when stopped by SIGINT/SIGTERM."""
        return 128 + int(self.signal) if self.interrupted and self.signal else 0


class StreamingTrainer:
    """Train ``config.models`` stage by stage from a streamed archive of any dataset
    (``config.data.dataset``: NIH, ZhangLab, folder; detected when omitted).

    Args:
        config: the validated :class:`~imgae_dx.config.Config` (``load_config(...)``).
        resume: continue from ``RUN_DIR/checkpoints/*/last.pt`` when present; without it a
            folder that already holds a run is refused.
        archive: an opened :class:`~imgae_dx.streaming.sources.Archive` (default: opened from
            ``config.source``); the trainer closes only archives it opened.
        on_batch: ``f(stage, epoch, batch)`` called on every rank for every training batch.
        progress: draw tqdm bars (default ``config.logging.progress``; rank 0 only).
    """

    def __init__(self, config: Config, *, resume: bool = False, archive: Any | None = None,
                 on_batch: Callable[[str, int, Any], None] | None = None,
                 progress: bool | None = None) -> None:
        if not isinstance(config, Config):
            raise TypeError(f"StreamingTrainer needs an imgae_dx.config.Config, got {type(config).__name__}")
        self.cfg, self.resume = config, resume
        self.run_dir = Path(config.out).expanduser()
        self._archive, self._own_archive = archive, archive is None
        self.on_batch = on_batch
        self.progress_bars = config.logging.progress if progress is None else progress
        self.stop = StopRequest()
        self.reporter: Reporter | None = None
        self.data: StageData | None = None
        self._prepared = False

    @classmethod
    def from_colab_config(cls, config_path: str | os.PathLike[str] | None = None,
                          overrides: Mapping[str, Any] | None = None, *, resume: bool = True,
                          dataset: str | None = None, **kwargs: Any) -> StreamingTrainer:
        """Trainer from ``configs/cloud_configs/colab.yaml`` (checkpoints on Drive), resuming by
        default (Colab runtimes disconnect). ``overrides``: dotted keys → values; ``dataset``:
        ``data.dataset`` (``nih``, ``zhanglab``, ``rsna``, ``folder``; None: as the config says, else detected)."""
        over = {**(overrides or {}), **({"data.dataset": dataset} if dataset is not None else {})}
        return cls(load_config(config_path, over, profile="colab"), resume=resume, **kwargs)

    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Ask the loop to save ``last.pt`` and return at the next step (what a signal does)."""
        self.stop.request(signum)

    # ------------------------------------------------------------------ wiring
    def _prepare(self) -> None:
        cfg, t = self.cfg, self.cfg.training
        self.device = resolve_device(t.device, dist_utils.detect().local_rank)
        self.dist = dist_utils.init_distributed(self.device, backend=t.dist_backend)
        self.is_main, self.cuda = self.dist.is_main, self.device.type == "cuda"
        if self.cuda:  # process-wide switches, as every CUDA training script sets them
            torch.backends.cudnn.benchmark = t.cudnn_benchmark
            torch.backends.cuda.matmul.allow_tf32 = t.tf32
            torch.backends.cudnn.allow_tf32 = t.tf32
        check_logger(cfg.logging.logger)  # 1. validate everything before writing anything
        from imgae_dx.data.datasets import open_dataset

        if self._archive is None:
            from imgae_dx.streaming.sources import open_archive

            self._archive = open_archive(cfg.source, cfg.data)
        if not self.is_main:  # rank 0 first: what it reads of members' heads (RSNA's views) is
            dist_utils.barrier()  # cached on disk, and the other ranks read the cache
        self.index = open_dataset(self._archive, cfg.data, cfg.seed, quiet=not self.is_main)
        if self.is_main:
            dist_utils.barrier()
        if cfg.data.dataset != self.index.name:  # config.yaml holds the resolved dataset
            cfg = self.cfg = cfg.model_copy(
                update={"data": cfg.data.model_copy(update={"dataset": self.index.name})})
        cfg_dict = run_folder.config_dict(cfg)
        self.fingerprint = config_fingerprint(cfg_dict)
        self.config_yaml = run_folder.config_yaml(cfg_dict)
        self.deep = [m for m in cfg.models if m in GRADIENT_MODELS]  # pca: fitted after them
        resuming = run_folder.check_run_folder(self.run_dir, self.deep, cfg_dict, self.resume)
        self.split_table = run_folder.check_split(self.run_dir, self.index, resuming)
        self.stages: list[str] = list(self.index.resolve_stages(cfg.stages))
        random.seed(cfg.seed)  # 2. same seed on every rank: identical initial weights
        np.random.seed(cfg.seed % 2**32)
        torch.manual_seed(cfg.seed)
        self.precision = resolve_precision(t.amp, self.device)
        self._build_models()
        self.data = StageData(cfg, self._archive, self.index, self.stages, rank=self.dist.rank,
                              world_size=self.dist.world_size, run_dir=self.run_dir)
        self.epochs = self.data.plan_epochs(t.epochs_per_stage, t.min_images_per_stage,
                                            t.min_images_per_run, t.batch_size)
        total = sum(self.data.batches_in(s, e) for s in self.stages for e in range(self.epochs[s]))
        for st in self.steps.values():
            st.schedule = lambda s, total=total: lr_factor(s, total, t.warmup_steps, t.scheduler)
        self.checkpointer = Checkpointer(self.run_dir, self.deep, writer=self.is_main)
        self.selector = Selector(self.deep)
        self.pool = ValidationPool(t.batch_size)
        self.progress, self.position = Progress(), Position()
        self.bad_epochs, self.resumed_from_step, self._resume_ds, self._si = 0, None, None, 0
        self._live_ds: Any = None
        wandb_id = self._restore() if resuming else None
        if self.is_main:  # 3. run folder, reporting
            run_folder.prepare_run_folder(self.run_dir, self.config_yaml,
                                          self.progress.step if resuming else None, self.split_table)
            log.info("precision: %s (%s)", self.precision.name, self.precision.reason)
        lg = cfg.logging
        self.reporter = Reporter(
            self.run_dir, enabled=self.is_main, live_every_s=t.live_plot_every_s, replay=resuming,
            n_stages=len(self.stages), epochs=self.epochs,
            logger_kwargs=dict(kind=lg.logger, wandb_project=lg.wandb_project,
                               wandb_entity=lg.wandb_entity, config=cfg_dict, wandb_run_id=wandb_id))
        dist_utils.barrier()
        self._prepared = True

    def _build_models(self) -> None:
        from imgae_dx.models import create_model, create_objective

        cfg, t = self.cfg, self.cfg.training
        self.models, self.objectives, self.steps = {}, {}, {}
        sync = dist_utils.all_reduce_grads if self.dist.distributed else None
        for i, name in enumerate(self.deep):
            model = create_model(name, image_size=cfg.data.image_size, cfg=getattr(cfg.model, name))
            model.to(self.device)
            if self.cuda and t.channels_last:
                model.to(memory_format=torch.channels_last)
            dist_utils.broadcast_module(model)
            obj = create_objective(name, model, getattr(cfg.model, name))
            if t.compile:
                obj.compile()  # in place: state_dict keys are unchanged
            gen = torch.Generator(device=self.device)
            gen.manual_seed(cfg.seed * 1000 + 17 * (i + 1) + 7919 * self.dist.rank)
            self.models[name], self.objectives[name] = model, obj
            self.steps[name] = TrainStep(obj, self.precision, grad_clip=t.grad_clip, generator=gen,
                                         grad_sync=sync)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cuda:
            return x.to(self.device)
        x = x.pin_memory().to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.training.channels_last else x

    def _guard(self, stage: str, what: str) -> Callable[[str, torch.Tensor], Any]:
        """Out-of-memory in a step → one clear line naming the sizes to lower."""
        t, d = self.cfg.training, self.cfg.data

        def describe(name: str, x: torch.Tensor, gpu: bool) -> str:
            saved = any(self.checkpointer.path(n).is_file() for n in self.models)
            kept = (f"the last checkpoint (step {self._last_save_step}) is intact: free memory and "
                    "rerun with --resume to continue from it" if saved else "no checkpoint was written yet")
            return (f"{'GPU' if gpu else 'host'} memory ran out in {name}'s {what} at step "
                    f"{self.progress.step} ({stage}, a batch of {int(x.shape[0])} at {int(x.shape[-1])}²). "
                    f"Lower --batch-size (training.batch_size, now {t.batch_size}) or --image-size "
                    f"(data.image_size, now {d.image_size}) and start a new run: they define the run, "
                    f"so --resume refuses them; {kept}.")

        return lambda name, x: memory_guard(lambda gpu: describe(name, x, gpu))

    # ------------------------------------------------------------------ the loop
    def train_progressive_stages(self) -> TrainResult:
        """Train every model through the stages; returns a :class:`TrainResult`. Stops early
        (``interrupted=True``) after writing ``last.pt`` on SIGINT/SIGTERM."""
        t0 = self._t_start = time.monotonic()
        try:
            if not self._prepared:
                self._prepare()
            with self.stop.handlers():
                interrupted = self._loop() if self.deep else False
            if not interrupted:
                self._finish()
            sig = self.stop.signum if interrupted else None
            return TrainResult(
                run_dir=self.run_dir, step=self.progress.step, stages=list(self.stages),
                stages_done=list(self.stages[: self.position.stage_index]),
                best_val=self.selector.best_losses(), images_seen=self.progress.images_seen,
                wall_s=time.monotonic() - t0, interrupted=interrupted, signal=sig,
                resumed_from_step=self.resumed_from_step,
                checkpoints={n: self.checkpointer.path(n) for n in self.models})
        finally:
            self.close()

    def _loop(self) -> bool:
        t = self.cfg.training
        self._last_save, self._last_save_step = time.monotonic(), self.progress.step
        start = self.position.stage_index
        for si in range(start, len(self.stages)):
            stage, self._si = self.stages[si], si
            if self.data.first_epoch_batches[stage] == 0 and self.is_main:
                log.warning("stage %s yields no full training batch (%d training images for %d "
                            "process(es), batch size %d): it trains nothing; lower --batch-size or "
                            "widen the split (data.view all)", stage,
                            len(getattr(self.data.train[stage], "members", ())),
                            self.dist.world_size, t.batch_size)
            first = self.position.epoch if si == start else 0
            if si != start:
                self.bad_epochs = 0
            for epoch in range(first, self.epochs[stage]):
                resume_ds = self._resume_ds if (si == start and epoch == first) else None
                self.progress.batch = self.position.batch if resume_ds is not None else 0
                self.position = Position(si, epoch, self.progress.batch)
                if epoch + 1 == self.epochs[stage] and si + 1 < len(self.stages):
                    self.data.start_next(self.stages[si + 1])
                if self._train_epoch(stage, si, epoch, resume_ds):
                    return True
                if self._end_epoch(stage, si, epoch):  # early stop
                    break
                if self._sync_flags()[0]:
                    return True
            self.data.release(stage)
        return False

    def _train_epoch(self, stage: str, si: int, epoch: int, resume_ds: Any) -> bool:
        """One epoch over the stage's train split. Returns True when stopped by a signal."""
        t = self.cfg.training
        ds, batches = self.data.epoch_batches(stage, epoch, resume_ds)
        self._live_ds, bar = ds, None
        if self.is_main and self.progress_bars:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.data.batches_in(stage, epoch), initial=self.progress.batch,
                       leave=False, dynamic_ncols=True,
                       desc=f"{stage} [{si + 1}/{len(self.stages)}] epoch {epoch + 1}/{self.epochs[stage]}")
        try:
            return train_one_epoch(
                self.steps, batches, self.progress, to_device=self._to_device,
                world_size=self.dist.world_size, total_batches=self.data.batches_in(stage, epoch),
                log_every=t.log_every_steps, bar=bar,
                on_log=lambda means, ips: self.reporter.train(
                    step=self.progress.step, stage=stage, stage_index=si + 1, epoch=epoch, means=means,
                    ips=ips, lrs={n: st.next_lr() for n, st in self.steps.items()},
                    images_seen=self.progress.images_seen, precision=self.precision.name, ds=ds, bar=bar),
                on_batch=(lambda b: self.on_batch(stage, epoch, b)) if self.on_batch else None,
                after_model_step=(lambda n: dist_utils.broadcast_module(self.models[n], buffers_only=True))
                if self.dist.distributed else None,
                after_step=self._after_step, guard=self._guard(stage, "train step"))
        finally:
            if bar is not None:
                bar.close()
            self._live_ds = None
            with contextlib.suppress(Exception):
                batches.close()  # stops the epoch's prefetch threads when we leave early

    def _after_step(self) -> bool:
        t = self.cfg.training
        if self.progress.step % t.memory_check_every_steps == 0:
            self.data.memory.check()
        stop, due = self._sync_flags()
        if stop or due or self.progress.step - self._last_save_step >= t.checkpoint_every_steps:
            self.position.batch = self.progress.batch  # mid-epoch: where the epoch continues
            self.data.flush()
            self._save()
        return stop

    def _sync_flags(self) -> tuple[bool, bool]:
        """(stop, checkpoint-by-time) agreed by every rank."""
        stop = self.stop.signum is not None
        due = (time.monotonic() - self._last_save) >= self.cfg.training.checkpoint_every_minutes * 60
        if not self.dist.distributed:
            return stop, due
        vals = dist_utils.all_reduce_sum([float(stop), float(due)])
        return vals[0] > 0, vals[1] > 0

    # ------------------------------------------------------------------ validation and selection
    def _end_epoch(self, stage: str, si: int, epoch: int) -> bool:
        """Validate on the selection set, update ``best.pt``, save. True: stop the stage early."""
        t = self.cfg.training
        t0 = time.monotonic()
        for sj in range(si + 1):  # the selection set: validation images of stages 1..si+1
            if self.stages[sj] not in self.pool:
                self.pool.add(self.stages[sj], collect(self.data.val_batches(self.stages[sj]), t.val_max_images))
                if sj < si:  # re-streamed after a resume: that stage is done
                    self.data.release(self.stages[sj])
        k = si + 1
        cand = self._validate_pool()
        sel = {n: pooled_loss(cand[n]) for n in self.models}
        improved = self.selector.select(k, self.progress.step, sel,
                                        lambda n: pooled_loss(self._validate_pool(weights_of=n)[n]))
        self.bad_epochs = 0 if improved else self.bad_epochs + 1
        self.reporter.val(step=self.progress.step, stage=stage, stage_index=k, epoch=epoch, sums=cand,
                          selection=sel, best=self.selector.best_losses(), improved=improved,
                          val_s=time.monotonic() - t0)
        stop_early = t.early_stopping_patience is not None and self.bad_epochs >= t.early_stopping_patience
        last = epoch + 1 == self.epochs[stage] or stop_early
        self.position = Position(si + 1, 0, 0) if last else Position(si, epoch + 1, 0)
        self.data.flush()
        self._save(stage_k=si + 1 if last else None, best=improved, val=sel, val_stages=k)
        if stop_early and self.is_main:
            log.info("early stopping: no validation gain for %d epochs; stage %s ends", self.bad_epochs, stage)
        return stop_early

    def _validate_pool(self, weights_of: str | None = None) -> dict[str, dict[str, ValSums]]:
        """Validation sums per model and pool stage, summed over ranks. With ``weights_of``: that
        model only, with ``best.pt``'s weights swapped in (rank 0 reads, broadcast) and back."""
        names = [weights_of] if weights_of else list(self.objectives)
        objs = {n: self.objectives[n] for n in names}
        ctx = {n: StepContext(self.precision.autocast(),
                              torch.Generator(device=self.device).manual_seed(self.cfg.seed)) for n in names}
        current = None
        if weights_of is not None:
            model = self.models[weights_of]
            current = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if self.is_main:
                model.load_state_dict(self.checkpointer.best_weights(weights_of))
            dist_utils.broadcast_module(model)
        try:
            per = {s: validate(objs, self.pool.batches(s), ctx, to_device=self._to_device,
                               guard=self._guard(s, "validation step")) for s in self.pool.stages}
        finally:
            if current is not None:
                self.models[weights_of].load_state_dict(current)
        out = {n: {s: per[s][n] for s in per} for n in names}
        keys = [(n, s, k) for n in out for s in out[n] for k in sorted(out[n][s].sums)]
        cells = [(n, s) for n in out for s in out[n]]
        totals = dist_utils.all_reduce_sum([out[n][s].sums[k] for n, s, k in keys]
                                           + [float(out[n][s].images) for n, s in cells])
        for (n, s, k), v in zip(keys, totals[: len(keys)], strict=True):
            out[n][s].sums[k] = v
        for (n, s), v in zip(cells, totals[len(keys):], strict=True):
            out[n][s].images = int(v)
        return out

    def _finish(self) -> None:
        """After the last stage (rank 0): calibrations and the PCA baseline (:mod:`.finish`)."""
        for stage in self.stages:
            if stage not in self.pool:
                self.pool.add(stage, collect(self.data.val_batches(stage), self.cfg.training.val_max_images))
        if self.is_main:
            val = Calibrator(self.run_dir, self.pool, self.stages, self.cfg.data.view, self.device)
            for name in self.deep:
                val.calibrate_checkpoint(name, self.models[name], self.checkpointer,
                                         self.selector.state[name].best_step, self.progress.step)
            if "pca" in self.cfg.models:
                self._si = len(self.stages) - 1
                fit_pca_baseline(self.cfg, self._archive, self.index, self.stages, self.pool,
                                 self.data.memory, self.data.shared, val,
                                 self._common_fields(ranks=[], val_stages=len(self.stages)))
        dist_utils.barrier()

    # ------------------------------------------------------------------ checkpoints
    def _save(self, stage_k: int | None = None, best: list[str] | tuple[str, ...] = (),
              val: dict[str, float] | None = None, val_stages: int = 0) -> None:
        """Every model's ``last.pt`` (+ ``stage_K.pt``, ``best.pt``). Collective under DDP."""
        mine = RankState(dataset=self._live_ds.state_dict() if self._live_ds is not None else None,
                         rng=capture_rng(),
                         generators={n: s.ctx.generator.get_state() for n, s in self.steps.items()})
        ranks = dist_utils.gather_objects(mine)
        self._last_save, self._last_save_step = time.monotonic(), self.progress.step
        if not self.is_main:
            return
        common = self._common_fields(ranks=ranks, val_stages=val_stages)
        payloads = {}
        for n, model in self.models.items():
            st = self.steps[n].state_dict()
            payloads[n] = CheckpointPayload(
                model_name=n, model={k: v.detach().cpu() for k, v in model.state_dict().items()},
                optimizers=st["objective"], scaler=st["scaler"], optimizer_steps=st["steps_done"],
                val_loss=(val or {}).get(n), selection=replace(self.selector.state[n], bad_epochs=self.bad_epochs),
                **common)
        self.checkpointer.save(payloads, stage_k=stage_k, best=best)

    def _common_fields(self, *, ranks: list[RankState], val_stages: int) -> dict[str, Any]:
        """The payload fields every model's checkpoint of one save shares."""
        return dict(
            config_yaml=self.config_yaml, fingerprint=self.fingerprint,
            image_size=self.cfg.data.image_size, package_version=__version__,
            step=self.progress.step, images_seen=self.progress.images_seen, stages=list(self.stages),
            stage=self.stages[self._si], stage_k=self._si + 1, position=replace(self.position),
            world_size=self.dist.world_size, precision=self.precision.name, val_stages=val_stages,
            rank_states=ranks, wandb_run_id=self.reporter.wandb_run_id if self.reporter else None,
            archive=self._archive_ref(), saved_at=time.time())

    def _archive_ref(self) -> ArchiveRef:
        reader = self._archive.reader
        return ArchiveRef(str(self._archive.identity), str(reader.version), int(reader.size))

    def _restore(self) -> str | None:
        ckpts = self.checkpointer.latest(self.fingerprint, world_size=self.dist.world_size,
                                         archive=self._archive_ref(), stages=self.stages)
        first = next(iter(ckpts.values()))
        for name, ck in ckpts.items():
            try:
                self.models[name].load_state_dict(ck.model)
                self.steps[name].load_state_dict({"objective": ck.optimizers, "scaler": ck.scaler,
                                                  "steps_done": ck.optimizer_steps})
            except (RuntimeError, KeyError, ValueError) as e:
                raise CheckpointError(f"{self.checkpointer.path(name)} does not fit model {name!r} "
                                      f"as configured ({str(e)[:200]})") from None
            self.selector.state[name] = replace(ck.selection)
        mine = first.rank_states[self.dist.rank]
        restore_rng(mine.rng)
        for n, st in mine.generators.items():
            self.steps[n].ctx.generator.set_state(st.to(torch.uint8))
        self.progress = Progress(step=first.step, images_seen=first.images_seen)
        self.bad_epochs = first.selection.bad_epochs
        self.position, self._resume_ds = replace(first.position), mine.dataset
        self.resumed_from_step = first.step
        if self.is_main:
            log.info("resuming %s from step %d (stage %d, epoch %d, batch %d)", self.run_dir,
                     first.step, self.position.stage_index + 1, self.position.epoch + 1, self.position.batch)
        return first.wandb_run_id

    def close(self) -> None:
        """Release loggers, caches, the archive (if opened here) and the process group."""
        if self.reporter is not None:
            self.reporter.close()
        if self.data is not None:
            self.data.close()
        if self._own_archive and self._archive is not None:
            with contextlib.suppress(Exception):
                self._archive.close()
            self._archive = None
        dist_utils.cleanup()
