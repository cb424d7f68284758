"""An extracted dataset folder presented as a (stored, CRC-less) zip archive.

``kagglehub`` and manual downloads leave the dataset extracted::

    ROOT/Data_Entry_2017.csv, BBox_List_2017.csv, train_val_list.txt, test_list.txt, …
    ROOT/images_001/images/00000001_000.png …   (also accepted: ROOT/images_001/00000001_000.png)

:func:`open_folder` lists the regular files under ROOT (hidden files and folders skipped) and
returns a :class:`FolderReader` — a :class:`RangeReader` over a *virtual concatenation* in which
every file is preceded by a synthesised 30-byte zip local header plus its name — and an
:class:`ArchiveIndex` built from the file list (method stored, ``crc_known=False``: a folder
has no CRCs, so extraction checks sizes only). The rest of the pipeline (coalescing, prefetch,
``extract``) therefore runs unchanged on folders.

Member names are the paths relative to ROOT with ``/`` separators; images placed directly under
``images_NNN/`` are presented as ``images_NNN/images/NAME`` so that every source has the Kaggle
layout.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import re
from pathlib import Path

import numpy as np

from imgae_dx.errors import SourceError
from imgae_dx.streaming.archive_index import (
    _LOCAL,
    _LOCAL_SIG,
    ArchiveIndex,
    is_unsafe_name,
    names_blob,
)
from imgae_dx.streaming.range_reader import RangeReader, ReaderStats, pread_full

_STAGE_DIR = re.compile(r"^images_\d{3}$")


def list_folder(root: Path) -> list[tuple[str, Path, int, int]]:
    """``(member_name, path, size, mtime_ns)`` of the regular files under ``root``, sorted by name."""
    out: list[tuple[str, Path, int, int]] = []

    def walk(d: Path, rel: str) -> None:
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            raise SourceError(f"cannot list folder {d}: {e.strerror or e}") from None
        for e in entries:
            if e.name.startswith("."):
                continue
            r = f"{rel}{e.name}"
            if e.is_dir(follow_symlinks=True):
                walk(Path(e.path), r + "/")
            elif e.is_file(follow_symlinks=True):
                st = e.stat(follow_symlinks=True)
                out.append((r, Path(e.path), st.st_size, st.st_mtime_ns))

    walk(root, "")
    normalised = []
    for name, path, size, mtime in out:
        parts = name.split("/")
        if len(parts) == 2 and _STAGE_DIR.match(parts[0]):
            name = f"{parts[0]}/images/{parts[1]}"
        if is_unsafe_name(name):
            continue
        normalised.append((name, path, size, mtime))
    normalised.sort(key=lambda t: t[0])
    names = [t[0] for t in normalised]
    if len(set(names)) != len(names):
        dup = next(n for i, n in enumerate(names) if i and names[i - 1] == n)
        raise SourceError(
            f"folder {root}: {dup!r} exists both under images_NNN/ and images_NNN/images/; keep one copy"
        )
    return normalised


class FolderReader(RangeReader):
    """Reads the virtual concatenation ``[local header, name, file bytes]*`` of a folder's files.

    File bytes come from ``os.pread`` (each file opened per read; no descriptor held open), the
    synthesised headers from memory. Thread-safe.
    """

    def __init__(self, root: Path, files: list[tuple[str, Path, int, int]]) -> None:
        self.root = root
        self.identity = f"folder:{root}"
        self.stats = ReaderStats()
        self._paths = [f[1] for f in files]
        self._sizes = [f[2] for f in files]
        headers: list[bytes] = []
        seg_starts: list[int] = []  # start of each member's header in the virtual file
        pos = 0
        for name, _p, size, _mt in files:
            nb = name.encode("utf-8")
            h = _LOCAL.pack(_LOCAL_SIG, 20, 0x800, 0, 0, 0, 0,
                            min(size, 0xFFFFFFFF), min(size, 0xFFFFFFFF), len(nb), 0) + nb
            headers.append(h)
            seg_starts.append(pos)
            pos += len(h) + size
        self._headers = headers
        self._starts = seg_starts
        self.size = pos
        h = hashlib.sha256()  # the folder's version: names, sizes and times as listed
        for name, _p, size, mt in files:
            h.update(f"{name}\0{size}\0{mt}\n".encode())
        self.version = h.hexdigest()[:32]
        self._closed = False

    def read(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        if self._closed:
            raise SourceError(f"{self.identity}: reader is closed")
        parts: list[bytes] = []
        pos, end = offset, offset + length
        k = bisect.bisect_right(self._starts, pos) - 1
        while pos < end:
            hdr = self._headers[k]
            seg = self._starts[k]
            hlen = len(hdr)
            if pos < seg + hlen:
                a = pos - seg
                b = min(hlen, end - seg)
                parts.append(hdr[a:b])
                pos = seg + b
                continue
            fstart = seg + hlen
            fsize = self._sizes[k]
            if pos < fstart + fsize:
                a = pos - fstart
                n = min(fsize - a, end - pos)
                parts.append(self._pread(k, a, n))
                pos += n
                continue
            k += 1
        self.stats.add(bytes_fetched=length, requests=1)
        return b"".join(parts)  # one part: returned as is, no copy

    def _pread(self, k: int, offset: int, n: int) -> bytes:
        path = self._paths[k]
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError as e:
            raise SourceError(f"{self.identity}: cannot open {path}: {e.strerror or e}") from None
        try:
            data = pread_full(fd, n, offset)
        finally:
            os.close(fd)
        if len(data) != n:
            raise SourceError(
                f"{self.identity}: {path} is shorter than when the folder was listed (changed while "
                f"running?); restart"
            )
        return data

    def close(self) -> None:
        self._closed = True


def open_folder(root: str | os.PathLike[str]) -> tuple[FolderReader, ArchiveIndex]:
    """A reader and an index (stored members, ``crc_known=False``) for an extracted folder."""
    rootp = Path(root).expanduser().absolute()
    if not rootp.is_dir():
        raise SourceError(f"not a folder: {rootp}")
    files = list_folder(rootp)
    if not files:
        raise SourceError(f"folder {rootp} holds no files; expected images_NNN/images/*.png and the metadata CSVs")
    reader = FolderReader(rootp, files)
    blob, offs = names_blob([f[0].encode("utf-8") for f in files])
    sizes = np.asarray(reader._sizes, dtype=np.int64)
    n = len(files)
    index = ArchiveIndex(
        header_offset=np.asarray(reader._starts, dtype=np.int64),
        comp_size=sizes,
        size=sizes,
        method=np.zeros(n, dtype=np.uint16),
        crc=np.zeros(n, dtype=np.uint32),
        extra_len=np.zeros(n, dtype=np.uint16),
        flags=np.full(n, 0x800, dtype=np.uint16),
        name_blob=blob,
        name_offsets=offs,
        archive_size=reader.size,
        data_end=reader.size,
        crc_known=False,
        identity=reader.identity,
    )
    return reader, index
