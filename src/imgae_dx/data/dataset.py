"""``StreamingDataset`` (``StreamingNIHDataset``): one stage's split, streamed by byte ranges.

Over 500 lines on purpose: the resumable iteration and the fetch/decode engine
(``_FetchDecodePipeline``) share one contract — what is yielded, in which order, from which
bytes — and are tested together.

Any dataset of :mod:`imgae_dx.data.datasets` (NIH, ZhangLab, a folder, …): the split's member ids
come from its :class:`~imgae_dx.data.datasets.base.DatasetIndex`, the bytes from one archive.
The plan of an epoch is :mod:`imgae_dx.data.planning` (pure functions); this module runs it.

Pipeline (per epoch)::

    split member ids ─ coalesce ─▶ canonical RangeRequests (offset order)
      ─ permute (seed, stage, split, epoch) ─▶ request j → rank j % world, worker (j // world) % workers
      ─ this rank's member ids, truncated to the common count ─ seeded shuffle buffer ─▶ ORDER
    ORDER ─ skip consumed prefix / cached / known-bad ─▶ requests still needed
      ─ Prefetcher (requests_in_flight ahead) ─ thread pool: extract + CRC + decode + resize
      ─ reassembled in ORDER ─ cache (uint8) ─▶ float tensors 1×H×W in [0, 1]

The order is computed from ids alone, before anything is fetched: it is a pure function of
``(seed, stage, split, epoch, rank, world_size)`` (and of the DataLoader worker count when used
with workers), never of decode threads or timing. That makes resume exact: the state is
``{stage, split, epoch, position, seed, fingerprint}``; a restored dataset regenerates the order,
skips the consumed prefix and fetches only requests still needed — with any ``decode_workers``.

Every rank yields the same number of samples: per-rank counts are computed from the plan and
truncated to the smallest (a multiple of ``batch_size`` with ``drop_last``). An undecodable
member (CRC still wrong after re-reading; a truncated, corrupt or unrecognised image) is counted
as skipped and replaced, deterministically, by the next decodable image of the rank's order (or,
at the end of the order, the previous one), so counts stay equal and DDP never waits on a short
rank.

Memory is bounded by configuration: requests in flight (``requests_in_flight × max_request_mb``),
the reassembly window (≈ ``shuffle_buffer`` + one request's images, uint8) and the cache (its own
byte budget); all are registered with the :class:`~imgae_dx.data.memory.MemoryManager`.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from imgae_dx.data.cache import ImageCache, ImageStore
from imgae_dx.data.decode import decode_image, to_unit
from imgae_dx.data.memory import limit_heap_fragmentation
from imgae_dx.data.planning import Share, balanced_requests, deal_shares, share_order, sub_request
from imgae_dx.errors import ArchiveError, CheckpointError, UserError
from imgae_dx.streaming.fetcher import Prefetcher, RangeRequest

if TYPE_CHECKING:
    from imgae_dx.config import DataConfig
    from imgae_dx.data.datasets.base import DatasetIndex
    from imgae_dx.data.memory import MemoryManager

MB = 1024 * 1024
#: Re-reads of a member whose CRC fails before it is declared corrupt (transit corruption heals).
CRC_REREADS = 3
#: Images of one request the reassembly window budgets for, on top of the shuffle buffer.
WINDOW_SLACK_IMAGES = 256


@dataclass
class Batch:
    """One batch: ``images`` B×1×H×W float in [0, 1], ``members`` B (archive ids), ids, labels B."""

    images: torch.Tensor
    members: torch.Tensor
    image_ids: list[str]
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])


def pipeline_budget(cfg: DataConfig) -> dict[str, int]:
    """Split ``cfg.memory_budget_mb`` between the pipeline's buffers (bytes).

    ``in_flight``: requests fetched ahead plus the one being decoded (+1 arriving);
    ``window``: decoded images waiting for their turn (shuffle buffer + slack); ``cache``: the rest.

    Raises:
        ConfigError: the budget does not even cover the in-flight requests and the window.
    """
    from imgae_dx.config import ConfigError

    total = int(cfg.memory_budget_mb * MB)
    in_flight = int((cfg.requests_in_flight + 2) * cfg.max_request_mb * MB)
    window = (cfg.shuffle_buffer + WINDOW_SLACK_IMAGES) * cfg.image_size * cfg.image_size
    cache = total - in_flight - window
    if cache < 0:
        raise ConfigError(
            f"data.memory_budget_mb={cfg.memory_budget_mb:g} is below what the pipeline needs: "
            f"{in_flight / MB:.0f} MB for data.requests_in_flight={cfg.requests_in_flight} × "
            f"data.max_request_mb={cfg.max_request_mb:g} (+2) and {window / MB:.1f} MB for the "
            f"shuffle window; raise the budget or lower those settings"
        )
    return {"total": total, "in_flight": in_flight, "window": window, "cache": cache}


def make_cache(cfg: DataConfig, cache_dir: str | Path | None = None, *, archive: Any = None,
               rank: int = 0) -> ImageStore | None:
    """The image cache the configuration asks for (``None`` when ``cache: off``).

    ``memory`` / ``disk``: an :class:`ImageCache` whose RAM budget is what :func:`pipeline_budget`
    leaves for it; its disk shard goes to ``cfg.cache_dir``, else ``cache_dir`` (typically
    ``RUN_DIR/cache``), else a temporary folder.

    ``persistent``: the :class:`~imgae_dx.data.persistent_cache.PersistentImageCache` of
    ``archive``'s images at ``cfg.image_size``, in ``cfg.cache_dir``, else ``cache_dir``, else
    ``INDEX_CACHE_DIR/images``; bounded by ``cfg.cache_max_gb``; its write buffer within the same
    RAM budget. Every stage, process and rank may build its own: they share the folder. Only
    ``rank`` 0 logs its notices.

    Raises:
        ConfigError: ``persistent`` without ``archive`` (the cache is keyed by the archive): a
            caller that does not pass it cannot offer that mode.
    """
    from imgae_dx.config import ConfigError

    if cfg.cache == "off":
        return None
    budget = pipeline_budget(cfg)["cache"]
    folder = cfg.cache_dir or cache_dir
    if cfg.cache == "persistent":
        from imgae_dx.data.persistent_cache import PersistentImageCache

        if archive is None:
            raise ConfigError("data.cache=persistent is not available here: make_cache got no "
                              "archive to key the cache by; set data.cache to memory or disk")
        root = Path(folder) if folder else Path(cfg.index_cache_dir).expanduser() / "images"
        return PersistentImageCache.for_archive(root, archive, cfg.image_size, resize=cfg.resize,
                                                max_gb=cfg.cache_max_gb, ram_bytes=budget, quiet=rank != 0)
    return ImageCache(cfg.image_size, budget, cfg.cache, folder)


# ------------------------------------------------------------------------------ dataset
class StreamingDataset(IterableDataset):
    """One stage's split of a dataset streamed from an archive (see the module doc).

    Args:
        archive: an opened :class:`~imgae_dx.streaming.sources.Archive` (``reader``, ``index``,
            ``identity``).
        index: the :class:`~imgae_dx.data.datasets.base.DatasetIndex` of that archive (NIH,
            ZhangLab, folder, …).
        stage: a stage of the index (``images_NNN``, ``part_NNN``).
        split: ``train`` | ``val`` | ``test``.
        cfg: the ``data`` section of the configuration.
        seed: run seed (fixes the split's val slice and every order).
        batch_size: batch size of :meth:`batches` (and the unit of the per-rank truncation).
        rank, world_size: distributed position; requests are dealt round-robin over ranks.
        cache: preprocessed-image cache (see :func:`make_cache`; one cache may serve every
            dataset of a run), or ``None``. Members it holds are read from it and never fetched.
        memory: the run's memory manager. The dataset registers its in-flight requests and
            reassembly window under its stage, and the cache under the stage that iterates last,
            so ``memory.cleanup_stage(stage)`` at the end of a stage frees all of them.
        drop_last: truncate every rank to a multiple of ``batch_size`` (DDP needs equal counts).
        members: explicit member ids instead of ``index.split(...)`` (benchmarks, custom subsets).

    Samples are dicts ``{"image": FloatTensor 1×H×W in [0, 1], "member": int, "image_id": str,
    "label": int}``; :meth:`batches` yields :class:`Batch` objects.
    """

    def __init__(
        self,
        archive: Any,
        index: DatasetIndex,
        stage: str,
        split: str,
        cfg: DataConfig,
        *,
        seed: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        cache: ImageStore | None = None,
        memory: MemoryManager | None = None,
        drop_last: bool = True,
        members: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        super().__init__()
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..world_size-1 (world_size={world_size})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if split not in ("train", "val", "test"):
            raise UserError(f"unknown split {split!r}; allowed: train, val, test")
        if cache is not None and cache.image_size != cfg.image_size:
            raise ValueError(
                f"the cache holds {cache.image_size}px images but data.image_size is {cfg.image_size}"
            )
        self.archive = archive
        self.index = index
        self.stage = stage
        self.split = split
        self.cfg = cfg
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.cache = cache if (cache is None or cache.mode != "off") else None
        self.memory = memory
        self.drop_last = bool(drop_last)
        self.image_size = int(cfg.image_size)
        limit_heap_fragmentation()
        if members is None:
            members = index.split(stage, split, view=cfg.view, val_fraction=cfg.val_fraction, seed=seed)
        self.members = np.unique(np.asarray(members, dtype=np.int64))
        self.epoch = 0
        self._position = 0
        self._resume_pending = False
        self._last_good: int | None = None
        self._known_bad: set[int] = set()
        self._requests_cache: dict[int, list[RangeRequest]] = {}
        self._shares_cache: dict[tuple[int, int], list[list[tuple[list[RangeRequest], int]]]] = {}
        self._lock = threading.Lock()
        self._active: _FetchDecodePipeline | None = None
        self._stats = {
            "images": 0, "skipped": 0, "bytes_fetched": 0, "requests": 0, "cache_hits": 0,
            "cache_misses": 0, "crc_rereads": 0, "decode_s": 0.0,
        }
        self._first_batch_s: float | None = None
        self._busy_s = 0.0
        self._tag = f"{stage}/{split}/rank{rank}#{id(self):x}"
        if memory is not None:
            memory.register(f"{self._tag}:in_flight", self._in_flight_bytes, stage=stage, free=self.release)
            memory.register(f"{self._tag}:window", self._window_bytes, stage=stage)
            self._register_cache()

    def _register_cache(self) -> None:
        """(Re-)register the cache under this dataset's stage: the stage iterating owns it."""
        cache, memory = self.cache, self.memory
        if cache is not None and memory is not None:
            memory.register(f"cache#{id(cache):x}", lambda: cache.nbytes, stage=self.stage, free=cache.release)

    # --------------------------------------------------------------------------- plan
    @property
    def fingerprint(self) -> str:
        """Hash of everything that fixes the order (not decode threads, in-flight depth or size)."""
        h = hashlib.sha256()
        h.update(self.members.tobytes())
        meta = {
            "source": getattr(self.archive, "identity", ""), "stage": self.stage, "split": self.split,
            "seed": self.seed, "world": self.world_size, "batch": self.batch_size,
            "drop_last": self.drop_last, "max_request_mb": self.cfg.max_request_mb,
            "gap_bridge_kb": self.cfg.gap_bridge_kb, "shuffle_buffer": self.cfg.shuffle_buffer,
        }
        h.update(json.dumps(meta, sort_keys=True).encode())
        return h.hexdigest()[:16]

    def _canonical_requests(self, workers: int) -> list[RangeRequest]:
        """Requests over the split's members in offset order (small enough to balance shares)."""
        if workers not in self._requests_cache:
            self._requests_cache[workers] = balanced_requests(
                self.archive.index, self.members, int(self.cfg.max_request_mb * MB),
                int(self.cfg.gap_bridge_kb * 1024), self.world_size * workers)
        return self._requests_cache[workers]

    def _counts(self, epoch: int, workers: int) -> list[list[tuple[list[RangeRequest], int]]]:
        """For every rank and worker: (its requests in order, how many of their images it yields)."""
        key = (epoch, workers)
        if key not in self._shares_cache:
            if len(self._shares_cache) > 4:
                self._shares_cache.clear()
            self._shares_cache[key] = deal_shares(
                self._canonical_requests(workers), seed=self.seed, stage=self.stage, split=self.split,
                epoch=epoch, world_size=self.world_size, workers=workers, batch_size=self.batch_size,
                drop_last=self.drop_last)
        return self._shares_cache[key]

    def _share(self, epoch: int, worker: int = 0, workers: int = 1) -> Share:
        """This rank's (and worker's) requests and output order for ``epoch``."""
        reqs, count = self._counts(epoch, workers)[self.rank][worker]
        return share_order(self.archive.index, reqs, count, seed=self.seed, stage=self.stage,
                           split=self.split, epoch=epoch, rank=self.rank, world_size=self.world_size,
                           worker=worker, shuffle_buffer=self.cfg.shuffle_buffer)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """Member ids this rank yields in ``epoch`` (default: the current one), computed without I/O."""
        return self._share(self.epoch if epoch is None else epoch).order.copy()

    def __len__(self) -> int:
        """Samples this rank yields per epoch (in-process iteration)."""
        return self._counts(self.epoch, 1)[self.rank][0][1]

    def num_batches(self) -> int:
        """Batches this rank yields this epoch; equal on every rank."""
        n = len(self)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    # --------------------------------------------------------------------------- state
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (a new epoch starts at position 0; the current one keeps its position)."""
        if int(epoch) != self.epoch:
            self.epoch = int(epoch)
            self._position = 0
            self._resume_pending = False

    @property
    def position(self) -> int:
        """Samples of the current epoch already consumed."""
        return self._position

    def state_dict(self) -> dict[str, Any]:
        """``{stage, split, epoch, position, seed, fingerprint, last_good}`` for a checkpoint."""
        return {
            "stage": self.stage, "split": self.split, "epoch": self.epoch, "position": self._position,
            "seed": self.seed, "fingerprint": self.fingerprint, "last_good": self._last_good,
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore a position; the next iteration continues exactly where the saved one stopped.

        Raises:
            CheckpointError: the state belongs to another stage/split/seed or another plan
                (different members, world size, batch size, request or shuffle settings).
        """
        want = {"stage": self.stage, "split": self.split, "seed": self.seed, "fingerprint": self.fingerprint}
        diff = [f"{k}: saved {sd.get(k)!r}, now {v!r}" for k, v in want.items() if sd.get(k) != v]
        if diff:
            raise CheckpointError(
                "cannot resume the data stream: the saved position belongs to a different plan ("
                + "; ".join(diff)
                + "). Resume with the same source, stage, seed, world size, batch size and "
                "data.max_request_mb / gap_bridge_kb / shuffle_buffer, or start the stage afresh."
            )
        position = int(sd["position"])
        if position < 0:
            raise CheckpointError(f"invalid saved data position {position}")
        self.epoch = int(sd["epoch"])
        self._position = position
        self._last_good = None if sd.get("last_good") is None else int(sd["last_good"])
        self._resume_pending = True

    # --------------------------------------------------------------------------- stats
    def stats(self) -> dict[str, Any]:
        """Counters: images, skipped, bytes_fetched, requests, cache hits/misses, speed, timing."""
        with self._lock:
            out: dict[str, Any] = dict(self._stats)
        out["first_batch_s"] = self._first_batch_s
        out["busy_s"] = round(self._busy_s, 4)
        out["images_per_s"] = out["images"] / self._busy_s if self._busy_s > 0 else 0.0
        return out

    def _add(self, **kw: float) -> None:
        with self._lock:
            for k, v in kw.items():
                self._stats[k] += v

    def _in_flight_bytes(self) -> int:
        f = self._active
        return 0 if f is None else f.raw_bytes()

    def _window_bytes(self) -> int:
        f = self._active
        return 0 if f is None else f.held_images() * self.image_size * self.image_size

    def release(self) -> None:
        """Stop an active iteration's prefetch and drop its buffers (``cleanup_stage`` calls this)."""
        f = self._active
        if f is not None:
            f.close()
        self._active = None
        self._requests_cache.clear()
        self._shares_cache.clear()

    def close(self) -> None:
        """Release buffers and unregister from the memory manager."""
        self.release()
        if self.memory is not None:
            self.memory.unregister(f"{self._tag}:in_flight")
            self.memory.unregister(f"{self._tag}:window")

    # --------------------------------------------------------------------------- iteration
    def _iter_uint8(self) -> Iterator[tuple[int, np.ndarray]]:
        """(member, uint8 H×W) in this rank's order, from the saved position on."""
        info = get_worker_info()
        if info is not None and info.num_workers > 1:
            worker, workers, start = info.id, info.num_workers, 0
            tracked = False
        else:
            worker, workers, tracked = 0, 1, True
            start = self._position
            if start >= len(self) and not self._resume_pending:
                start = 0  # a finished epoch iterated again replays it
            self._resume_pending = False
        share = self._share(self.epoch, worker, workers)
        order = share.order
        total = len(order)
        if tracked:
            self._position = min(start, total)
        if start >= total:
            return
        need = set(order[start:].tolist())
        cache = self.cache
        refresh = getattr(cache, "refresh", None)
        if refresh is not None:
            refresh()  # images other processes or ranks published meanwhile
        fetch_reqs: list[RangeRequest] = []
        index = self.archive.index
        for req in share.requests:
            ms = [m for m in req.members.tolist()
                  if m in need and m not in self._known_bad and (cache is None or m not in cache)]
            if ms:
                fetch_reqs.append(sub_request(index, req, ms))
        self._register_cache()
        fetch = _FetchDecodePipeline(self, fetch_reqs)
        self._active = fetch
        t0 = time.perf_counter()
        try:
            for p in range(start, total):
                m = int(order[p])
                img = fetch.take(m)
                if img is None:
                    self._add(skipped=1)
                    m, img = self._substitute(fetch, order, p)
                else:
                    self._last_good = m
                if tracked:
                    self._position = p + 1
                self._add(images=1)
                self._busy_s += time.perf_counter() - t0
                yield m, img
                t0 = time.perf_counter()
        finally:
            fetch.close()
            if self._active is fetch:
                self._active = None
            flush = getattr(cache, "flush", None)
            if flush is not None:
                flush()  # a persistent cache publishes what this pass decoded

    def _substitute(self, fetch: _FetchDecodePipeline, order: np.ndarray, p: int) -> tuple[int, np.ndarray]:
        """Deterministic stand-in for the undecodable member at ``order[p]``."""
        for q in range(p + 1, len(order)):
            mq = int(order[q])
            img = fetch.peek(mq)
            if img is not None:
                return mq, img
        if self._last_good is not None:
            img = fetch.peek(self._last_good)
            if img is not None:
                return self._last_good, img
        raise ArchiveError(
            f"no decodable image left in {self.stage}/{self.split} for rank {self.rank} "
            f"({len(self._known_bad)} members failed to decode); the archive looks corrupt"
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return samples(self._iter_uint8(), self.index)

    def batches(self) -> Iterator[Batch]:
        """Batches of ``batch_size`` (the last one smaller only without ``drop_last``)."""
        t_start = time.perf_counter()
        for b in batches_of(self._iter_uint8(), self.index, self.batch_size, self.image_size, self.drop_last):
            if self._first_batch_s is None:
                self._first_batch_s = round(time.perf_counter() - t_start, 4)
            yield b


def samples(pairs: Iterator[tuple[int, np.ndarray]], index: DatasetIndex) -> Iterator[dict[str, Any]]:
    """``(member, uint8 H×W)`` pairs → sample dicts (``image``: float 1×H×W in [0, 1])."""
    for m, img in pairs:
        r = index.record(m)
        t = torch.from_numpy(to_unit(img)).unsqueeze(0)
        yield {"image": t, "member": m, "image_id": str(r.image), "label": int(r.label)}


def batches_of(pairs: Iterator[tuple[int, np.ndarray]], index: DatasetIndex, batch_size: int,
               image_size: int, drop_last: bool) -> Iterator[Batch]:
    """``(member, uint8 H×W)`` pairs → :class:`Batch` es of ``batch_size`` (the last one smaller
    only without ``drop_last``); ids and labels from ``index`` (microseconds per image)."""
    bs = batch_size
    buf = np.empty((bs, 1, image_size, image_size), np.uint8)
    members: list[int] = []
    for m, img in pairs:
        buf[len(members), 0] = img
        members.append(m)
        if len(members) == bs:
            yield _batch(buf, members, index)
            buf = np.empty((bs, 1, image_size, image_size), np.uint8)
            members = []
    if members and not drop_last:
        yield _batch(buf[:len(members)], members, index)


def _batch(buf: np.ndarray, members: list[int], index: DatasetIndex) -> Batch:
    ids = np.asarray(members, dtype=np.int64)
    return Batch(
        images=torch.from_numpy(to_unit(buf)),
        members=torch.from_numpy(ids),
        image_ids=index.image_ids(ids),
        labels=torch.from_numpy(index.labels(ids)),
    )


# ------------------------------------------------------------------------------ fetch + decode
class _FetchDecodePipeline:
    """One iteration's fetching and decoding: requests in input order, images handed out by id.

    The consumer (the dataset's generator) asks for members in output order. Requests are pumped
    from the prefetcher in input order and all their members submitted to the decode pool; decode
    threads put results in ``_done`` and notify. While the consumer waits for one member it keeps
    the pool fed (``_ahead`` undecoded images at least), so a member that happens to decode last
    in its request never idles the other threads.
    """

    def __init__(self, ds: StreamingDataset, requests: list[RangeRequest]) -> None:
        self.ds = ds
        self.index = ds.archive.index
        self.reader = ds.archive.reader
        self.prefetcher: Prefetcher | None = (
            Prefetcher(self.reader, requests, ds.cfg.requests_in_flight) if requests else None
        )
        self._it: Iterator[tuple[RangeRequest, bytes]] | None = (
            iter(self.prefetcher) if self.prefetcher is not None else None
        )
        self.workers = ds.cfg.decode_workers
        self.pool: ThreadPoolExecutor | None = None
        self.planned: set[int] = {int(m) for r in requests for m in r.members.tolist()}
        self.submitted: set[int] = set()  # decoding or decoded, not yet handed to ``ready``
        self.ready: dict[int, np.ndarray | None] = {}  # resolved, not yet emitted (None = bad)
        self._done: dict[int, np.ndarray | BaseException] = {}
        self._cond = threading.Condition()
        self._undone = 0
        self._raw = 0  # bytes of fetched requests still referenced by pending decodes
        self._ahead = 2 * self.workers + 2
        self._window = ds.cfg.shuffle_buffer + WINDOW_SLACK_IMAGES
        self._closed = False

    # ----------------------------------------------------------------- accounting
    def raw_bytes(self) -> int:
        pf = self.prefetcher
        return self._raw + (pf.buffered_bytes() if pf is not None else 0)

    def held_images(self) -> int:
        return len(self.submitted) + len(self.ready)

    # ----------------------------------------------------------------- decode (threads)
    def _decode(self, member: int, data: bytes, start: int, req_left: list[int], nbytes: int) -> None:
        t = time.perf_counter()
        result: np.ndarray | BaseException
        try:
            for attempt in range(CRC_REREADS + 1):
                try:
                    raw = self.index.extract(member, data, start)
                    break
                except ArchiveError:
                    if attempt == CRC_REREADS:
                        raise
                    s, e = self.index.span(member)
                    data = self.reader.read(s, e - s)  # a fresh copy heals corruption in transit
                    start = s
                    self.ds._add(crc_rereads=1, bytes_fetched=e - s, requests=1)
            del data
            cfg = self.ds.cfg
            result = decode_image(raw, self.ds.image_size, resize=cfg.resize, png_decoder=cfg.png_decoder)
        except BaseException as e:  # handed to the consumer: ArchiveError = skip, others raise
            result = e
        self.ds._add(decode_s=time.perf_counter() - t)
        with self._cond:
            self._done[member] = result
            self._undone -= 1
            req_left[0] -= 1
            if req_left[0] == 0:
                self._raw -= nbytes
            self._cond.notify_all()

    def _submit(self, members: list[int], data: bytes, start: int) -> None:
        if self.pool is None:
            self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="imgae-decode")
        left = [len(members)]
        with self._cond:
            self._undone += len(members)
            self._raw += len(data)
        for m in members:
            self.submitted.add(m)
            self.pool.submit(self._decode, m, data, start, left, len(data))

    def _pump(self) -> bool:
        """Fetch the next request and submit its members for decoding; False when none is left."""
        if self._it is None or self._closed:
            return False
        try:
            req, data = next(self._it)
        except StopIteration:
            self._it = None
            return False
        self.ds._add(bytes_fetched=len(data), requests=1)
        self._submit(req.members.tolist(), data, req.start)
        return True

    def _hungry(self) -> bool:
        return self._it is not None and self._undone < self._ahead and self.held_images() < self._window

    def _top_up(self) -> None:
        while self._hungry() and self._pump():
            pass

    # ----------------------------------------------------------------- consumer side
    def _wait(self, m: int) -> np.ndarray | BaseException:
        """The decode result of submitted member ``m``, feeding the pool while waiting."""
        while True:
            with self._cond:
                if m in self._done:
                    self.submitted.discard(m)
                    return self._done.pop(m)
                if not self._hungry():
                    self._cond.wait(1.0)
                    continue
            self._pump()

    def _resolve(self, m: int) -> np.ndarray | None:
        """Image of member ``m`` (None: undecodable), from cache, decode results or a lone read."""
        if m in self.ready:
            return self.ready[m]
        ds = self.ds
        if m in ds._known_bad:
            return None
        if m not in self.submitted and ds.cache is not None:
            img = ds.cache.get(m)
            if img is not None:
                ds._add(cache_hits=1)
                self.ready[m] = img
                return img
        while m in self.planned and m not in self.submitted and self._pump():
            pass
        if m not in self.submitted:  # not planned: cached when planned but no longer readable
            # (cleared, or a corrupt persistent entry), or a stand-in from before a resume
            s, e = self.index.span(m)
            data = self.reader.read(s, e - s)
            ds._add(bytes_fetched=len(data), requests=1)
            self._submit([m], data, s)
        res = self._wait(m)
        img: np.ndarray | None
        if isinstance(res, ArchiveError):  # DecodeError included: counted as skipped by the dataset
            img = None
            ds._known_bad.add(m)
        elif isinstance(res, BaseException):
            raise res
        else:
            img = res
        ds._add(cache_misses=1)
        if img is not None and ds.cache is not None:
            ds.cache.put(m, img)
        self.ready[m] = img
        self._top_up()
        return img

    def take(self, m: int) -> np.ndarray | None:
        """Image of ``m`` for emission (removed from the window)."""
        img = self._resolve(m)
        self.ready.pop(m, None)
        return img

    def peek(self, m: int) -> np.ndarray | None:
        """Image of ``m`` kept in the window (a stand-in that is also emitted later)."""
        return self._resolve(m)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.prefetcher is not None:
            self.prefetcher.close()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        self.submitted.clear()
        self.ready.clear()
        self._done.clear()
        self._it = None
        self._raw = 0


#: The seed's public name (the Python API of docs/design.md): the same class.
StreamingNIHDataset = StreamingDataset
