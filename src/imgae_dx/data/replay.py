"""``ReplayDataset``: several stages' images, read back from the decode-once cache, for replay.

Progressive training sees ``images_001``, then ``images_002``, …; replaying earlier stages while
training a later one needs their images again without streaming them again. This dataset
iterates the union of one split over stages ``1..K`` from a
:class:`~imgae_dx.data.persistent_cache.PersistentImageCache`:

* **Order**: per epoch a seeded permutation of the members (a pure function of ``(seed, stages,
  split, epoch)``), dealt round-robin to ranks (``rank, rank + world, …``) and truncated to the
  same count on every rank (a multiple of ``batch_size`` with ``drop_last``): every rank yields
  the same number of batches. Nothing in the order depends on what is cached, on timing or on
  threads.
* **Reading**: members are taken in windows of :data:`WINDOW_IMAGES`; each window's members that
  the cache does not hold (never streamed, evicted, corrupt, a full cache, or another node's
  share with node-local cache folders) are first streamed from the archive together, coalesced
  into range requests, through a :class:`~imgae_dx.data.dataset.StreamingDataset` over just
  those members (and cached on the way when the cache has room). So the images are the same
  whatever the cache holds; only the bytes fetched differ. An undecodable member is replaced, as
  in the stream, by the next image of this rank's window (or, at the window's end, the previous
  one) and counted as skipped.
* **Resume**: ``state_dict()`` = ``{stages, split, epoch, position, seed, fingerprint}``;
  ``load_state_dict`` continues exactly at ``position`` of the same order.
* **Memory**: one window of uint8 images (``WINDOW_IMAGES × S²``; 16 MB at 128²) plus, while a
  window is filled from the archive, the streaming dataset's own bounded buffers.

Iterate it in the training process (as the trainer does with the stream); it does not split
itself over DataLoader worker processes.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from imgae_dx.data.dataset import Batch, StreamingDataset, batches_of, samples
from imgae_dx.data.planning import seeded_rng
from imgae_dx.errors import ArchiveError, CheckpointError, UserError

if TYPE_CHECKING:
    from imgae_dx.config import DataConfig
    from imgae_dx.data.cache import ImageStore
    from imgae_dx.data.datasets.base import DatasetIndex
    from imgae_dx.data.memory import MemoryManager

#: Members read (and, when missing from the cache, streamed) together.
WINDOW_IMAGES = 1024


class ReplayDataset(IterableDataset):
    """One split of several stages, from the decode-once cache (see the module doc).

    Args:
        archive: the opened archive the cache belongs to (missing images are streamed from it).
        index: its :class:`~imgae_dx.data.datasets.base.DatasetIndex`.
        stages: the stages to replay, e.g. ``["images_001", "images_002"]``.
        split: ``train`` | ``val`` | ``test``.
        cfg: the ``data`` section (view, val_fraction, streaming settings for missing images).
        cache: the image cache (normally persistent; any :class:`ImageStore` works).
        seed: run seed (fixes the split and every order).
        batch_size: batch size of :meth:`batches` and unit of the per-rank truncation.
        rank, world_size: distributed position.
        drop_last: truncate every rank to a multiple of ``batch_size``.
        memory: the run's memory manager, handed to the streams that fill missing images.
        members: explicit member ids instead of the split of ``stages``.
    """

    def __init__(self, archive: Any, index: DatasetIndex, stages: Sequence[str], split: str,
                 cfg: DataConfig, *, cache: ImageStore, seed: int, batch_size: int, rank: int = 0,
                 world_size: int = 1, drop_last: bool = True, memory: MemoryManager | None = None,
                 members: Sequence[int] | np.ndarray | None = None) -> None:
        super().__init__()
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..world_size-1 (world_size={world_size})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if split not in ("train", "val", "test"):
            raise UserError(f"unknown split {split!r}; allowed: train, val, test")
        if cache.image_size != cfg.image_size:
            raise ValueError(f"the cache holds {cache.image_size}px images but data.image_size is "
                             f"{cfg.image_size}")
        self.stages = list(index.resolve_stages(list(stages)))
        if not self.stages:
            raise UserError("replay needs at least one stage")
        self.archive = archive
        self.index = index
        self.split = split
        self.cfg = cfg
        self.cache = cache
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.drop_last = bool(drop_last)
        self.memory = memory
        self.image_size = int(cfg.image_size)
        if members is None:
            members = index.split(self.stages, split, view=cfg.view, val_fraction=cfg.val_fraction,
                                  seed=seed)
        self.members = np.unique(np.asarray(members, dtype=np.int64))
        self.epoch = 0
        self._position = 0
        self._resume_pending = False
        self._stats = {"images": 0, "skipped": 0, "cache_hits": 0, "streamed": 0,
                       "bytes_fetched": 0, "requests": 0}

    # --------------------------------------------------------------------------- plan
    @property
    def fingerprint(self) -> str:
        """Hash of everything that fixes the order."""
        h = hashlib.sha256(self.members.tobytes())
        meta = {"source": getattr(self.archive, "identity", ""), "stages": self.stages,
                "split": self.split, "seed": self.seed, "world": self.world_size,
                "batch": self.batch_size, "drop_last": self.drop_last, "kind": "replay"}
        h.update(json.dumps(meta, sort_keys=True).encode())
        return h.hexdigest()[:16]

    def __len__(self) -> int:
        """Samples every rank yields per epoch."""
        n = len(self.members) // self.world_size
        return n - n % self.batch_size if self.drop_last else n

    def num_batches(self) -> int:
        """Batches every rank yields per epoch (equal on every rank)."""
        n = len(self)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """Member ids this rank yields in ``epoch`` (default: the current one), without I/O."""
        e = self.epoch if epoch is None else int(epoch)
        perm = seeded_rng(self.seed, "replay", *self.stages, self.split, e).permutation(len(self.members))
        return self.members[perm[self.rank::self.world_size][:len(self)]]

    # --------------------------------------------------------------------------- state
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (a new epoch starts at position 0)."""
        if int(epoch) != self.epoch:
            self.epoch = int(epoch)
            self._position = 0
            self._resume_pending = False

    @property
    def position(self) -> int:
        """Samples of the current epoch already consumed."""
        return self._position

    def state_dict(self) -> dict[str, Any]:
        """``{stages, split, epoch, position, seed, fingerprint}`` for a checkpoint."""
        return {"stages": list(self.stages), "split": self.split, "epoch": self.epoch,
                "position": self._position, "seed": self.seed, "fingerprint": self.fingerprint}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore a position saved by :meth:`state_dict`.

        Raises:
            CheckpointError: the state belongs to other stages, split, seed or plan.
        """
        want = {"stages": self.stages, "split": self.split, "seed": self.seed,
                "fingerprint": self.fingerprint}
        diff = [f"{k}: saved {sd.get(k)!r}, now {v!r}" for k, v in want.items() if sd.get(k) != v]
        if diff:
            raise CheckpointError("cannot resume the replay stream: the saved position belongs "
                                  "to a different plan (" + "; ".join(diff) + ")")
        position = int(sd["position"])
        if position < 0:
            raise CheckpointError(f"invalid saved replay position {position}")
        self.epoch = int(sd["epoch"])
        self._position = position
        self._resume_pending = True

    def stats(self) -> dict[str, int]:
        """Counters: images, skipped, cache_hits, streamed (images fetched), bytes_fetched, requests."""
        return dict(self._stats)

    # --------------------------------------------------------------------------- iteration
    def _fill(self, missing: list[int]) -> tuple[dict[int, np.ndarray], set[int]]:
        """Stream ``missing`` members (coalesced); returns their images and the undecodable ones."""
        stream = StreamingDataset(
            self.archive, self.index, self.stages[0], self.split, self.cfg, seed=self.seed,
            batch_size=1, cache=self.cache, memory=self.memory, drop_last=False, members=missing)
        got: dict[int, np.ndarray] = {}
        try:
            for m, img in stream._iter_uint8():
                got[m] = img
        except ArchiveError:  # the stream found no decodable member at all: all are bad here
            pass
        finally:
            st = stream.stats()
            stream.close()
        self._stats["streamed"] += len(got)
        self._stats["bytes_fetched"] += int(st["bytes_fetched"])
        self._stats["requests"] += int(st["requests"])
        return got, set(missing) - set(got)

    def _iter_uint8(self) -> Iterator[tuple[int, np.ndarray]]:
        """(member, uint8 H×W) in this rank's order, from the saved position on."""
        info = get_worker_info()
        if info is not None and info.num_workers > 1:
            raise RuntimeError("ReplayDataset is iterated in the training process, not in "
                               "DataLoader worker processes (use num_workers=0)")
        start = self._position
        if start >= len(self) and not self._resume_pending:
            start = 0  # a finished epoch iterated again replays it
        self._resume_pending = False
        order = self.order()
        self._position = min(start, len(order))
        refresh = getattr(self.cache, "refresh", None)
        if refresh is not None:
            refresh()
        last: tuple[int, np.ndarray] | None = None
        for lo in range(start, len(order), WINDOW_IMAGES):
            window = order[lo:lo + WINDOW_IMAGES].tolist()
            images: dict[int, np.ndarray] = {}
            for m in window:
                img = self.cache.get(m)
                if img is not None:
                    images[m] = img
            self._stats["cache_hits"] += len(images)
            bad: set[int] = set()
            missing = [m for m in window if m not in images]
            if missing:
                got, bad = self._fill(missing)
                images.update(got)
            for i, m in enumerate(window):
                img = images.get(m)
                if img is None:
                    self._stats["skipped"] += 1
                    sub = next(((q, images[q]) for q in window[i + 1:] if q in images), last)
                    if sub is None:
                        raise ArchiveError(
                            f"no decodable image to replay in {'+'.join(self.stages)}/{self.split} "
                            f"for rank {self.rank} ({len(bad)} members failed to decode)")
                    m, img = sub
                last = (m, img)
                self._position = lo + i + 1
                self._stats["images"] += 1
                yield m, img

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return samples(self._iter_uint8(), self.index)

    def batches(self) -> Iterator[Batch]:
        """Batches of ``batch_size`` (the last one smaller only without ``drop_last``)."""
        return batches_of(self._iter_uint8(), self.index, self.batch_size, self.image_size, self.drop_last)


__all__ = ["WINDOW_IMAGES", "ReplayDataset"]
