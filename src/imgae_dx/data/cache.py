"""``ImageCache``: preprocessed uint8 images keyed by archive member id.

Images are decoded once; epochs after the first read them from here at memory speed. Storage:

* ``memory``: RAM blocks (allocated in chunks) up to ``budget_bytes``; further images spill to a
  disk shard (``np.memmap`` in ``disk_dir``, grown in chunks) so the RAM side never exceeds the
  budget;
* ``disk``: every image goes to the disk shard (RAM holds only the page cache the OS manages);
* ``off``: nothing is stored, every ``get`` misses.

This cache lives as long as its process (one stage in the trainer). The decode-once cache that
outlives stages and processes is :class:`~imgae_dx.data.persistent_cache.PersistentImageCache`;
both satisfy :class:`ImageStore`, which is what the dataset uses.

All images have the same shape (``image_size × image_size``, uint8), so a slot is one row of a
block. ``get`` returns a read-only view (RAM) or a copy (disk); reads are a dict lookup plus an
index, well above 10⁴ images/s. Thread-safe.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

CacheMode = Literal["memory", "disk", "off"]
_MODES = ("memory", "disk", "off")


class ImageStore(Protocol):
    """What the dataset needs of an image cache (``ImageCache``, ``PersistentImageCache``)."""

    mode: str
    image_size: int

    def get(self, member: int) -> np.ndarray | None:
        """The uint8 ``image_size × image_size`` image of ``member``, or ``None``."""

    def put(self, member: int, image: np.ndarray) -> bool:
        """Store ``image``; ``False`` when it was not stored (off, full)."""

    def __contains__(self, member: object) -> bool: ...

    @property
    def nbytes(self) -> int:
        """RAM held (counted against the pipeline's memory budget)."""

    def release(self) -> None:
        """Free the RAM held (the memory manager calls this when the stage ends)."""


class ImageCache:
    """uint8 images (``image_size × image_size``) keyed by member id; RAM up to a budget, then disk.

    Args:
        image_size: side of every stored image in pixels.
        budget_bytes: most RAM the cache's blocks may take (``memory`` mode).
        mode: ``memory`` | ``disk`` | ``off``.
        disk_dir: folder of the disk shard; ``None`` = a private temporary folder (removed by
            :meth:`close`).
        chunk_images: images per RAM block / per growth step of the disk shard.
    """

    def __init__(
        self,
        image_size: int,
        budget_bytes: int,
        mode: CacheMode = "memory",
        disk_dir: str | os.PathLike[str] | None = None,
        *,
        chunk_images: int = 1024,
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"cache mode must be one of {', '.join(_MODES)}, got {mode!r}")
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0, got {budget_bytes}")
        self.image_size = int(image_size)
        self.mode: CacheMode = mode
        self.budget_bytes = int(budget_bytes)
        self.item_bytes = self.image_size * self.image_size
        self.chunk_images = max(1, int(chunk_images))
        self._disk_dir_arg = Path(disk_dir) if disk_dir is not None else None
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self._reset_storage()

    # ------------------------------------------------------------------ storage
    def _reset_storage(self) -> None:
        self._where: dict[int, int] = {}  # member -> slot (>= 0: RAM, < 0: disk slot -1-s)
        self._blocks: list[np.ndarray] = []
        self._ram_used = 0
        self._ram_capacity_images = (
            self.budget_bytes // self.item_bytes if self.mode == "memory" else 0
        )
        self._disk: np.memmap | None = None
        self._disk_used = 0
        self._disk_path: Path | None = None
        self._tmpdir: str | None = None

    def _ram_slot(self) -> int | None:
        if self._ram_used >= self._ram_capacity_images:
            return None
        slot = self._ram_used
        block, row = divmod(slot, self.chunk_images)
        if block == len(self._blocks):
            rows = min(self.chunk_images, self._ram_capacity_images - block * self.chunk_images)
            self._blocks.append(np.empty((rows, self.image_size, self.image_size), np.uint8))
        self._ram_used += 1
        return slot

    def _disk_slot(self) -> int:
        if self._disk is None or self._disk_used >= self._disk.shape[0]:
            self._grow_disk()
        slot = self._disk_used
        self._disk_used += 1
        return slot

    def _grow_disk(self) -> None:
        if self._disk_path is None:
            base = self._disk_dir_arg
            if base is None:
                self._tmpdir = tempfile.mkdtemp(prefix="imgae_dx_cache_")
                base = Path(self._tmpdir)
            base.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix="shard_", suffix=".u8", dir=base)
            os.close(fd)
            self._disk_path = Path(name)
        old = 0 if self._disk is None else self._disk.shape[0]
        new = old + self.chunk_images
        if self._disk is not None:
            self._disk.flush()
            self._disk = None
        with open(self._disk_path, "r+b") as f:
            f.truncate(new * self.item_bytes)
        self._disk = np.memmap(
            self._disk_path, dtype=np.uint8, mode="r+", shape=(new, self.image_size, self.image_size)
        )

    # ------------------------------------------------------------------ API
    def put(self, member: int, image: np.ndarray) -> bool:
        """Store ``image`` (uint8 ``image_size × image_size``) under ``member``.

        Returns ``True`` when stored (or already present), ``False`` in ``off`` mode.
        """
        if self.mode == "off":
            return False
        if image.shape != (self.image_size, self.image_size) or image.dtype != np.uint8:
            raise ValueError(
                f"cache holds uint8 {self.image_size}×{self.image_size} images, "
                f"got {image.dtype} {image.shape}"
            )
        member = int(member)
        with self._lock:
            if member in self._where:
                return True
            slot = self._ram_slot()
            if slot is not None:
                block, row = divmod(slot, self.chunk_images)
                self._blocks[block][row] = image
                self._where[member] = slot
            else:
                dslot = self._disk_slot()
                assert self._disk is not None
                self._disk[dslot] = image
                self._where[member] = -1 - dslot
        return True

    def get(self, member: int) -> np.ndarray | None:
        """The stored image of ``member`` (read-only uint8 H×W) or ``None`` (counted as a miss)."""
        with self._lock:
            slot = self._where.get(int(member))
            if slot is None:
                self.misses += 1
                return None
            self.hits += 1
            if slot >= 0:
                block, row = divmod(slot, self.chunk_images)
                view = self._blocks[block][row]
                view.flags.writeable = False
                return view
            assert self._disk is not None
            return np.array(self._disk[-1 - slot])

    def __contains__(self, member: object) -> bool:
        with self._lock:
            return isinstance(member, (int, np.integer)) and int(member) in self._where

    def __len__(self) -> int:
        return len(self._where)

    @property
    def nbytes(self) -> int:
        """RAM taken by the cache's blocks (what counts against the memory budget)."""
        with self._lock:
            return sum(b.nbytes for b in self._blocks)

    @property
    def disk_nbytes(self) -> int:
        """Size of the disk shard (0 when none was needed)."""
        with self._lock:
            return 0 if self._disk is None else int(self._disk.nbytes)

    @property
    def disk_path(self) -> Path | None:
        """The shard file, once created."""
        return self._disk_path

    def stats(self) -> dict[str, int | str]:
        """Counters for logs: images, RAM / disk bytes, hits, misses, mode."""
        return {
            "mode": self.mode,
            "images": len(self._where),
            "ram_images": min(self._ram_used, len(self._where)),
            "disk_images": self._disk_used,
            "nbytes": self.nbytes,
            "disk_nbytes": self.disk_nbytes,
            "hits": self.hits,
            "misses": self.misses,
        }

    def clear(self) -> None:
        """Drop every image, free the RAM blocks and delete the disk shard (counters kept)."""
        with self._lock:
            self._drop_disk()
            self._reset_storage_keep_tmp()

    def _reset_storage_keep_tmp(self) -> None:
        tmp = self._tmpdir
        self._reset_storage()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    def _drop_disk(self) -> None:
        if self._disk is not None:
            self._disk = None
        if self._disk_path is not None:
            try:
                self._disk_path.unlink()
            except FileNotFoundError:
                pass

    def close(self) -> None:
        """Same as :meth:`clear` (the cache can still be used afterwards)."""
        self.clear()

    def release(self) -> None:
        """Same as :meth:`clear`: this cache's images live in RAM and its private shard only."""
        self.clear()

    def __del__(self) -> None:  # best effort: do not leave temporary shards behind
        try:
            if getattr(self, "_tmpdir", None) or getattr(self, "_disk_path", None):
                self._drop_disk()
                if self._tmpdir:
                    shutil.rmtree(self._tmpdir, ignore_errors=True)
        except Exception:
            pass
