"""Progressive streaming trainer: the loop over stages and epochs, built from the configuration.

``StreamingTrainer(config).train_progressive_stages()`` trains every model in ``config.models`` on
the normal training images of each stage in order (NIH: ``images_001``, …; other datasets:
``part_001``, …): ``training.epochs_per_stage`` epochs per stage (more for a stage too small to draw
``training.min_images_per_stage`` images, and for the last stage of a run too small to draw
``training.min_images_per_run``), each followed by validation and checkpoints; within a stage,
``training.early_stopping_patience`` epochs without a gain skip its remaining epochs. Each decoded
batch feeds every model (``--model all``: one pass over the stream). Exact resume: a resumed CPU
run ends bit-identical to an uninterrupted one. Under ``torchrun`` each rank streams disjoint
range requests with equal batch counts; only rank 0 logs, saves and draws progress. The parts it
drives, one owner each, are listed in :mod:`imgae_dx.training`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch

from imgae_dx.config import Config, load_config
from imgae_dx.models import GRADIENT_MODELS, StepContext
from imgae_dx.run.checkpoint import Position
from imgae_dx.run.identity import config_fingerprint
from imgae_dx.training import distributed as dist_utils
from imgae_dx.training import run_folder
from imgae_dx.training.checkpointer import Checkpointer, RunFacts
from imgae_dx.training.finish import Calibrator, fit_pca_baseline
from imgae_dx.training.loggers import check_available as check_logger
from imgae_dx.training.loop import ValSums, train_one_epoch, validate_stages
from imgae_dx.training.precision import resolve_precision
from imgae_dx.training.reporting import Reporter, pooled_loss
from imgae_dx.training.runtime import seed_everything, start_runtime
from imgae_dx.training.selection import Selector, ValidationPool
from imgae_dx.training.signals import StopRequest, TrainingInterrupted
from imgae_dx.training.stage_data import StageData, open_stages
from imgae_dx.training.state import TrainResult, TrainState
from imgae_dx.training.step import build_steps, lr_factor, memory_guard, out_of_memory_message

__all__ = ["StreamingTrainer", "TrainResult", "TrainingInterrupted"]
log = logging.getLogger(__name__)


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
        self.state = TrainState()
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

    # ------------------------------------------------------------------ set-up
    def _prepare(self) -> None:
        cfg, t = self.cfg, self.cfg.training
        self.rt = start_runtime(t)
        self.dist, self.is_main = self.rt.dist, self.rt.is_main
        check_logger(cfg.logging.logger)  # 1. validate everything before writing anything
        self._archive, self.index, self.stages = open_stages(cfg, self._archive, rank=self.dist.rank)
        if cfg.data.dataset != self.index.name:  # config.yaml holds the resolved dataset
            cfg = self.cfg = cfg.model_copy(
                update={"data": cfg.data.model_copy(update={"dataset": self.index.name})})
        cfg_dict = run_folder.config_dict(cfg)
        self.gradient_models = [m for m in cfg.models if m in GRADIENT_MODELS]  # pca: fitted after them
        resuming = run_folder.check_run_folder(self.run_dir, self.gradient_models, cfg_dict, self.resume)
        split_table = run_folder.check_split(self.run_dir, self.index, resuming)
        seed_everything(cfg.seed)  # 2. same seed on every rank: identical initial weights
        self.precision = resolve_precision(t.amp, self.rt.device)
        self.models, self.steps = build_steps(cfg, self.gradient_models, self.rt, self.precision)
        self.data = StageData(cfg, self._archive, self.index, self.stages, rank=self.dist.rank,
                              world_size=self.dist.world_size, run_dir=self.run_dir)
        self.epochs = self.data.plan_epochs(t.epochs_per_stage, t.min_images_per_stage,
                                            t.min_images_per_run, t.batch_size)
        total = sum(self.data.batches_in(s, e) for s in self.stages for e in range(self.epochs[s]))
        for st in self.steps.values():  # the LR schedule spans every step of the run
            st.schedule = partial(lr_factor, total_steps=total, warmup=t.warmup_steps, kind=t.scheduler)
        facts = RunFacts(run_folder.config_yaml(cfg_dict), config_fingerprint(cfg_dict), cfg.data.image_size,
                         self.stages, self.dist.world_size, self.precision.name, self._archive)
        self.checkpointer = Checkpointer(self.run_dir, self.gradient_models, writer=self.is_main, facts=facts)
        self.selector, self.pool = Selector(self.gradient_models), ValidationPool(t.batch_size)
        self.state, wandb_id = (self.checkpointer.resume(self.models, self.steps, self.selector, self.dist.rank)
                                if resuming else (self.state, None))
        if self.is_main:  # 3. run folder, reporting
            run_folder.prepare_run_folder(self.run_dir, facts.config_yaml,
                                          self.state.progress.step if resuming else None, split_table)
            log.info("precision: %s (%s)", self.precision.name, self.precision.reason)
        self.reporter = Reporter(self.run_dir, cfg.logging, enabled=self.is_main, config=cfg_dict,
                                 wandb_run_id=wandb_id, live_every_s=t.live_plot_every_s, replay=resuming,
                                 n_stages=len(self.stages), epochs=self.epochs, bars=self.progress_bars)
        dist_utils.barrier()
        self._prepared = True

    def _guard(self, stage: str, what: str) -> Callable[[str, torch.Tensor], Any]:
        """Out-of-memory in a step → one clear line naming the sizes to lower."""
        st, ck = self.state, self.checkpointer
        return lambda name, x: memory_guard(lambda gpu: out_of_memory_message(
            gpu, f"{name}'s {what}", st.progress.step, stage, x, self.cfg,
            st.last_save_step if any(ck.path(n).is_file() for n in self.models) else None))

    # ------------------------------------------------------------------ the loop
    def train_progressive_stages(self) -> TrainResult:
        """Train every model through the stages; returns a :class:`TrainResult`. Stops early
        (``interrupted=True``) after writing ``last.pt`` on SIGINT/SIGTERM."""
        t0 = time.monotonic()
        try:
            if not self._prepared:
                self._prepare()
            with self.stop.handlers():
                interrupted = self._loop() if self.gradient_models else False
            if not interrupted:
                self._finish()
            st = self.state
            return TrainResult(
                run_dir=self.run_dir, step=st.progress.step, stages=list(self.stages),
                stages_done=list(self.stages[: st.position.stage_index]),
                best_val=self.selector.best_losses(), images_seen=st.progress.images_seen,
                wall_s=time.monotonic() - t0, interrupted=interrupted,
                signal=self.stop.signum if interrupted else None, resumed_from_step=st.resumed_from_step,
                checkpoints={n: self.checkpointer.path(n) for n in self.models})
        finally:
            self.close()

    def _loop(self) -> bool:
        """Every stage's epochs from where the state stands. True when stopped by a signal."""
        st, at = self.state, self.state.position
        st.mark_saved()
        for si in range(at.stage_index, len(self.stages)):
            stage, st.stage_index = self.stages[si], si
            first = at.epoch if si == at.stage_index else 0
            if first == 0 and (si != at.stage_index or at.batch == 0):
                self.selector.new_stage()  # also when a resume starts at a stage's first batch
            self.data.warn_if_empty(stage)
            for epoch in range(first, self.epochs[stage]):
                resume_ds = st.start_epoch(si, epoch)
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
        st = self.state
        ds, batches = self.data.epoch_batches(stage, epoch, resume_ds)
        st.dataset, n = ds, self.data.batches_in(stage, epoch)
        bar = self.reporter.epoch_bar(stage, si + 1, epoch, total=n, initial=st.progress.batch)
        try:
            return train_one_epoch(
                self.steps, batches, st.progress, to_device=self.rt.to_device,
                world_size=self.dist.world_size, total_batches=n,
                log_every=self.cfg.training.log_every_steps, bar=bar,
                on_log=lambda means, ips: self.reporter.train(
                    step=st.progress.step, stage=stage, stage_index=si + 1, epoch=epoch, means=means,
                    ips=ips, lrs={m: s.next_lr() for m, s in self.steps.items()},
                    images_seen=st.progress.images_seen, precision=self.precision.name, ds=ds, bar=bar),
                on_batch=(lambda b: self.on_batch(stage, epoch, b)) if self.on_batch else None,
                after_model_step=self.rt.buffer_sync(self.models),
                after_step=self._after_step, guard=self._guard(stage, "train step"))
        finally:
            if bar is not None:
                bar.close()
            st.dataset = None
            with contextlib.suppress(Exception):
                batches.close()  # stops the epoch's prefetch threads when we leave early

    def _after_step(self) -> bool:
        """Memory check, and a checkpoint when due (steps, minutes) or asked for (signal)."""
        t, st = self.cfg.training, self.state
        if st.progress.step % t.memory_check_every_steps == 0:
            self.data.memory.check()
        stop, due = self._sync_flags()
        if stop or due or st.progress.step - st.last_save_step >= t.checkpoint_every_steps:
            st.position.batch = st.progress.batch  # mid-epoch: where the epoch continues
            self.data.flush()
            self._save()
        return stop

    def _sync_flags(self) -> tuple[bool, bool]:
        """(stop, checkpoint-by-time) agreed by every rank."""
        stop, minutes = self.stop.signum is not None, self.cfg.training.checkpoint_every_minutes
        due = time.monotonic() - self.state.last_save_time >= minutes * 60
        flags = dist_utils.all_reduce_sum([float(stop), float(due)]) if self.dist.distributed else [stop, due]
        return flags[0] > 0, flags[1] > 0

    # ------------------------------------------------------------------ validation and selection
    def _end_epoch(self, stage: str, si: int, epoch: int) -> bool:
        """Validate on the selection set, update ``best.pt``, save. True: stop the stage early."""
        st, k, t0 = self.state, si + 1, time.monotonic()
        self.data.fill_pool(self.pool, si, release_earlier=True)  # the selection set: stages 1..k
        cand = self._validate_pool()
        sel = {n: pooled_loss(cand[n]) for n in self.models}
        improved = self.selector.select(k, st.progress.step, sel,
                                        lambda n: pooled_loss(self._validate_pool(weights_of=n)[n]))
        self.reporter.val(step=st.progress.step, stage=stage, stage_index=k, epoch=epoch, sums=cand,
                          selection=sel, best=self.selector.best_losses(), improved=improved,
                          val_s=time.monotonic() - t0)
        stop_early = self.selector.should_stop(self.cfg.training.early_stopping_patience)
        last = epoch + 1 == self.epochs[stage] or stop_early
        st.position = Position(k, 0, 0) if last else Position(si, epoch + 1, 0)
        self.data.flush()
        self._save(stage_k=k if last else None, best=improved, val=sel, val_stages=k)
        if stop_early and self.is_main:
            log.info("early stopping: no validation gain for %d epochs; stage %s ends",
                     self.selector.bad_epochs, stage)
        return stop_early

    def _validate_pool(self, weights_of: str | None = None) -> dict[str, dict[str, ValSums]]:
        """Validation sums per model and pool stage, summed over ranks. With ``weights_of``: that
        model only, with ``best.pt``'s weights swapped in (rank 0 reads, broadcast) and back."""
        names = [weights_of] if weights_of else list(self.steps)
        objs = {n: self.steps[n].objective for n in names}
        ctx = {n: StepContext(self.precision.autocast(), self.rt.generator(self.cfg.seed)) for n in names}
        with (self.checkpointer.best_swapped_in(weights_of, self.models[weights_of]) if weights_of
              else contextlib.nullcontext()):
            return validate_stages(objs, {s: self.pool.batches(s) for s in self.pool.stages}, ctx,
                                   to_device=self.rt.to_device, all_reduce=dist_utils.all_reduce_sum,
                                   guard_for=lambda s: self._guard(s, "validation step"))

    def _finish(self) -> None:
        """After the last stage (rank 0): calibrations and the PCA baseline (:mod:`.finish`)."""
        self.data.fill_pool(self.pool, len(self.stages) - 1)
        if self.is_main:
            val = Calibrator(self.run_dir, self.pool, self.stages, self.index.cohort(self.cfg.data.view),
                             self.rt.device)
            for name in self.gradient_models:
                val.calibrate_checkpoint(name, self.models[name], self.checkpointer,
                                         self.selector.state[name].best_step, self.state.progress.step)
            if "pca" in self.cfg.models:
                self.state.stage_index = len(self.stages) - 1
                fields = self.checkpointer.common_fields(self.state, ranks=[], val_stages=len(self.stages),
                                                         wandb_run_id=self.reporter.wandb_run_id)
                fit_pca_baseline(self.cfg, self._archive, self.index, self.data, self.pool, val, fields)
        dist_utils.barrier()

    def _save(self, stage_k: int | None = None, best: list[str] | tuple[str, ...] = (),
              val: dict[str, float] | None = None, val_stages: int = 0) -> None:
        """Every model's ``last.pt`` (+ ``stage_K.pt``, ``best.pt``). Collective under DDP."""
        self.checkpointer.save_training(self.state, self.models, self.steps, self.selector,
                                        wandb_run_id=self.reporter.wandb_run_id, stage_k=stage_k,
                                        best=best, val=val, val_stages=val_stages)

    def close(self) -> None:
        """Release loggers, caches, the archive (if opened here) and the process group."""
        for part in (self.reporter, self.data):
            if part is not None:
                part.close()
        if self._own_archive and self._archive is not None:
            with contextlib.suppress(Exception):
                self._archive.close()
            self._archive = None
        dist_utils.cleanup()
