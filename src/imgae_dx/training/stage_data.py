"""The data side of training: the archive's index and stages, per-stage datasets and caches,
replay, the next stage's early start.

:class:`StageData` builds, for every stage, the training dataset (normal images of training
patients; ``drop_last``, equal batch counts on every rank) and the validation dataset (normal images
of the stage's validation patients). Decoded images go to one cache:

* ``data.cache: persistent`` — one decode-once cache on disk for the whole run (``RUN_DIR/cache``
  or ``data.cache_dir``), keyed by the archive; it outlives stages and processes, so a resumed run
  reads what it decoded before instead of streaming it again;
* ``memory`` / ``disk`` — one cache per stage, allocated lazily and freed when the stage ends.

**Replay** (``training.replay``: ``all`` or a fraction): the first epoch of stage K streams stage K
(decoding it into the cache); every later epoch of stage K draws, from the cache, the training
images of stage K and of the earlier stages (all of them, or that fraction of each earlier stage,
chosen once per stage from the seed) in a seeded order (:class:`~imgae_dx.data.replay.ReplayDataset`:
exact resume, equal batch counts on every rank). Replay needs the persistent cache.

During a stage's last epoch, :meth:`StageData.start_next` begins streaming the next stage in a
background thread (:class:`StageWarmup`), so the stage switch does not wait on the network.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from imgae_dx.config import Config
from imgae_dx.training.distributed import barrier
from imgae_dx.training.selection import ValidationPool, collect

log = logging.getLogger(__name__)

def open_stages(cfg: Config, archive: Any = None, *, rank: int = 0) -> tuple[Any, Any, list[str]]:
    """``(archive, index, stages)``: the archive (opened from ``cfg.source`` unless given; closed
    again on an error), its dataset index (``cfg.data.dataset``, detected when omitted) and the
    stages ``cfg.stages`` names, in training order.

    Under torchrun rank 0 builds the index first and logs; the other ranks wait for it, then read
    what it cached on disk of members' heads (RSNA's views) instead of reading them again.

    Raises:
        UserError: the source cannot be opened or indexed, or a stage it does not hold is named.
    """
    from imgae_dx.data.datasets import open_dataset

    opened = archive is None
    if opened:
        from imgae_dx.streaming.sources import open_archive

        archive = open_archive(cfg.source, cfg.data)
    try:
        if rank != 0:
            barrier()
        index = open_dataset(archive, cfg.data, cfg.seed, quiet=rank != 0)
        if rank == 0:
            barrier()
        return archive, index, list(index.resolve_stages(cfg.stages))
    except BaseException:
        if opened:
            with contextlib.suppress(Exception):
                archive.close()
        raise


class StageWarmup:
    """Pulls a dataset's first batch in a thread while training goes on.

    The dataset's prefetcher then holds its first ``requests_in_flight`` requests (within the
    memory budget). The order of samples is a pure function of the plan, so which thread decodes
    the first batch changes nothing.
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

    def batches(self) -> Iterator[Any]:
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


class StageData:
    """Datasets and caches of every stage of a run (see the module docstring).

    Args:
        cfg: the run's configuration.
        archive: the opened archive; ``index``: its :class:`~imgae_dx.data.datasets.base.DatasetIndex`.
        stages: the stages in training order.
        rank, world_size: this process's place in the job.
        run_dir: the run folder (default location of the disk cache).
    """

    def __init__(self, cfg: Config, archive: Any, index: Any, stages: list[str], *, rank: int,
                 world_size: int, run_dir: Path) -> None:
        from imgae_dx.config import ConfigError
        from imgae_dx.data.dataset import StreamingDataset, make_cache, pipeline_budget
        from imgae_dx.data.memory import MemoryManager
        from imgae_dx.data.replay import ReplayDataset

        d, t = cfg.data, cfg.training
        pipeline_budget(d)  # ConfigError now if the memory budget cannot hold the pipeline
        if t.replay != "none" and d.cache != "persistent":
            raise ConfigError(f"training.replay: {t.replay} revisits earlier stages' decoded images, "
                              f"which only data.cache: persistent keeps (now {d.cache!r}); set "
                              "data.cache: persistent or training.replay: none")
        self.rank, self.world_size, self.batch_size = rank, world_size, t.batch_size
        self.val_max_images = t.val_max_images
        self.memory = MemoryManager(d.memory_budget_mb)
        self.shared = (make_cache(d, run_dir / "cache", archive=archive, rank=rank)
                       if d.cache == "persistent" else None)
        self.caches: dict[str, Any] = {}
        self.train: dict[str, Any] = {}
        self.val: dict[str, Any] = {}
        self.replay: dict[str, Any] = {}
        common = dict(seed=cfg.seed, rank=rank, world_size=world_size, memory=self.memory,
                      batch_size=t.batch_size)
        for k, stage in enumerate(stages):
            cache = self.shared if self.shared is not None else make_cache(d, run_dir / "cache")
            if cache is not None and self.shared is None:
                self.caches[stage] = cache
            self.train[stage] = StreamingDataset(archive, index, stage, "train", d, cache=cache,
                                                 drop_last=True, **common)
            self.val[stage] = StreamingDataset(archive, index, stage, "val", d, cache=cache,
                                               drop_last=False, **common)
            if k and t.replay != "none":
                members = replay_members(cfg, index, stages[: k + 1], t.replay)
                self.replay[stage] = ReplayDataset(archive, index, stages[: k + 1], "train", d,
                                                   cache=self.shared, members=members, **common)
        self.stages = list(stages)
        self.first_epoch_batches = {s: int(self.train[s].num_batches()) for s in stages}
        self._warmup: tuple[str, StageWarmup] | None = None

    def dataset(self, stage: str, epoch: int) -> Any:
        """The training dataset of ``stage``'s ``epoch``: the stream, or (replay, epochs ≥ 1) the
        replay over the cached stages so far."""
        return self.replay[stage] if epoch > 0 and stage in self.replay else self.train[stage]

    def warn_if_empty(self, stage: str) -> None:
        """Log (rank 0) that ``stage`` yields no full training batch, so it trains nothing."""
        if self.first_epoch_batches[stage] == 0 and self.rank == 0:
            log.warning("stage %s yields no full training batch (%d training images for %d "
                        "process(es), batch size %d): it trains nothing; lower --batch-size or "
                        "widen the split (data.view all)", stage,
                        len(getattr(self.train[stage], "members", ())), self.world_size, self.batch_size)

    def batches_in(self, stage: str, epoch: int) -> int:
        """Batches every rank yields in ``stage``'s ``epoch``."""
        return int(self.dataset(stage, epoch).num_batches())

    def epochs_of(self, stage: str, epochs: int, min_images: int, batch_size: int,
                  max_epochs: int = 10_000) -> int:
        """Epochs ``stage`` trains: ``epochs``, or more until they have drawn ``min_images``
        images over all ranks (``max_epochs`` at most; a stage with no batch keeps ``epochs``)."""
        drawn, e = 0, 0
        while e < max_epochs and (e < epochs or drawn < min_images):
            n = self.batches_in(stage, e) * batch_size * self.world_size
            if n == 0 and e >= epochs:
                break
            drawn, e = drawn + n, e + 1
        return e

    def images_in(self, stage: str, epochs: int, batch_size: int) -> int:
        """Training images ``stage``'s first ``epochs`` epochs draw over all ranks."""
        return sum(self.batches_in(stage, e) for e in range(epochs)) * batch_size * self.world_size

    def plan_epochs(self, epochs: int, min_per_stage: int, min_per_run: int,
                    batch_size: int) -> dict[str, int]:
        """Epochs of every stage: :meth:`epochs_of` each (``min_per_stage``), then the last stage
        trains more until the run's epochs have drawn ``min_per_run`` images in all."""
        plan = {s: self.epochs_of(s, epochs, min_per_stage, batch_size) for s in self.stages}
        if min_per_run and self.stages:
            *before, last = self.stages
            drawn = sum(self.images_in(s, plan[s], batch_size) for s in before)
            plan[last] = self.epochs_of(last, plan[last], min_per_run - drawn, batch_size)
        return plan

    def flush(self) -> None:
        """Publish what the persistent cache holds in memory (before a checkpoint: a kill after
        the save then loses no decoded image the checkpoint's position has passed)."""
        if self.shared is not None:
            self.shared.flush()

    def start_next(self, stage: str) -> None:
        """Start streaming ``stage``'s first training epoch in the background (once)."""
        if self._warmup is None:
            self.train[stage].set_epoch(0)
            self._warmup = (stage, StageWarmup(self.train[stage]))

    def epoch_batches(self, stage: str, epoch: int, resume_state: Any = None) -> tuple[Any, Iterator[Any]]:
        """``(dataset, batches)`` of one training epoch, from ``resume_state`` when given (the
        early-started stream is used when it is this stage's first epoch from the start)."""
        ds = self.dataset(stage, epoch)
        ds.set_epoch(epoch)
        if resume_state is not None:
            ds.load_state_dict(resume_state)
        source = ds.batches()
        if self._warmup is not None and self._warmup[0] == stage:
            warm = self._warmup[1]
            self._warmup = None
            if epoch == 0 and resume_state is None:
                source = warm.batches()
            else:
                warm.close()
        return ds, source

    def val_batches(self, stage: str) -> Iterator[Any]:
        """The stage's validation images from the start of their (fixed) order."""
        ds = self.val[stage]
        ds.set_epoch(-1)  # switching epochs resets the position: a cut-short pass starts over
        ds.set_epoch(0)
        return (b.images for b in ds.batches())

    def fill_pool(self, pool: ValidationPool, upto: int, *, release_earlier: bool = False) -> None:
        """Add to ``pool`` the validation images (``training.val_max_images`` at most per stage)
        of the stages ``0..upto`` it lacks; with ``release_earlier``, a stage before ``upto``
        streamed for it (a resumed run: that stage is done) is released right after."""
        for k, stage in enumerate(self.stages[: upto + 1]):
            if stage not in pool:
                pool.add(stage, collect(self.val_batches(stage), self.val_max_images))
                if release_earlier and k < upto:
                    self.release(stage)

    def release(self, stage: str) -> None:
        """Free the stage's cache (a per-stage one; the persistent cache is published and kept)
        and other registered buffers once the stage is done."""
        self.memory.cleanup_stage(stage)
        self.flush()
        cache = self.caches.pop(stage, None)
        if cache is not None:
            with contextlib.suppress(Exception):
                cache.close()

    def close(self) -> None:
        if self._warmup is not None:
            self._warmup[1].close()
            self._warmup = None
        for stage in list(self.caches):
            self.release(stage)
        if self.shared is not None:
            with contextlib.suppress(Exception):
                self.shared.close()


def replay_members(cfg: Config, index: Any, stages: list[str], replay: str | float) -> Any:
    """Training members of a replay epoch over ``stages`` (the last one is the current stage):
    all of the current stage's, and of each earlier stage all (``all``) or a seeded share."""
    import numpy as np

    d = cfg.data
    parts = []
    for j, stage in enumerate(stages):
        m = index.split(stage, "train", view=d.view, val_fraction=d.val_fraction, seed=cfg.seed)
        if replay != "all" and j < len(stages) - 1:
            rng = np.random.default_rng([cfg.seed, 0x5E7, len(stages), j])
            m = rng.permutation(m)[: int(round(float(replay) * len(m)))]
        parts.append(np.asarray(m, dtype=np.int64))
    return np.concatenate(parts)
