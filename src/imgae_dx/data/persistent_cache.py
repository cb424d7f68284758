"""``PersistentImageCache``: decoded images on disk that outlive the stage and the process.

Over 500 lines on purpose: the file format, its validation, the atomic publish, the eviction
rule and the index are one contract with other processes; they change together.

Every image of the archive is decoded once per *key* — not once per stage, run or process: a
resumed run, a later stage that replays earlier ones, or another run on the same data reads the
cache instead of streaming and decoding again. ``cache_dir`` may be any folder, Google Drive on
Colab included (plain files, rename and fsync; no file locks, no writable mmap).

**Key.** A folder ``CACHE_DIR/<digest>/`` per :class:`CacheKey`: the archive's identity, version
(ETag, else Last-Modified, else mtime+size) and size, the image side and the preprocessing
(:func:`~imgae_dx.data.decode.decoder_version`: decoders and resize policy), and this file format. Inside, images are keyed by
archive member id *and* the member's CRC-32 from the archive index (when the source has real
CRCs), so an entry never answers for other bytes.

**Layout.** Immutable *segment* files ``seg-*.imgs``: a header (magic, format, image side,
count, the key's SHA-256, member ids, the members' source CRC-32s, each image's CRC-32, the
header's own CRC-32) and ``count`` images of ``S×S`` uint8. A process buffers what it decodes in
RAM (one segment, ≤ 16 MB by default) and publishes it as a segment when full, on :meth:`flush`
(the dataset flushes at the end of every pass; a trainer should flush before it checkpoints)
and on :meth:`release`/:meth:`close`.

**Several processes or ranks** share a folder safely: a segment is written to a temp file, fsynced
and renamed into place (atomic publish: readers see whole segments or none), names are unique per
writer, and nothing is ever modified in place. :meth:`refresh` picks up segments other processes
published. Two writers caching the same image both publish it; readers use either copy.

**Nothing read is trusted.** A segment whose header is corrupt, truncated, of another key
(foreign) or another format is deleted when scanned; every image's CRC-32 is checked on every
read, and a mismatch deletes its segment (its images that still match their CRC-32 are cached
again at once). Lost images are misses: they are decoded and cached again (rebuilt) the next
time they are streamed. Temp files of killed writers are swept after an hour.

**Bound and eviction rule** (``data.cache_max_gb``, all keys in ``CACHE_DIR`` together): before
a segment is published, if it would not fit, segments of *other* keys (another archive version,
image size or decoder) are deleted, least recently written first. Segments of the key in use are
never evicted to make room for more of the same key: once they fill the bound, further images are
not cached (they are decoded again when next read) and the images cached first stay — a stable
subset instead of churn when the data is bigger than the cache. Concurrent writers can overshoot
the bound by at most one segment each.

Reads: a lookup in two numpy arrays, one ``pread`` and a CRC-32 (≈ 10⁵ images/s from the page
cache). Nothing per image is kept as a Python object. Thread-safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import struct
import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgae_dx.utils.atomic import TMP_SUFFIX, atomic_open, atomic_write_bytes

if TYPE_CHECKING:
    from imgae_dx.data.decode import Resize

log = logging.getLogger(__name__)

MAGIC = b"IMGAEDX\x01"
FORMAT = 1
SEGMENT_SUFFIX = ".imgs"
#: Largest segment (RAM buffered before publishing) unless the caller's RAM budget is smaller.
SEGMENT_BYTES = 16 * 1024 * 1024
MIN_SEGMENT_IMAGES = 16
#: Temp files older than this are left over by killed writers and removed.
STALE_TMP_S = 3600.0
#: Open segment files kept at most (least recently read closed first).
MAX_OPEN_FILES = 64
_FIXED = struct.Struct("<8sIIII32s")  # magic, format, image side, count, reserved, key sha256
GB = 1024**3


@dataclass(frozen=True)
class CacheKey:
    """What decoded images depend on: the archive (identity, version, size) and preprocessing."""

    identity: str
    version: str | None
    size: int
    image_size: int
    decoder: str

    @classmethod
    def for_archive(cls, archive: Any, image_size: int, resize: Resize = "squash") -> CacheKey:
        """The key of ``archive`` (an opened :class:`~imgae_dx.streaming.sources.Archive`) decoded
        at ``image_size`` with the ``resize`` policy."""
        from imgae_dx.data.decode import decoder_version

        reader = archive.reader
        return cls(identity=str(archive.identity), version=reader.version, size=int(reader.size),
                   image_size=int(image_size), decoder=decoder_version(resize))

    def digest(self) -> bytes:
        """SHA-256 of the key and the file format (32 bytes)."""
        blob = json.dumps({"format": FORMAT, **asdict(self)}, sort_keys=True).encode()
        return hashlib.sha256(blob).digest()

    @property
    def folder(self) -> str:
        """Name of the key's folder inside the cache folder."""
        return self.digest().hex()[:24]


@dataclass
class _Segment:
    path: Path
    header_len: int
    members: np.ndarray  # int64
    img_crc: np.ndarray  # uint32
    nbytes: int


class PersistentImageCache:
    """Decoded uint8 ``S×S`` images on disk, keyed by archive member (see the module doc).

    Args:
        root: the cache folder (created if needed; may be shared with other keys and processes).
        key: what the images depend on (:meth:`CacheKey.for_archive`).
        n_members: members in the archive index (ids are ``0..n_members-1``).
        source_crc: the archive index's CRC-32 column (uint32, ``n_members``) when the source has
            real CRCs, else ``None``.
        max_bytes: bound of every segment in ``root`` together (see the eviction rule).
        ram_bytes: RAM the write buffer may take (one segment; at most :data:`SEGMENT_BYTES`).
        quiet: do not log notices (ranks other than 0).

    The usual way to build one is :meth:`for_archive`.
    """

    mode = "persistent"

    def __init__(self, root: str | os.PathLike[str], key: CacheKey, *, n_members: int,
                 source_crc: np.ndarray | None, max_bytes: int, ram_bytes: int = SEGMENT_BYTES,
                 quiet: bool = False) -> None:
        if key.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {key.image_size}")
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        if source_crc is not None and len(source_crc) != n_members:
            raise ValueError("source_crc must hold one CRC per archive member")
        self.key = key
        self.image_size = key.image_size
        self.item_bytes = key.image_size * key.image_size
        self.root = Path(root).expanduser()
        self.folder = self.root / key.folder
        self.max_bytes = int(max_bytes)
        self.quiet = quiet
        self._digest = key.digest()
        self._source_crc = None if source_crc is None else np.asarray(source_crc, np.uint32)
        self._n = int(n_members)
        self.segment_images = int(max(MIN_SEGMENT_IMAGES, min(SEGMENT_BYTES, ram_bytes) // self.item_bytes))
        self._lock = threading.RLock()
        self._seg_of = np.full(self._n, -1, np.int32)  # member -> segment number, -1: not cached
        self._slot_of = np.zeros(self._n, np.int32)
        self._segments: list[_Segment | None] = []
        self._known: dict[str, int] = {}  # file name -> segment number (also rejected: -1)
        self._files: OrderedDict[int, int] = OrderedDict()  # segment number -> open fd
        self._pending: np.ndarray | None = None
        self._pending_members: list[int] = []
        self._pending_index: dict[int, int] = {}
        self._full = False
        self.hits = self.misses = 0
        self.rejected = 0  # segment files found corrupt or foreign and deleted
        self.published = 0
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write_key_file()
        self._sweep_stale_tmp()
        self.refresh()

    @classmethod
    def for_archive(cls, root: str | os.PathLike[str], archive: Any, image_size: int, *,
                    max_gb: float, resize: Resize = "squash", ram_bytes: int = SEGMENT_BYTES,
                    quiet: bool = False) -> PersistentImageCache:
        """The cache of ``archive``'s images at ``image_size`` (``resize`` policy) in ``root``,
        bounded by ``max_gb``."""
        index = archive.index
        crc = index.crc if getattr(index, "crc_known", False) else None
        return cls(root, CacheKey.for_archive(archive, image_size, resize), n_members=len(index),
                   source_crc=crc, max_bytes=int(max_gb * GB), ram_bytes=ram_bytes, quiet=quiet)

    # ------------------------------------------------------------------ files
    def _write_key_file(self) -> None:
        path = self.folder / "key.json"
        text = json.dumps({"format": FORMAT, **asdict(self.key)}, indent=2, sort_keys=True) + "\n"
        try:
            if path.read_text() == text:
                return
        except (OSError, UnicodeDecodeError):
            pass
        atomic_write_bytes(path, text.encode())  # for people; segments carry the digest

    def _sweep_stale_tmp(self) -> None:
        now = time.time()
        for p in self.folder.glob(f".seg-*{TMP_SUFFIX}"):
            try:
                if now - p.stat().st_mtime > STALE_TMP_S:
                    p.unlink()
            except OSError:
                pass

    def _read_header(self, path: Path) -> _Segment:
        """Parse and check a segment's header. Raises ValueError saying what is wrong."""
        with open(path, "rb") as f:
            fixed = f.read(_FIXED.size)
            if len(fixed) < _FIXED.size:
                raise ValueError("shorter than a header")
            magic, fmt, side, count, _, digest = _FIXED.unpack(fixed)
            if magic != MAGIC:
                raise ValueError("not a segment file (bad magic)")
            if fmt != FORMAT:
                raise ValueError(f"format {fmt}, expected {FORMAT}")
            if digest != self._digest or side != self.image_size:
                raise ValueError("belongs to another archive version or preprocessing (foreign)")
            if count == 0 or count > 1 << 24:
                raise ValueError(f"implausible image count {count}")
            rest = f.read(16 * count + 4)
            if len(rest) < 16 * count + 4:
                raise ValueError("truncated header")
            size = os.fstat(f.fileno()).st_size
        if zlib.crc32(fixed + rest[:-4]) != struct.unpack("<I", rest[-4:])[0]:
            raise ValueError("header CRC-32 mismatch")
        header_len = _FIXED.size + len(rest)
        if size != header_len + count * self.item_bytes:
            raise ValueError(f"{size} bytes, expected {header_len + count * self.item_bytes}")
        members = np.frombuffer(rest, "<i8", count, 0).astype(np.int64)
        src_crc = np.frombuffer(rest, "<u4", count, 8 * count).astype(np.uint32)
        img_crc = np.frombuffer(rest, "<u4", count, 12 * count).astype(np.uint32)
        if members.min() < 0 or members.max() >= self._n:
            raise ValueError("member ids outside the archive index")
        if self._source_crc is not None and not np.array_equal(self._source_crc[members], src_crc):
            raise ValueError("source CRC-32s differ from the archive's (foreign)")
        return _Segment(path, header_len, members, img_crc, size)

    def _reject(self, path: Path, why: str) -> None:
        self.rejected += 1
        if not self.quiet:
            log.warning("image cache: dropped %s (%s); its images are decoded and cached again "
                        "when next streamed", path, why)
        try:
            path.unlink()
        except OSError:
            pass

    def _stop(self, why: str) -> None:
        """Take no more images (the buffer is dropped): the bound is reached or writes fail."""
        self._full = True
        self._pending = None
        if not self.quiet:
            log.warning("image cache %s takes no more images: %s; %d images of this archive are "
                        "cached, the others are decoded each time they are read", self.root, why,
                        len(self))

    def refresh(self) -> int:
        """Index segments published (by any process) since the last scan; returns how many."""
        try:
            names = sorted(e.name for e in os.scandir(self.folder)
                           if e.name.startswith("seg-") and e.name.endswith(SEGMENT_SUFFIX))
        except FileNotFoundError:
            names = []
        added = 0
        with self._lock:
            for name in names:
                if name in self._known:
                    continue
                path = self.folder / name
                try:
                    seg = self._read_header(path)
                except FileNotFoundError:
                    continue  # evicted meanwhile
                except (OSError, ValueError) as e:
                    self._known[name] = -1
                    self._reject(path, str(e))
                    continue
                self._add_segment(name, seg)
                added += 1
        return added

    def _add_segment(self, name: str, seg: _Segment) -> None:
        number = len(self._segments)
        self._segments.append(seg)
        self._known[name] = number
        free = self._seg_of[seg.members] < 0
        self._seg_of[seg.members[free]] = number
        self._slot_of[seg.members[free]] = np.nonzero(free)[0].astype(np.int32)

    def _drop_segment(self, number: int, why: str) -> None:
        """Forget and delete a segment found bad on read; its images that still match their
        CRC-32 are buffered again (published with the next segment), the others are lost."""
        seg = self._segments[number]
        if seg is None:
            return
        self._segments[number] = None
        fd = self._files.pop(number, None)
        if fd is not None:
            os.close(fd)
        mine = np.nonzero(self._seg_of == number)[0]
        self._seg_of[mine] = -1
        try:
            with open(seg.path, "rb") as f:
                f.seek(seg.header_len)
                payload = f.read()
        except OSError:
            payload = b""
        self._reject(seg.path, why)
        slot_of = {int(m): s for s, m in enumerate(seg.members.tolist())}
        for m in mine.tolist():
            s = slot_of[m]
            img = payload[s * self.item_bytes:(s + 1) * self.item_bytes]
            if len(img) == self.item_bytes and zlib.crc32(img) == int(seg.img_crc[s]):
                self.put(m, np.frombuffer(img, np.uint8).reshape(self.image_size, self.image_size))

    def _fd(self, number: int) -> int:
        fd = self._files.get(number)
        if fd is not None:
            self._files.move_to_end(number)
            return fd
        seg = self._segments[number]
        assert seg is not None
        fd = os.open(seg.path, os.O_RDONLY)
        self._files[number] = fd
        while len(self._files) > MAX_OPEN_FILES:
            os.close(self._files.popitem(last=False)[1])
        return fd

    # ------------------------------------------------------------------ API
    def __contains__(self, member: object) -> bool:
        if not isinstance(member, (int, np.integer)) or not 0 <= int(member) < self._n:
            return False
        m = int(member)
        with self._lock:
            return self._seg_of[m] >= 0 or m in self._pending_index

    def __len__(self) -> int:
        with self._lock:
            return int((self._seg_of >= 0).sum()) + sum(
                1 for m in self._pending_members if self._seg_of[m] < 0)

    def members(self) -> np.ndarray:
        """Ids of every cached member (published or buffered), ascending (int64)."""
        with self._lock:
            have = self._seg_of >= 0
            have[self._pending_members] = True
            return np.nonzero(have)[0].astype(np.int64)

    def get(self, member: int) -> np.ndarray | None:
        """The image of ``member`` (uint8 ``S×S``, a private copy) or ``None`` (a miss).

        A stored image whose CRC-32 does not match is a miss, and its segment is deleted.
        """
        m = int(member)
        with self._lock:
            if not 0 <= m < self._n:
                self.misses += 1
                return None
            p = self._pending_index.get(m)
            if p is not None:
                assert self._pending is not None
                self.hits += 1
                return self._pending[p].copy()
            number = int(self._seg_of[m])
            if number < 0:
                self.misses += 1
                return None
            seg = self._segments[number]
            assert seg is not None
            slot = int(self._slot_of[m])
            try:
                buf = os.pread(self._fd(number), self.item_bytes, seg.header_len + slot * self.item_bytes)
            except OSError as e:
                buf = b""
                why = f"read failed: {e}"
            else:
                why = "an image's CRC-32 does not match"
            if len(buf) != self.item_bytes or zlib.crc32(buf) != int(seg.img_crc[slot]):
                self._drop_segment(number, why if buf else "read failed or file shrank")
                self.misses += 1
                return None
            self.hits += 1
            return np.frombuffer(buf, np.uint8).reshape(self.image_size, self.image_size).copy()

    def put(self, member: int, image: np.ndarray) -> bool:
        """Cache ``image`` (uint8 ``S×S``) for ``member``.

        Returns ``True`` when cached (buffered, published, or already there), ``False`` when the
        cache is full (see the eviction rule).
        """
        if image.shape != (self.image_size, self.image_size) or image.dtype != np.uint8:
            raise ValueError(f"cache holds uint8 {self.image_size}×{self.image_size} images, "
                             f"got {image.dtype} {image.shape}")
        m = int(member)
        if not 0 <= m < self._n:
            raise ValueError(f"member {m} is not in the archive index (0..{self._n - 1})")
        with self._lock:
            if self._seg_of[m] >= 0 or m in self._pending_index:
                return True
            if self._full:
                return False
            if self._pending is None:
                self._pending = np.empty((self.segment_images, self.image_size, self.image_size), np.uint8)
            p = len(self._pending_members)
            self._pending[p] = image
            self._pending_members.append(m)
            self._pending_index[m] = p
            if len(self._pending_members) == self.segment_images:
                self.flush()
            return True

    def flush(self) -> int:
        """Publish the buffered images as one segment; returns how many were published.

        When the segment does not fit the bound even after evicting other keys, or cannot be
        written (disk full, quota), nothing is published, the buffer is dropped and the cache
        stops taking images (``full``); reads go on.
        """
        with self._lock:
            count = len(self._pending_members)
            if count == 0:
                return 0
            assert self._pending is not None
            members = np.asarray(self._pending_members, np.int64)
            images = self._pending[:count]
            self._pending_members = []
            self._pending_index = {}
            size = _FIXED.size + 16 * count + 4 + count * self.item_bytes
            if not self._make_room(size):
                self._stop(f"full (data.cache_max_gb={self.max_bytes / GB:.3g})")
                return 0
            src = (self._source_crc[members] if self._source_crc is not None
                   else np.zeros(count, np.uint32))
            img_crc = np.fromiter((zlib.crc32(im) for im in images), np.uint32, count)
            head = _FIXED.pack(MAGIC, FORMAT, self.image_size, count, 0, self._digest)
            head += members.astype("<i8").tobytes() + src.astype("<u4").tobytes()
            head += img_crc.astype("<u4").tobytes()
            head += struct.pack("<I", zlib.crc32(head))
            name = f"seg-{time.time_ns():x}-{os.getpid()}-{secrets.token_hex(4)}{SEGMENT_SUFFIX}"
            path = self.folder / name
            try:
                with atomic_open(path, "wb") as f:
                    f.write(head)
                    f.write(memoryview(np.ascontiguousarray(images)).cast("B"))
            except OSError as e:  # disk full, quota, a Drive hiccup: training goes on uncached
                self._stop(f"writing {path.name} failed ({e.strerror or e})")
                return 0
            self._add_segment(name, _Segment(path, len(head), members, img_crc, size))
            self.published += count
            return count

    def _make_room(self, size: int) -> bool:
        """Evict other keys' segments (oldest first) until ``size`` more bytes fit the bound."""
        ours: list[int] = []
        others: list[tuple[float, int, Path]] = []
        for sub in _subfolders(self.root):
            for e in _scandir(sub):
                if not (e.name.startswith("seg-") and e.name.endswith(SEGMENT_SUFFIX)):
                    continue
                try:
                    st = e.stat()
                except OSError:
                    continue
                if sub == self.folder:
                    ours.append(st.st_size)
                else:
                    others.append((st.st_mtime, st.st_size, Path(e.path)))
        total = sum(ours) + sum(s for _, s, _ in others)
        for _, s, p in sorted(others):
            if total + size <= self.max_bytes:
                break
            try:
                p.unlink()
            except OSError:
                pass
            total -= s
        return total + size <= self.max_bytes

    @property
    def full(self) -> bool:
        """True once the bound (or a failed write) stopped this cache from taking images."""
        return self._full

    @property
    def nbytes(self) -> int:
        """RAM held: the write buffer (what counts against the pipeline's memory budget)."""
        with self._lock:
            return 0 if self._pending is None else int(self._pending.nbytes)

    @property
    def disk_nbytes(self) -> int:
        """Bytes of this key's segments known to this process."""
        with self._lock:
            return sum(s.nbytes for s in self._segments if s is not None)

    def stats(self) -> dict[str, Any]:
        """Counters for logs: images, disk bytes, hits, misses, rejected files, full."""
        with self._lock:
            return {"mode": self.mode, "images": len(self), "nbytes": self.nbytes,
                    "disk_nbytes": self.disk_nbytes, "hits": self.hits, "misses": self.misses,
                    "published": self.published, "rejected": self.rejected, "full": self._full,
                    "folder": str(self.folder)}

    def release(self) -> None:
        """Publish the buffer, free it and close files; the cache stays usable (and on disk)."""
        with self._lock:
            self.flush()
            self._pending = None
            while self._files:
                os.close(self._files.popitem()[1])

    close = release

    def __del__(self) -> None:  # best effort: close file descriptors (the buffer is not published)
        try:
            for fd in getattr(self, "_files", {}).values():
                os.close(fd)
        except Exception:
            pass


def _subfolders(root: Path) -> list[Path]:
    return [Path(e.path) for e in _scandir(root) if e.is_dir(follow_symlinks=False)]


def _scandir(folder: Path) -> list[os.DirEntry[str]]:
    try:
        return list(os.scandir(folder))
    except OSError:
        return []


__all__ = ["CacheKey", "PersistentImageCache"]
