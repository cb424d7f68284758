"""Progressive streaming trainer: stage after stage, exact resume, one stream for several models.

``StreamingTrainer(config).train_progressive_stages()`` trains every model in ``config.models`` on
the normal (``No Finding``) training images of each stage in order (``images_001``, …):
``training.epochs_per_stage`` epochs per stage, validation loss on the stage's (patient-disjoint)
``val`` split after each epoch. Each decoded batch feeds every model (decoding is the bottleneck,
so ``--model all`` costs one pass over the stream, not three).

Run folder (``config.out``)::

    config.yaml                         resolved configuration (no secrets)
    metrics.jsonl                       one JSON object per logged step / validation
    checkpoints/MODEL/last.pt           every N steps or M minutes, after each epoch, on SIGINT/SIGTERM
    checkpoints/MODEL/stage_K.pt        after stage K (K from 1): a copy of that moment's last.pt
    checkpoints/MODEL/best.pt           lowest validation loss so far: a copy of last.pt at that
                                        epoch's end (copies are hard links where possible)
    plots/live.png                      redrawn every ``training.live_plot_every_s`` seconds

Exact resume: ``last.pt`` holds the models, optimisers, LR schedulers, grad scaler, step, stage,
epoch, the dataset position of every rank and every RNG state (python, numpy, torch, CUDA, the
per-model noise generators), so a resumed CPU run ends bit-identical to an uninterrupted one.

Distributed (``torchrun``): rank and world size come from the environment; each rank's datasets
read disjoint range requests with equal batch counts; gradients are averaged by an explicit
all-reduce passed to objectives as ``StepContext.grad_sync`` (see :mod:`.distributed` for why not
the ``DistributedDataParallel`` wrapper); only rank 0 logs, saves and draws progress.

With ``--model all`` each model's ``last.pt`` carries the shared position; all are written at the
same step (one after another, each atomically). Every checkpoint loads with
``torch.load(weights_only=True)``; the weights are under ``"model"``, the run's configuration
under ``"config_yaml"``.

Early stopping (``training.early_stopping_patience``): within a stage, when no model has improved
its best validation loss for that many epochs, the stage's remaining epochs are skipped.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import torch

from imgae_dx import __version__
from imgae_dx.config import Config, config_from_yaml_text, load_config
from imgae_dx.errors import CheckpointError, RunFolderError, StepMemoryError, UserError
from imgae_dx.training import distributed as dist_utils
from imgae_dx.training.checkpoint import (
    FORMAT,
    capture_rng,
    config_differences,
    config_fingerprint,
    copy_checkpoint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from imgae_dx.training.loggers import MetricsLogger, truncate_jsonl
from imgae_dx.training.loggers import check_available as check_logger
from imgae_dx.utils.atomic import atomic_write_text, remove_stale_temps

log = logging.getLogger(__name__)

MB = 1024 * 1024


# ----------------------------------------------------------------------------- results
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


class TrainingInterrupted(UserError):
    """Raised by a second SIGINT while the stream is blocked (the first one stops cleanly)."""


# ----------------------------------------------------------------------------- helpers
def redact_source(source: str) -> str:
    """Drop user info and query values from an http(s) source (signed URLs carry tokens)."""
    if not source.startswith(("http://", "https://")):
        return source
    parts = urlsplit(source)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    query = "&".join(f"{kv.split('=', 1)[0]}=REDACTED" for kv in parts.query.split("&") if kv)
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _config_dict(cfg: Config) -> dict[str, Any]:
    d = cfg.model_dump(mode="json")
    d["source"] = redact_source(d["source"])
    return d


def _rss_mb() -> float:
    from imgae_dx.data.memory import rss_bytes

    try:
        return rss_bytes() / MB
    except Exception:  # restricted /proc: the log shows NaN rather than stopping training
        return float("nan")


def _check_writable(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"--out {run_dir} exists and is not a folder; choose another --out")
    probe = run_dir
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    problem = None
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        problem = "permission denied"
    else:
        try:  # os.access says yes to root everywhere: probe with a temporary file (removed at once)
            with tempfile.TemporaryFile(dir=probe):
                pass
        except OSError as e:
            problem = e.strerror or type(e).__name__
    if problem:
        raise RunFolderError(
            f"--out {run_dir} is not writable ({probe}: {problem}); choose a folder you can write to"
        )


def _lr_lambda(total_steps: int, warmup: int, kind: str) -> Callable[[int], float]:
    """Factor of the base LR at a given optimiser step: linear warm-up then cosine to 0 (or flat)."""

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        span = max(1, total_steps - warmup)
        t = min(1.0, max(0.0, (step - warmup) / span))
        return 0.5 * (1.0 + math.cos(math.pi * t))

    return f


class _StageWarmup:
    """Starts the next stage's stream early: a thread pulls its first batch while training goes on.

    The dataset's prefetcher then holds the first ``requests_in_flight`` requests (within the
    memory budget), so the stage switch does not wait on the network. The order of samples is
    a pure function of the plan, so which thread decodes the first batch changes nothing.
    """

    def __init__(self, ds: Any) -> None:
        self.ds = ds
        self._it = ds.batches()
        self._first: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="imgae-dx-stage-warmup", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._first = next(self._it, None)
        except BaseException as e:  # re-raised in the training thread by batches()
            self._error = e

    def batches(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._first is not None:
            first, self._first = self._first, None
            yield first
            yield from self._it

    def close(self, timeout: float = 30.0) -> None:
        self._thread.join(timeout)
        if not self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._it.close()


# ----------------------------------------------------------------------------- trainer
class StreamingTrainer:
    """Train ``config.models`` stage by stage from a streamed NIH archive.

    Args:
        config: the validated :class:`~imgae_dx.config.Config` (``load_config(...)``).
        resume: continue from ``RUN_DIR/checkpoints/*/last.pt`` when present (a fresh run starts
            when the folder holds no checkpoint yet); without it a folder that already holds a run
            is refused.
        archive: an opened :class:`~imgae_dx.streaming.sources.Archive` (default: opened from
            ``config.source``); the trainer closes only archives it opened.
        on_batch: optional ``f(stage, epoch, batch)`` called on every rank for every training batch
            (tests record which samples each rank saw).
        progress: draw tqdm bars (default ``config.logging.progress``; rank 0 only).
    """

    def __init__(
        self,
        config: Config,
        *,
        resume: bool = False,
        archive: Any | None = None,
        on_batch: Callable[[str, int, Any], None] | None = None,
        progress: bool | None = None,
    ) -> None:
        if not isinstance(config, Config):
            raise TypeError(f"StreamingTrainer needs an imgae_dx.config.Config, got {type(config).__name__}")
        self.cfg = config
        self.resume = resume
        self.run_dir = Path(config.out).expanduser()
        self._archive = archive
        self._own_archive = archive is None
        self.on_batch = on_batch
        self.progress = config.logging.progress if progress is None else progress
        self.models: dict[str, torch.nn.Module] = {}
        self.objectives: dict[str, Any] = {}
        self.schedulers: dict[str, dict[str, torch.optim.lr_scheduler.LRScheduler]] = {}
        self.generators: dict[str, torch.Generator] = {}
        self.scalers: dict[str, Any] = {}
        self.contexts: dict[str, Any] = {}  # StepContext per model, built once
        self.step = 0
        self.images_seen = 0
        self.best_val: dict[str, float | None] = {}
        self.logger: MetricsLogger | None = None
        self.live: Any = None
        self._stop_signal: int | None = None
        self._prepared = False
        self._warmup: tuple[str, _StageWarmup] | None = None
        self._cur_si = 0

    @classmethod
    def from_colab_config(
        cls,
        config_path: str | os.PathLike[str] | None = None,
        overrides: Mapping[str, Any] | None = None,
        *,
        resume: bool = True,
        **kwargs: Any,
    ) -> StreamingTrainer:
        """Trainer from ``configs/cloud_configs/colab.yaml`` (checkpoints on Drive), resuming by default.

        Args:
            config_path: optional user YAML merged over the Colab profile.
            overrides: dotted keys → values (e.g. ``{"training.epochs_per_stage": 2}``).
            resume: continue the run in ``out`` when it has checkpoints (default on: Colab
                runtimes disconnect).
        """
        cfg = load_config(config_path, overrides, profile="colab")
        return cls(cfg, resume=resume, **kwargs)

    # ------------------------------------------------------------------ setup
    def _prepare(self) -> None:
        cfg = self.cfg
        info = dist_utils.detect()
        self.device = dist_utils.resolve_device(cfg.training.device, info.local_rank)
        self.dist = dist_utils.init_distributed(self.device)
        self.is_main = self.dist.is_main
        self.cuda = self.device.type == "cuda"
        if self.cuda:  # process-wide switches, as every CUDA training script sets them
            torch.backends.cudnn.benchmark = cfg.training.cudnn_benchmark
            torch.backends.cuda.matmul.allow_tf32 = cfg.training.tf32
            torch.backends.cudnn.allow_tf32 = cfg.training.tf32

        # 1. validate everything before writing anything
        _check_writable(self.run_dir)
        check_logger(cfg.logging.logger)
        cfg_dict = _config_dict(cfg)
        self.fingerprint = config_fingerprint(cfg_dict)
        self.config_yaml = _yaml_of(cfg_dict)  # RUN_DIR/config.yaml, and in every checkpoint
        resume_ckpts = self._check_run_folder(cfg_dict)

        from imgae_dx.data.nih_index import NIHIndex

        if self._archive is None:
            from imgae_dx.streaming.sources import open_archive

            self._archive = open_archive(cfg.source, cfg.data)
        self.index = NIHIndex.from_archive(self._archive)
        self.stages: list[str] = list(self.index.resolve_stages(cfg.stages))

        # 2. deterministic start: same seed on every rank (identical initial weights)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        torch.manual_seed(cfg.seed)
        self._build_models()
        self._build_data()
        self._build_schedulers()

        # 3. restore or start
        self.position: dict[str, Any] = {"stage_index": 0, "epoch": 0, "batch": 0, "dataset": None}
        self.bad_epochs = 0
        self.resumed_from_step: int | None = None
        wandb_id = None
        if resume_ckpts:
            wandb_id = self._restore(resume_ckpts)

        # 4. run folder, loggers (rank 0)
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "checkpoints").mkdir(exist_ok=True)
            for folder in [self.run_dir, *(self.run_dir / "checkpoints").iterdir()]:
                if folder.is_dir() and (n := remove_stale_temps(folder)):
                    log.info("removed %d temp file(s) a killed run left in %s", n, folder)
            atomic_write_text(self.run_dir / "config.yaml", self.config_yaml)
            metrics = self.run_dir / "metrics.jsonl"
            truncate_jsonl(metrics, self.step if resume_ckpts else -1)
            lg = cfg.logging
            self.logger = MetricsLogger(
                self.run_dir, lg.logger, wandb_project=lg.wandb_project, wandb_entity=lg.wandb_entity,
                config=cfg_dict, wandb_run_id=wandb_id,
            )
            from imgae_dx.visualization.live import LivePlot

            self.live = LivePlot(self.run_dir / "plots" / "live.png", cfg.training.live_plot_every_s)
            if resume_ckpts:
                from imgae_dx.training.loggers import read_metrics

                for rec in read_metrics(metrics):
                    self.live.add(rec)
        dist_utils.barrier()
        self._prepared = True

    def _check_run_folder(self, cfg_dict: dict[str, Any]) -> dict[str, Path]:
        """Refuse a folder holding another run; return the ``last.pt`` per model to resume from."""
        cfg_file = self.run_dir / "config.yaml"
        ck_dir = self.run_dir / "checkpoints"
        existing = sorted(ck_dir.glob("*/*.pt")) if ck_dir.is_dir() else []
        if cfg_file.is_file():
            try:
                old = _config_dict(config_from_yaml_text(cfg_file.read_text(), str(cfg_file)))
            except UserError as e:
                raise RunFolderError(
                    f"{self.run_dir} holds a config.yaml this version cannot read ({e}); "
                    "choose another --out"
                ) from None
            diffs = config_differences(old, cfg_dict)
            if diffs:
                shown = "; ".join(diffs[:8]) + (f"; … ({len(diffs)} in all)" if len(diffs) > 8 else "")
                err = CheckpointError if self.resume else RunFolderError
                raise err(
                    f"{self.run_dir} holds a different run (its config.yaml differs: {shown}); "
                    + ("resume with the run's own settings" if self.resume else "")
                    + " or choose another --out"
                )
        elif existing:
            raise RunFolderError(
                f"{self.run_dir} holds checkpoints but no config.yaml: not a run of this tool; "
                "choose another --out"
            )
        if not self.resume:
            if existing:
                raise RunFolderError(
                    f"{self.run_dir} already holds a run ({len(existing)} checkpoint files); pass "
                    "--resume to continue it or choose another --out (nothing was overwritten)"
                )
            return {}
        lasts = {m: ck_dir / m / "last.pt" for m in self.cfg.models}
        present = {m: p for m, p in lasts.items() if p.is_file()}
        if not present:
            if existing:
                raise CheckpointError(
                    f"--resume: {self.run_dir} holds checkpoints but no last.pt for "
                    f"{', '.join(self.cfg.models)}"
                )
            log.info("--resume: %s holds no checkpoint yet; starting a new run", self.run_dir)
            return {}
        missing = sorted(set(lasts) - set(present))
        if missing:
            raise CheckpointError(
                f"--resume: {self.run_dir} has last.pt for {', '.join(sorted(present))} but not for "
                f"{', '.join(missing)}; resume with the models of the run (--model)"
            )
        return present

    def _build_models(self) -> None:
        from imgae_dx.models import StepContext, create_model, create_objective

        cfg = self.cfg
        for i, name in enumerate(cfg.models):
            model_cfg = getattr(cfg.model, name)
            model = create_model(name, image_size=cfg.data.image_size, cfg=model_cfg)
            model.to(self.device)
            if self.cuda and cfg.training.channels_last:
                model.to(memory_format=torch.channels_last)
            dist_utils.broadcast_module(model)
            self.models[name] = model
            self.objectives[name] = create_objective(name, model, model_cfg)
            if cfg.training.compile:
                self.objectives[name].compile()  # in place: state_dict keys are unchanged
            gen = torch.Generator(device=self.device)
            gen.manual_seed(cfg.seed * 1000 + 17 * (i + 1) + 7919 * self.dist.rank)
            self.generators[name] = gen
            # autocast on CUDA only; fp16 gets its own GradScaler (one per model: an overflow in
            # one model must not shrink the others' scale), bf16 and fp32 none
            ctx = StepContext.for_device(
                self.device, cfg.training.amp if self.cuda else "off", grad_clip=cfg.training.grad_clip,
                generator=gen, grad_sync=dist_utils.all_reduce_grads if self.dist.distributed else None,
            )
            self.contexts[name] = ctx
            self.scalers[name] = ctx.scaler
            self.best_val[name] = None

    def _build_data(self) -> None:
        from imgae_dx.data.dataset import StreamingNIHDataset, make_cache, pipeline_budget
        from imgae_dx.data.memory import MemoryManager

        cfg, d = self.cfg, self.cfg.data
        pipeline_budget(d)  # ConfigError now if the memory budget cannot hold the pipeline
        self.memory = MemoryManager(d.memory_budget_mb)
        self._cache_dir = self.run_dir / "cache"
        self._caches: dict[str, Any] = {}
        self.train_sets: dict[str, Any] = {}
        self.val_sets: dict[str, Any] = {}
        common = dict(seed=cfg.seed, rank=self.dist.rank, world_size=self.dist.world_size,
                      memory=self.memory, batch_size=cfg.training.batch_size)
        for stage in self.stages:
            # One cache per stage (allocated lazily, freed by cleanup_stage when the stage ends);
            # the datasets register it with the memory manager.
            cache = make_cache(d, self._cache_dir)
            if cache is not None:
                self._caches[stage] = cache
            self.train_sets[stage] = StreamingNIHDataset(
                self._archive, self.index, stage, "train", d, cache=cache, drop_last=True, **common,
            )
            self.val_sets[stage] = StreamingNIHDataset(
                self._archive, self.index, stage, "val", d, cache=cache, drop_last=False, **common,
            )
        self.batches_per_epoch = {s: int(self.train_sets[s].num_batches()) for s in self.stages}

    def _release_stage(self, stage: str) -> None:
        """Free the stage's cache and other registered buffers once the stage is done."""
        self.memory.cleanup_stage(stage)
        cache = self._caches.pop(stage, None)
        if cache is not None:
            with contextlib.suppress(Exception):
                cache.close()

    def _build_schedulers(self) -> None:
        t = self.cfg.training
        self.total_steps = sum(self.batches_per_epoch.values()) * t.epochs_per_stage
        for name, obj in self.objectives.items():
            self.schedulers[name] = {
                k: torch.optim.lr_scheduler.LambdaLR(
                    opt, _lr_lambda(self.total_steps, t.warmup_steps, t.scheduler)
                )
                for k, opt in obj.optimizers.items()
            }

    # ------------------------------------------------------------------ checkpoints
    def _shared_state(self) -> dict[str, Any]:
        """Per-rank state (dataset position, RNGs, generators), gathered from every rank."""
        stage_i = self.position["stage_index"]
        ds_state = None
        if self.position.get("live_dataset") is not None:
            ds_state = self.position["live_dataset"].state_dict()
        mine = {
            "dataset": ds_state,
            "rng": capture_rng(),
            "generators": {n: g.get_state() for n, g in self.generators.items()},
            "stage_index": stage_i,
        }
        return {"rank_states": dist_utils.gather_objects(mine)}

    def _payload(self, name: str, shared: dict[str, Any]) -> dict[str, Any]:
        obj = self.objectives[name]
        return {
            "format": FORMAT,
            "package_version": __version__,
            "model_name": name,
            "fingerprint": self.fingerprint,
            "config_yaml": self.config_yaml,
            "image_size": self.cfg.data.image_size,
            "step": self.step,
            "images_seen": self.images_seen,
            "stages": list(self.stages),
            # the stage being trained (for stage_K.pt and best.pt: the one just validated), 1-based K
            "stage": self.stages[self._cur_si],
            "stage_k": self._cur_si + 1,
            # where training continues: 0-based stage index, epoch, batches done in that epoch
            "position": {k: int(self.position[k]) for k in ("stage_index", "epoch", "batch")},
            "world_size": self.dist.world_size,
            "model": {k: v.detach().cpu() for k, v in self.models[name].state_dict().items()},
            "objective": obj.state_dict(),
            "schedulers": {k: s.state_dict() for k, s in self.schedulers[name].items()},
            "scaler": self.scalers[name].state_dict() if self.scalers[name] is not None else None,
            "best_val": self.best_val[name],
            "best_vals": dict(self.best_val),
            "bad_epochs": self.bad_epochs,
            "wandb_run_id": self.logger.wandb_run_id if self.logger else None,
            "archive": self._archive_version(),
            "saved_at": time.time(),
            **shared,
        }

    def _archive_version(self) -> dict[str, Any]:
        """Which bytes the saved dataset positions refer to (no secrets: identities are redacted)."""
        reader = self._archive.reader
        return {"identity": str(self._archive.identity), "version": str(reader.version),
                "size": int(reader.size)}

    def save(self, stage_k: int | None = None, best: Iterable[str] = ()) -> None:
        """Write every model's ``last.pt``; with ``stage_k`` / ``best`` also ``stage_K.pt`` /
        ``best.pt`` as copies of it (hard links where the filesystem allows them, so one
        serialisation per model). Collective under DDP: every rank calls it, rank 0 writes."""
        shared = self._shared_state()
        self._last_save = time.monotonic()  # every rank keeps the same bookkeeping:
        self._last_save_step = self.step  # save decisions must agree across ranks
        if not self.is_main:
            return
        best = set(best)
        for name in self.models:
            folder = self.run_dir / "checkpoints" / name
            if (folder / "last.pt").is_file():
                # keep the step before: a kill between two models' writes leaves them one save
                # apart, and resume then continues every model from that common step
                copy_checkpoint(folder / "last.pt", folder / "prev.pt")
            last = save_checkpoint(folder / "last.pt", self._payload(name, shared))
            if stage_k is not None:
                copy_checkpoint(last, folder / f"stage_{stage_k}.pt")
            if name in best:
                copy_checkpoint(last, folder / "best.pt")

    def _restore(self, lasts: dict[str, Path]) -> str | None:
        ckpts = {
            name: load_checkpoint(p, model_name=name, fingerprint=self.fingerprint)
            for name, p in lasts.items()
        }
        steps = {n: c["step"] for n, c in ckpts.items()}
        if len(set(steps.values())) != 1:
            # killed between two models' last.pt writes: fall back to prev.pt where that makes
            # every model meet at the earliest step
            common = min(steps.values())
            for name, ck in list(ckpts.items()):
                prev = lasts[name].with_name("prev.pt")
                if ck["step"] != common and prev.is_file():
                    pck = load_checkpoint(prev, model_name=name, fingerprint=self.fingerprint)
                    if pck["step"] == common:
                        log.warning("%s: the run was stopped while saving; %s continues from "
                                    "prev.pt (step %d)", self.run_dir, name, common)
                        ckpts[name] = pck
            steps = {n: c["step"] for n, c in ckpts.items()}
        if len(set(steps.values())) != 1:
            raise CheckpointError(
                f"the last.pt files of {self.run_dir} are from different steps ({steps}): the run "
                "was stopped while they were being written, so the models cannot continue "
                "together; start a new --out (the stage_K.pt files keep every finished stage)"
            )
        first = next(iter(ckpts.values()))
        if first["world_size"] != self.dist.world_size:
            raise CheckpointError(
                f"the run was saved with {first['world_size']} process(es) but this resume has "
                f"{self.dist.world_size}; resume with the same --nproc_per_node"
            )
        saved, now = first.get("archive"), self._archive_version()
        if saved and saved["identity"] == now["identity"] and (
            saved["version"] != now["version"] or saved["size"] != now["size"]
        ):
            raise CheckpointError(
                f"{now['identity']} is no longer the archive this run was trained on (version "
                f"{saved['version']}, {saved['size']} bytes; now {now['version']}, {now['size']} "
                "bytes): the saved stream positions would point into another dataset version; "
                "start a new --out folder"
            )
        saved_stages = list(first.get("stages", []))
        if saved_stages != self.stages[: len(saved_stages)]:
            raise CheckpointError(
                f"the run trained stages {', '.join(saved_stages)} but the source now resolves "
                f"to {', '.join(self.stages)}; resume with the same source and --stages"
            )
        for name, ck in ckpts.items():
            try:
                self.models[name].load_state_dict(ck["model"])
                self.objectives[name].load_state_dict(ck["objective"])
                for k, sd in ck["schedulers"].items():
                    self.schedulers[name][k].load_state_dict(sd)
            except (RuntimeError, KeyError, ValueError) as e:
                raise CheckpointError(
                    f"{lasts[name]} does not fit model {name!r} as configured ({str(e)[:200]})"
                ) from None
            self.best_val[name] = ck["best_val"]
            if self.scalers[name] is not None and ck.get("scaler"):
                self.scalers[name].load_state_dict(ck["scaler"])
        mine = first["rank_states"][self.dist.rank]
        restore_rng(mine["rng"])
        for n, st in mine["generators"].items():
            if n in self.generators:
                self.generators[n].set_state(st.to(torch.uint8))
        self.step = int(first["step"])
        self.images_seen = int(first["images_seen"])
        self.bad_epochs = int(first.get("bad_epochs", 0))
        self.position = {**first["position"], "dataset": mine["dataset"]}
        self.resumed_from_step = self.step
        if self.is_main:
            log.info("resuming %s from step %d (stage %d, epoch %d, batch %d)", self.run_dir,
                     self.step, self.position["stage_index"] + 1, self.position["epoch"] + 1,
                     self.position["batch"])
        return first.get("wandb_run_id")

    # ------------------------------------------------------------------ signals
    @contextlib.contextmanager
    def _signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {}

        def handler(signum, frame):
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise TrainingInterrupted("interrupted twice: stopping without saving")
            self._stop_signal = signum
            log.warning("signal %d received: saving last.pt and stopping at the next step", signum)

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)

    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Ask the loop to save ``last.pt`` and return at the next step (what a signal does)."""
        self._stop_signal = signum

    # ------------------------------------------------------------------ training
    def train_progressive_stages(self) -> TrainResult:
        """Train every model through the stages; returns a :class:`TrainResult`.

        Stops early (``interrupted=True``) after writing ``last.pt`` on SIGINT/SIGTERM.
        """
        t0 = self._t_start = time.monotonic()
        try:
            if not self._prepared:
                self._prepare()
            with self._signals():
                interrupted = self._loop()
            if self.live is not None:
                self.live.close()
            stages_done = self.stages[: self.position["stage_index"]]
            return TrainResult(
                run_dir=self.run_dir,
                step=self.step,
                stages=list(self.stages),
                stages_done=list(stages_done),
                best_val=dict(self.best_val),
                images_seen=self.images_seen,
                wall_s=time.monotonic() - t0,
                interrupted=interrupted,
                signal=self._stop_signal if interrupted else None,
                resumed_from_step=self.resumed_from_step,
                checkpoints={
                    n: self.run_dir / "checkpoints" / n / "last.pt" for n in self.models
                },
            )
        finally:
            self.close()

    def close(self) -> None:
        """Release loggers, caches, the archive (if opened here) and the process group."""
        if self._warmup is not None:
            self._warmup[1].close()
            self._warmup = None
        if self.logger is not None:
            self.logger.close()
            self.logger = None
        for stage in list(getattr(self, "_caches", {})):
            self._release_stage(stage)
        if self._own_archive and self._archive is not None:
            with contextlib.suppress(Exception):
                self._archive.close()
            self._archive = None
        dist_utils.cleanup()

    def _sync_flags(self) -> tuple[bool, bool]:
        """(stop, checkpoint-by-time) agreed by every rank."""
        t = self.cfg.training
        stop = self._stop_signal is not None
        due = (time.monotonic() - self._last_save) >= t.checkpoint_every_minutes * 60
        if not self.dist.distributed:
            return stop, due
        vals = dist_utils.all_reduce_sum([float(stop), float(due)])
        return vals[0] > 0, vals[1] > 0

    def _loop(self) -> bool:
        t = self.cfg.training
        self._last_save = time.monotonic()
        self._last_save_step = self.step
        start_stage = self.position["stage_index"]
        for si in range(start_stage, len(self.stages)):
            stage = self.stages[si]
            self._cur_si = si
            if self.batches_per_epoch[stage] == 0 and self.is_main:
                log.warning(
                    "stage %s yields no full training batch (%d training images for %d process(es), "
                    "batch size %d): it trains nothing; lower --batch-size or widen the split "
                    "(data.view all)",
                    stage, len(getattr(self.train_sets[stage], "members", ())),
                    self.dist.world_size, t.batch_size,
                )
            start_epoch = self.position["epoch"] if si == start_stage else 0
            if si != start_stage:
                self.bad_epochs = 0
            for epoch in range(start_epoch, t.epochs_per_stage):
                resume_ds = self.position.get("dataset") if (si == start_stage and epoch == start_epoch) else None
                start_batch = self.position["batch"] if resume_ds is not None else 0
                self.position = {"stage_index": si, "epoch": epoch, "batch": start_batch, "dataset": None}
                if epoch + 1 == t.epochs_per_stage and si + 1 < len(self.stages) and self._warmup is None:
                    nxt = self.stages[si + 1]
                    self.train_sets[nxt].set_epoch(0)
                    self._warmup = (nxt, _StageWarmup(self.train_sets[nxt]))
                if self._train_epoch(stage, si, epoch, resume_ds, start_batch):
                    return True
                improved = self._validate(stage, si, epoch)
                self.bad_epochs = 0 if improved else self.bad_epochs + 1
                stop_early = (
                    t.early_stopping_patience is not None and self.bad_epochs >= t.early_stopping_patience
                )
                last_epoch = epoch + 1 == t.epochs_per_stage or stop_early
                if last_epoch:
                    self.position = {"stage_index": si + 1, "epoch": 0, "batch": 0, "dataset": None}
                else:
                    self.position = {"stage_index": si, "epoch": epoch + 1, "batch": 0, "dataset": None}
                self.save(stage_k=si + 1 if last_epoch else None, best=improved)
                if stop_early and self.is_main:
                    log.info("early stopping: no validation gain for %d epochs; stage %s ends",
                             self.bad_epochs, stage)
                if stop_early:
                    break
                if self._sync_flags()[0]:
                    return True
            self._release_stage(stage)
        return False

    def _train_epoch(
        self, stage: str, si: int, epoch: int, resume_state: Any, start_batch: int
    ) -> bool:
        """One epoch over the stage's train split. Returns True when stopped by a signal."""
        t = self.cfg.training
        ds = self.train_sets[stage]
        ds.set_epoch(epoch)
        if resume_state is not None:
            ds.load_state_dict(resume_state)
        self.position["live_dataset"] = ds
        total = self.batches_per_epoch[stage]
        for m in self.models.values():
            m.train()
        bar = None
        if self.is_main and self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=start_batch, leave=False, dynamic_ncols=True,
                       desc=f"{stage} [{si + 1}/{len(self.stages)}] epoch {epoch + 1}/{t.epochs_per_stage}")
        sums: dict[str, dict[str, float]] = {n: {} for n in self.models}
        n_since, img_since, t_since = 0, 0, time.monotonic()
        batch_i = start_batch
        source = ds.batches()
        if self._warmup is not None and self._warmup[0] == stage:
            warm = self._warmup[1]
            self._warmup = None
            if epoch == 0 and resume_state is None:
                source = warm.batches()
            else:
                warm.close()
        try:
            for batch in source:
                if self.on_batch is not None:
                    self.on_batch(stage, epoch, batch)
                x = batch.images
                if self.cuda:
                    x = x.pin_memory().to(self.device, non_blocking=True)
                    if t.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                else:
                    x = x.to(self.device)
                for name, obj in self.objectives.items():
                    with self._memory_errors(name, "train step", stage, x):
                        out = obj.train_step(x, self.contexts[name])
                    if self.scalers[name] is not None:
                        self.scalers[name].update()
                    for sch in self.schedulers[name].values():
                        sch.step()
                    acc = sums[name]
                    for k, v in out.items():
                        acc[k] = acc.get(k, 0.0) + float(v)
                    if self.dist.distributed:
                        dist_utils.broadcast_module(self.models[name], buffers_only=True)
                self.step += 1
                batch_i += 1
                self.position["batch"] = batch_i
                bs = int(x.shape[0]) * self.dist.world_size
                self.images_seen += bs
                n_since += 1
                img_since += bs
                if bar is not None:
                    bar.update(1)
                if self.step % t.memory_check_every_steps == 0:
                    self.memory.check()
                if self.step % t.log_every_steps == 0 or batch_i == total:
                    now = time.monotonic()
                    ips = img_since / max(1e-9, now - t_since)
                    self._log_train(stage, si, epoch, sums, n_since, ips, bar, ds)
                    sums = {n: {} for n in self.models}
                    n_since, img_since, t_since = 0, 0, now
                stop, due = self._sync_flags()
                if stop or due or self.step - self._last_save_step >= t.checkpoint_every_steps:
                    self.save()
                if stop:
                    return True
        finally:
            if bar is not None:
                bar.close()
            self.position.pop("live_dataset", None)
            with contextlib.suppress(Exception):
                source.close()  # stops the epoch's prefetch threads when we leave early
        if n_since:
            now = time.monotonic()
            self._log_train(stage, si, epoch, sums, n_since, img_since / max(1e-9, now - t_since), None, ds)
        return False

    def _cache_hit_rate(self, ds: Any) -> float | None:
        try:
            st = ds.stats()
        except Exception:
            return None
        hits, misses = st.get("cache_hits", 0), st.get("cache_misses", 0)
        return hits / (hits + misses) if hits + misses else None

    def _log_train(self, stage, si, epoch, sums, n, ips, bar, ds) -> None:
        if not self.is_main:
            return
        rss = _rss_mb()
        hit = self._cache_hit_rate(ds)
        post = {}
        for name, acc in sums.items():
            rec: dict[str, Any] = {
                "step": self.step, "stage": stage, "stage_index": si + 1, "epoch": epoch,
                "model": name, "kind": "train",
            }
            rec.update({k: v / max(1, n) for k, v in acc.items()})
            lrs = [s.get_last_lr()[0] for s in self.schedulers[name].values()]
            rec.update({"lr": lrs[0] if lrs else None, "images_per_s": round(ips, 2),
                        "rss_mb": round(rss, 1), "cache_hit_rate": hit,
                        "images_seen": self.images_seen})
            self.logger.log(rec)
            self.live.update(rec)
            post[name] = f"{rec.get('loss', float('nan')):.4g}"
        if bar is not None:
            bar.set_postfix(loss=",".join(f"{k}={v}" for k, v in post.items()), img_s=f"{ips:.0f}",
                            rss=f"{rss:.0f}MB", hit=f"{hit:.0%}" if hit is not None else "-")

    @contextlib.contextmanager
    def _memory_errors(self, name: str, what: str, stage: str, x: torch.Tensor) -> Iterator[None]:
        """Turn an out-of-memory error of one model's step into a :class:`StepMemoryError` that
        says which sizes to lower and what is on disk (the last checkpoint is never touched)."""
        try:
            yield
        except RuntimeError as e:  # torch.OutOfMemoryError (CUDA) is a RuntimeError too
            gpu = isinstance(e, torch.OutOfMemoryError)
            if not gpu and "can't allocate memory" not in str(e):  # the CPU allocator's words
                raise
            t, d = self.cfg.training, self.cfg.data
            saved = [n for n in self.models if (self.run_dir / "checkpoints" / n / "last.pt").is_file()]
            kept = (f"the last checkpoint (step {self._last_save_step}) is intact: free memory and "
                    f"rerun with --resume to continue from it" if saved else "no checkpoint was written yet")
            raise StepMemoryError(
                f"{'GPU' if gpu else 'host'} memory ran out in "
                f"{name}'s {what} at step {self.step} ({stage}, a batch of {int(x.shape[0])} at "
                f"{int(x.shape[-1])}²). Lower --batch-size (training.batch_size, now {t.batch_size}) "
                f"or --image-size (data.image_size, now {d.image_size}) and start a new run: they define the run, "
                f"so --resume refuses them; {kept}."
            ) from e

    @torch.no_grad()
    def _validate(self, stage: str, si: int, epoch: int) -> list[str]:
        """Validation loss per model on the stage's val split; returns the models that improved."""
        t = self.cfg.training
        ds = self.val_sets[stage]
        # The same val images in the same order every time, from the start (a pass cut short by
        # val_max_images must not continue where it stopped): switching epochs resets the position.
        ds.set_epoch(-1)
        ds.set_epoch(0)
        for m in self.models.values():
            m.eval()
        sums = {n: 0.0 for n in self.models}
        count = 0
        ctxs = {}  # the training contexts with a fresh, per-stage seeded generator
        for i, name in enumerate(self.models):
            g = torch.Generator(device=self.device)
            g.manual_seed(self.cfg.seed + 100003 * (si + 1) + 1009 * i + self.dist.rank)
            ctxs[name] = replace(self.contexts[name], generator=g)
        t0 = time.monotonic()
        for batch in ds.batches():
            x = batch.images.to(self.device)
            if self.cuda and t.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            b = int(x.shape[0])
            for name, obj in self.objectives.items():
                with self._memory_errors(name, "validation step", stage, x):
                    out = obj.val_loss(x, ctxs[name])
                sums[name] += float(out["loss"]) * b
            count += b
            if t.val_max_images is not None and count >= t.val_max_images:
                break
        totals = dist_utils.all_reduce_sum([*sums.values(), float(count)])
        count_all = totals[-1]
        improved = []
        losses = []
        for (name, _), total in zip(sums.items(), totals[:-1], strict=True):
            if count_all == 0:
                continue
            v = total / count_all
            best = self.best_val[name]
            if best is None or v < best:
                self.best_val[name] = v
                improved.append(name)
            if self.is_main:
                rec = {"step": self.step, "stage": stage, "stage_index": si + 1, "epoch": epoch,
                       "model": name, "kind": "val", "val_loss": v, "val_images": int(count_all),
                       "best_val_loss": self.best_val[name],
                       "val_s": round(time.monotonic() - t0, 3), "rss_mb": round(_rss_mb(), 1)}
                self.logger.log(rec)
                self.live.update(rec)
                losses.append(f"{name} {v:.5f}")
        for m in self.models.values():
            m.train()
        if count_all == 0 and self.is_main:
            log.warning("stage %s has no validation images; best.pt is not updated", stage)
        elif self.is_main:
            log.info("%s [%d/%d] epoch %d/%d done (%.0f s): val loss %s", stage, si + 1, len(self.stages),
                     epoch + 1, t.epochs_per_stage, time.monotonic() - self._t_start, ", ".join(losses))
        return improved


def _yaml_of(cfg_dict: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(cfg_dict, sort_keys=False)


