"""The zip central directory as compact numpy arrays, plus member extraction with CRC checks.

Over 500 lines on purpose: the ZIP format (EOCD, ZIP64 locator and record, central and local
headers, unsafe names) is parsed in one place, so every bounds check sits next to the field it guards.

:class:`ArchiveIndex` reads the end-of-central-directory record (EOCD) from the archive's tail,
follows the ZIP64 locator/record when present, reads the central directory with one range read
and parses it into columns — no Python object per member:

============== ======== =====================================================
column         dtype    meaning
============== ======== =====================================================
header_offset  int64    offset of the member's local header
comp_size      int64    compressed bytes
size           int64    uncompressed bytes
method         uint16   0 = stored, 8 = deflate (others raise on extract)
crc            uint32   CRC-32 of the uncompressed bytes
extra_len      uint16   central-directory extra-field length
flags          uint16   general-purpose flags
name_blob      uint8    every member name, UTF-8, concatenated
name_offsets   int64    ``len + 1`` offsets into ``name_blob``
============== ======== =====================================================

ZIP64 extra fields replace 0xFFFFFFFF sizes/offsets (the real NIH archive is 42 GB, so offsets past
4 GiB are the normal case). 112k members parse in a fraction of a second.

Member-name policy: directory entries (names ending in ``/``) are left out of the index, and so
are **unsafe names** (absolute paths, drive letters, ``..`` components, NUL or newline bytes):
they are excluded and counted in ``index.excluded`` (``{"dirs": n, "unsafe": n}``), with a
warning, so one bad entry cannot make the whole archive unusable yet can never be looked up.
Looking up an unsafe name (:meth:`ArchiveIndex.find`) raises :class:`ArchiveError`.

Duplicate names: :meth:`ArchiveIndex.find` returns the last one in the central directory (as
Python's ``zipfile`` does).

:meth:`ArchiveIndex.load` persists the arrays as ``.npz`` under ``cache_dir``, keyed by
``sha256(identity, version, size)``, written atomically, so a restart does not re-read the
central directory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgae_dx.errors import ArchiveError
from imgae_dx.utils.atomic import atomic_open

if TYPE_CHECKING:
    from imgae_dx.streaming.range_reader import RangeReader

log = logging.getLogger(__name__)

_EOCD_SIG = b"PK\x05\x06"
_Z64_LOC_SIG = b"PK\x06\x07"
_Z64_EOCD_SIG = b"PK\x06\x06"
_CD_SIG = 0x02014B50
_LOCAL_SIG = b"PK\x03\x04"
_EOCD = struct.Struct("<4sHHHHIIH")  # 22 bytes
_Z64_LOC = struct.Struct("<4sIQI")  # 20 bytes
_Z64_EOCD = struct.Struct("<4sQHHIIQQQQ")  # 56 bytes
_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # 30 bytes
_CD_LENS = struct.Struct("<HHH")
_EXTRA_HDR = struct.Struct("<HH")
_MAX_EOCD_SEARCH = 65535 + 22 + 20

#: Bytes allowed beyond the central extra length for the local header's extra field in ``span``.
LOCAL_EXTRA_MARGIN = 256
#: Compressed bytes read beyond the ``nbytes`` a head asks for (deflate's block headers).
HEAD_SLACK = 64
#: Bump when the on-disk cache layout changes.
CACHE_FORMAT = 1

_CD_DTYPE = np.dtype(
    [
        ("sig", "<u4"), ("ver_made", "<u2"), ("ver_need", "<u2"), ("flags", "<u2"), ("method", "<u2"),
        ("time", "<u2"), ("date", "<u2"), ("crc", "<u4"), ("csize", "<u4"), ("usize", "<u4"),
        ("nlen", "<u2"), ("elen", "<u2"), ("clen", "<u2"), ("disk", "<u2"), ("iattr", "<u2"),
        ("eattr", "<u4"), ("offset", "<u4"),
    ]
)
assert _CD_DTYPE.itemsize == 46

_UNSAFE_RE = re.compile(
    rb"^(?:[/\\]|[A-Za-z]:)"  # absolute or drive-letter path
    rb"|(?:^|[/\\])\.\.(?:[/\\]|$)",  # a '..' component
    re.MULTILINE,
)
_COLUMNS = ("header_offset", "comp_size", "size", "method", "crc", "extra_len", "flags", "name_blob", "name_offsets")


def is_unsafe_name(name: str) -> bool:
    """True for absolute paths, drive letters, ``..`` components, NUL/newline or empty names."""
    if not name or "\x00" in name or "\n" in name:
        return True
    return _UNSAFE_RE.search(name.encode("utf-8", "surrogateescape")) is not None


def names_blob(names: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Member names as one uint8 blob and int64 offsets (n+1): name i is blob[offs[i]:offs[i+1]]."""
    offs = np.zeros(len(names) + 1, dtype=np.int64)
    np.cumsum(np.fromiter((len(b) for b in names), dtype=np.int64, count=len(names)), out=offs[1:])
    return np.frombuffer(b"".join(names), dtype=np.uint8).copy(), offs


def _gather(buf: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ``buf[starts[k]:starts[k]+lens[k]]`` for all k → (blob, offsets[N+1])."""
    lens = lens.astype(np.int64, copy=False)
    offsets = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    total = int(offsets[-1])
    if total == 0:
        return np.zeros(0, dtype=np.uint8), offsets
    idx = np.repeat(starts.astype(np.int64) - offsets[:-1], lens) + np.arange(total, dtype=np.int64)
    return buf[idx], offsets


class ArchiveIndex:
    """Columns of a zip central directory (see the module docstring) and member extraction.

    Build with :meth:`load` (from a reader), or from columns (the folder source).
    ``crc_known`` is False when the CRC column holds no real CRCs (extracted-folder sources):
    :meth:`extract` then checks sizes only.
    """

    def __init__(
        self,
        *,
        header_offset: np.ndarray,
        comp_size: np.ndarray,
        size: np.ndarray,
        method: np.ndarray,
        crc: np.ndarray,
        extra_len: np.ndarray,
        flags: np.ndarray,
        name_blob: np.ndarray,
        name_offsets: np.ndarray,
        archive_size: int,
        data_end: int,
        crc_known: bool = True,
        identity: str = "",
        excluded: dict[str, int] | None = None,
    ) -> None:
        n = len(header_offset)
        self.header_offset = np.ascontiguousarray(header_offset, dtype=np.int64)
        self.comp_size = np.ascontiguousarray(comp_size, dtype=np.int64)
        self.size = np.ascontiguousarray(size, dtype=np.int64)
        self.method = np.ascontiguousarray(method, dtype=np.uint16)
        self.crc = np.ascontiguousarray(crc, dtype=np.uint32)
        self.extra_len = np.ascontiguousarray(extra_len, dtype=np.uint16)
        self.flags = np.ascontiguousarray(flags, dtype=np.uint16)
        self.name_blob = np.ascontiguousarray(name_blob, dtype=np.uint8)
        self.name_offsets = np.ascontiguousarray(name_offsets, dtype=np.int64)
        for col in ("comp_size", "size", "method", "crc", "extra_len", "flags"):
            if len(getattr(self, col)) != n:
                raise ValueError(f"column {col} has {len(getattr(self, col))} rows, expected {n}")
        if len(self.name_offsets) != n + 1:
            raise ValueError("name_offsets must have len(index) + 1 entries")
        self.archive_size = int(archive_size)
        self.data_end = int(data_end)
        self.crc_known = bool(crc_known)
        self.identity = identity
        self.excluded = dict(excluded or {"dirs": 0, "unsafe": 0})
        self._sorted: tuple[np.ndarray, np.ndarray, int] | None = None

    # ------------------------------------------------------------------ building
    @classmethod
    def load(cls, reader: RangeReader, cache_dir: str | os.PathLike[str] | None = None) -> ArchiveIndex:
        """Index of ``reader``'s archive, from the on-disk cache when present, else parsed.

        Args:
            reader: the archive's :class:`RangeReader`.
            cache_dir: folder for ``archive-index-<key>.npz`` (``~`` expanded); ``None`` = no cache.

        Raises:
            ArchiveError: not a zip archive, truncated or malformed central directory.
        """
        path = None
        if cache_dir is not None:
            key = hashlib.sha256(
                f"{reader.identity}\n{reader.version}\n{reader.size}\n{CACHE_FORMAT}".encode()
            ).hexdigest()[:32]
            path = Path(cache_dir).expanduser() / f"archive-index-{key}.npz"
            cached = cls._load_cache(path, reader)
            if cached is not None:
                return cached
        index = cls.parse(reader)
        if path is not None:
            index._save_cache(path, reader)
        return index

    @classmethod
    def parse(cls, reader: RangeReader) -> ArchiveIndex:
        """Read EOCD (+ ZIP64) and the central directory from ``reader`` and parse it."""
        ident = reader.identity
        size = reader.size
        if size < 22:
            raise ArchiveError(f"{ident} is not a zip archive: only {size} bytes")
        tail = reader.read_tail(min(size, 65536))
        found = _find_eocd(tail)
        if found is None and size > len(tail):
            tail = reader.read_tail(min(size, _MAX_EOCD_SEARCH))
            found = _find_eocd(tail)
        if found is None:
            raise ArchiveError(
                f"{ident} is not a zip archive (no end-of-central-directory record in its last "
                f"{len(tail)} bytes); is the file complete?"
            )
        tail_start = size - len(tail)
        eocd_pos = found
        _, disk, disk_cd, n_disk, n_total, cd_size, cd_offset, _clen = _EOCD.unpack_from(tail, eocd_pos)
        eocd_abs = tail_start + eocd_pos
        zip64 = False
        loc_pos = eocd_pos - _Z64_LOC.size
        if loc_pos >= 0 and tail[loc_pos : loc_pos + 4] == _Z64_LOC_SIG:
            _, _d, z64_off, _ndisks = _Z64_LOC.unpack_from(tail, loc_pos)
            if z64_off + _Z64_EOCD.size > eocd_abs:
                raise ArchiveError(f"{ident}: ZIP64 locator points past the end record (offset {z64_off})")
            rec = _slice(reader, tail, tail_start, z64_off, _Z64_EOCD.size)
            sig, _rsize, _vm, _vn, disk, disk_cd, n_disk, n_total, cd_size, cd_offset = _Z64_EOCD.unpack(rec)
            if sig != _Z64_EOCD_SIG:
                raise ArchiveError(f"{ident}: ZIP64 end record missing at offset {z64_off}")
            zip64 = True
            cd_end_limit = z64_off
        else:
            cd_end_limit = eocd_abs
        if disk != 0 or disk_cd != 0 or n_disk != n_total:
            raise ArchiveError(f"{ident}: multi-disk (split) zip archives are not supported")
        if cd_offset + cd_size > cd_end_limit:
            raise ArchiveError(
                f"{ident}: central directory (offset {cd_offset}, {cd_size} bytes) runs past its end "
                f"record at {cd_end_limit}; the archive is truncated or corrupt"
            )
        cd = _slice(reader, tail, tail_start, cd_offset, cd_size)
        index = cls._parse_cd(cd, ident, archive_size=size, data_end=cd_offset)
        n_raw = len(index) + index.excluded["dirs"] + index.excluded["unsafe"]
        if not zip64 and n_raw % 65536 != n_total % 65536 or zip64 and n_raw != n_total:
            raise ArchiveError(
                f"{ident}: central directory holds {n_raw} entries but the end record says {n_total}"
            )
        return index

    @classmethod
    def _parse_cd(cls, cd: bytes, ident: str, *, archive_size: int, data_end: int) -> ArchiveIndex:
        L = len(cd)
        buf = np.frombuffer(cd, dtype=np.uint8)
        P = _chain_fast(buf)
        if P is None:  # a signature inside a name/extra/comment: walk the chain entry by entry
            positions: list[int] = []
            append = positions.append
            unpack = _CD_LENS.unpack_from
            pos = 0
            while pos < L:
                if pos + 46 > L:
                    raise ArchiveError(f"{ident}: central directory truncated at entry {len(positions)}")
                nl, el, cl = unpack(cd, pos + 28)
                append(pos)
                pos += 46 + nl + el + cl
            if pos != L:
                raise ArchiveError(f"{ident}: central directory truncated at entry {len(positions) - 1}")
            P = np.asarray(positions, dtype=np.int64)
        n = len(P)
        if n:
            hdr = buf[P[:, None] + np.arange(46, dtype=np.int64)]
            rec = np.ascontiguousarray(hdr).view(_CD_DTYPE).reshape(n)
        else:
            rec = np.zeros(0, dtype=_CD_DTYPE)
        bad = np.nonzero(rec["sig"] != _CD_SIG)[0]
        if len(bad):
            raise ArchiveError(f"{ident}: central directory entry {int(bad[0])} has a bad signature")
        nlen = rec["nlen"].astype(np.int64)
        elen = rec["elen"].astype(np.int64)
        flags = rec["flags"]
        header_offset = rec["offset"].astype(np.int64)
        comp_size = rec["csize"].astype(np.int64)
        usize = rec["usize"].astype(np.int64)

        # ZIP64 extra fields for entries with saturated fields.
        need = (rec["csize"] == 0xFFFFFFFF) | (rec["usize"] == 0xFFFFFFFF) | (rec["offset"] == 0xFFFFFFFF) | (
            rec["disk"] == 0xFFFF
        )
        sat_u = rec["usize"] == 0xFFFFFFFF
        sat_c = rec["csize"] == 0xFFFFFFFF
        sat_o = rec["offset"] == 0xFFFFFFFF
        sat_d = rec["disk"] == 0xFFFF
        slow = np.zeros(n, dtype=bool)
        if need.any():
            # common case, vectorised: the ZIP64 field (id 1) comes first in the extra block
            k = np.nonzero(need)[0]
            xs = P[k] + 46 + nlen[k]
            nbytes = 8 * (sat_u[k].astype(np.int64) + sat_c[k] + sat_o[k]) + 4 * sat_d[k]
            ok = (elen[k] >= 4 + nbytes)
            ok[ok] = (_u16(buf, xs[ok]) == 1) & (_u16(buf, xs[ok] + 2) >= nbytes[ok])
            slow[k[~ok]] = True
            k, xs = k[ok], xs[ok]
            q = xs + 4
            for sat, col in ((sat_u, usize), (sat_c, comp_size), (sat_o, header_offset)):
                m = sat[k]
                vals = _u64(buf, q[m])
                if len(vals) and int(vals.max()) >= 1 << 62:
                    j = int(k[m][np.argmax(vals)])
                    raise ArchiveError(f"{ident}: member {_raw_name(cd, P, nlen, j)!r} has an impossible ZIP64 size or offset")
                col[k[m]] = vals.astype(np.int64)
                q = q + 8 * m
            md = sat_d[k]
            if md.any() and np.any(_u32(buf, q[md]) != 0):
                raise ArchiveError(f"{ident}: multi-disk (split) zip archives are not supported")
        for k in np.nonzero(slow)[0].tolist():
            start = int(P[k]) + 46 + int(nlen[k])
            vals = _zip64_extra(cd, start, start + int(elen[k]), bool(sat_u[k]), bool(sat_c[k]), bool(sat_o[k]),
                                bool(sat_d[k]))
            if vals is None:
                raise ArchiveError(
                    f"{ident}: member {_raw_name(cd, P, nlen, k)!r} needs a ZIP64 extra field but has none "
                    f"(or a short one)"
                )
            u, c, o, d = vals
            if any(v is not None and v >= 1 << 62 for v in (u, c, o)):
                raise ArchiveError(f"{ident}: member {_raw_name(cd, P, nlen, k)!r} has an impossible ZIP64 size or offset")
            if u is not None:
                usize[k] = u
            if c is not None:
                comp_size[k] = c
            if o is not None:
                header_offset[k] = o
            if d not in (None, 0):
                raise ArchiveError(f"{ident}: multi-disk (split) zip archives are not supported")

        # Every member must lie inside the archive, before the central directory; sizes sane.
        bad = np.nonzero(
            (header_offset + 30 + comp_size > data_end)
            | ((rec["method"] == 0) & (usize != comp_size) & ((flags & 0x1) == 0))
            | (usize > comp_size * 1100 + 65536)
        )[0]
        if len(bad):
            k = int(bad[0])
            nm = _raw_name(cd, P, nlen, k)
            raise ArchiveError(
                f"{ident}: member {nm!r} (offset {int(header_offset[k])}, {int(comp_size[k])} bytes, "
                f"size {int(usize[k])}) does not fit the archive; it is truncated or corrupt"
            )

        # Names: one blob; fix non-UTF-8 (cp437) names, drop dirs and unsafe names.
        blob, offs = _gather(buf, P + 46, nlen)
        hi = np.nonzero(blob >= 0x80)[0]
        if len(hi):
            owners = np.unique(np.searchsorted(offs, hi, side="right") - 1)
            names_b = [bytes(blob[offs[i] : offs[i + 1]]) for i in range(n)]
            for i in owners.tolist():
                raw = names_b[i]
                if flags[i] & 0x800:
                    names_b[i] = raw.decode("utf-8", "replace").encode("utf-8")
                else:
                    names_b[i] = raw.decode("cp437").encode("utf-8")
            blob, offs = names_blob(names_b)
            nlen = np.diff(offs)
        keep = np.ones(n, dtype=bool)
        is_dir = np.zeros(n, dtype=bool)
        nonempty = nlen > 0
        is_dir[nonempty] = blob[offs[1:][nonempty] - 1] == ord("/")
        unsafe = ~nonempty
        # NUL / newline anywhere in a name
        ctl = np.nonzero((blob == 0) | (blob == 10))[0]
        if len(ctl):
            unsafe[np.searchsorted(offs, ctl, side="right") - 1] = True
        # absolute paths and drive letters: look at the first bytes of each name
        if n:
            st = offs[:-1]
            first = np.where(nonempty, blob[np.minimum(st, max(len(blob) - 1, 0))] if len(blob) else 0, 0)
            unsafe |= nonempty & ((first == ord("/")) | (first == ord("\\")))
            two = nlen >= 2
            if two.any():
                f2 = first[two]
                letter = ((f2 | 0x20) >= ord("a")) & ((f2 | 0x20) <= ord("z"))
                unsafe[np.nonzero(two)[0][letter & (blob[st[two] + 1] == ord(":"))]] = True
        # '..' components: every '..' pair bounded by a separator or the name's ends
        if len(blob) >= 2:
            dd = np.nonzero((blob[:-1] == ord(".")) & (blob[1:] == ord(".")))[0]
            if len(dd):
                owner = np.searchsorted(offs, dd, side="right") - 1
                s0, e0 = offs[owner], offs[owner + 1]
                inside = dd + 2 <= e0
                sep = (blob == ord("/")) | (blob == ord("\\"))
                left = (dd == s0) | sep[np.maximum(dd - 1, 0)]
                right = (dd + 2 == e0) | sep[np.minimum(dd + 2, len(blob) - 1)]
                unsafe[owner[inside & left & right]] = True
        unsafe &= ~is_dir | ~nonempty
        keep &= ~is_dir & ~unsafe
        excluded = {"dirs": int(is_dir.sum()), "unsafe": int(unsafe.sum())}
        if excluded["unsafe"]:
            ex = [bytes(blob[offs[i] : offs[i + 1]]).decode("utf-8", "replace") for i in np.nonzero(unsafe)[0][:3]]
            log.warning(
                "%s: %d member(s) with unsafe names (absolute or '..') left out of the index, e.g. %s",
                ident, excluded["unsafe"], ex,
            )
        if not keep.all():
            kidx = np.nonzero(keep)[0]
            blob, offs2 = _gather(blob, offs[kidx], nlen[kidx])
            offs = offs2
        else:
            kidx = slice(None)
        return cls(
            header_offset=header_offset[kidx],
            comp_size=comp_size[kidx],
            size=usize[kidx],
            method=rec["method"][kidx],
            crc=rec["crc"][kidx],
            extra_len=rec["elen"][kidx],
            flags=flags[kidx],
            name_blob=blob,
            name_offsets=offs,
            archive_size=archive_size,
            data_end=data_end,
            crc_known=True,
            identity=ident,
            excluded=excluded,
        )

    # --------------------------------------------------------------------- cache
    @classmethod
    def _load_cache(cls, path: Path, reader: RangeReader) -> ArchiveIndex | None:
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = {k: z[k] for k in z.files}
            if (
                str(meta["identity"]) != reader.identity
                or str(meta["version"]) != str(reader.version)
                or int(meta["archive_size"]) != reader.size
                or int(meta["format"]) != CACHE_FORMAT
            ):
                return None
            return cls(
                **{c: meta[c] for c in _COLUMNS},
                archive_size=int(meta["archive_size"]),
                data_end=int(meta["data_end"]),
                crc_known=bool(meta["crc_known"]),
                identity=reader.identity,
                excluded={"dirs": int(meta["excluded_dirs"]), "unsafe": int(meta["excluded_unsafe"])},
            )
        except Exception as e:  # corrupt / partial / old cache: rebuild
            log.warning("ignoring unreadable index cache %s (%s); re-reading the central directory", path, e)
            return None

    def _save_cache(self, path: Path, reader: RangeReader) -> None:
        try:
            with atomic_open(path) as f:
                np.savez(
                    f,
                    **{c: getattr(self, c) for c in _COLUMNS},
                    archive_size=np.int64(self.archive_size),
                    data_end=np.int64(self.data_end),
                    crc_known=np.bool_(self.crc_known),
                    identity=np.str_(reader.identity),
                    version=np.str_(str(reader.version)),
                    format=np.int64(CACHE_FORMAT),
                    excluded_dirs=np.int64(self.excluded.get("dirs", 0)),
                    excluded_unsafe=np.int64(self.excluded.get("unsafe", 0)),
                )
        except OSError as e:
            log.warning("could not write the index cache %s: %s (continuing without it)", path, e)

    # -------------------------------------------------------------------- lookup
    def __len__(self) -> int:
        return len(self.header_offset)

    def __repr__(self) -> str:
        return f"ArchiveIndex({self.identity!r}, members={len(self)}, excluded={self.excluded})"

    def name(self, i: int) -> str:
        """Name of member ``i``."""
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"member id {i} out of range (0..{len(self) - 1})")
        return self.name_blob[self.name_offsets[i] : self.name_offsets[i + 1]].tobytes().decode("utf-8")

    def names(self, ids: np.ndarray | None = None) -> list[str]:
        """Names of ``ids`` (default: all members) as a list of str."""
        ids_ = range(len(self)) if ids is None else np.asarray(ids).tolist()
        return [self.name(i) for i in ids_]

    def _lookup(self) -> tuple[np.ndarray, np.ndarray, int]:
        if self._sorted is None:
            n = len(self)
            lens = np.diff(self.name_offsets)
            width = max(int(lens.max()) if n else 1, 1)
            mat = np.zeros((n, width), dtype=np.uint8)
            if n:
                rows = np.repeat(np.arange(n, dtype=np.int64), lens)
                cols = np.arange(len(self.name_blob), dtype=np.int64) - np.repeat(self.name_offsets[:-1], lens)
                mat[rows, cols] = self.name_blob
            keys = mat.view(f"S{width}").reshape(n)
            order = np.argsort(keys, kind="stable")
            self._sorted = (keys[order], order.astype(np.int64), width)
        return self._sorted

    def find(self, name: str) -> int:
        """Member id of ``name`` (the last one if duplicated), or -1.

        Raises:
            ArchiveError: ``name`` is unsafe (absolute path or ``..`` component).
        """
        if is_unsafe_name(name):
            raise ArchiveError(f"refusing to look up unsafe member name {name!r} (absolute path or '..')")
        keys, order, width = self._lookup()
        b = name.encode("utf-8")
        if len(b) > width or not len(keys):
            return -1
        j = int(np.searchsorted(keys, np.bytes_(b), side="right")) - 1
        if j >= 0 and keys[j] == b:
            return int(order[j])
        return -1

    def names_with_prefix(self, prefix: str) -> np.ndarray:
        """Ids (ascending = central-directory order) of members whose name starts with ``prefix``."""
        keys, order, width = self._lookup()
        pb = prefix.encode("utf-8")
        if not pb:
            return np.arange(len(self), dtype=np.int64)
        if len(pb) > width:
            return np.zeros(0, dtype=np.int64)
        lo = int(np.searchsorted(keys, np.bytes_(pb), side="left"))
        upper = _increment(pb)
        hi = len(keys) if upper is None else int(np.searchsorted(keys, np.bytes_(upper), side="left"))
        return np.sort(order[lo:hi])

    # ---------------------------------------------------------------- extraction
    def span(self, i: int) -> tuple[int, int]:
        """``(start, end)``: bytes a request must cover to extract member ``i``.

        Local header (30) + name + central extra length + ``LOCAL_EXTRA_MARGIN`` + compressed data,
        clipped at the start of the central directory.
        """
        i = int(i)
        start = int(self.header_offset[i])
        nlen = int(self.name_offsets[i + 1] - self.name_offsets[i])
        end = start + 30 + nlen + int(self.extra_len[i]) + LOCAL_EXTRA_MARGIN + int(self.comp_size[i])
        return start, min(end, self.data_end)

    def spans(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised :meth:`span`: (starts, ends) int64 arrays for member ``ids``."""
        ids = np.asarray(ids, dtype=np.int64)
        starts = self.header_offset[ids]
        nlen = self.name_offsets[ids + 1] - self.name_offsets[ids]
        ends = starts + 30 + nlen + self.extra_len[ids].astype(np.int64) + LOCAL_EXTRA_MARGIN + self.comp_size[ids]
        return starts, np.minimum(ends, self.data_end)

    def _data_start(self, i: int, need: Callable[[int, int], memoryview], rel: int, buf_start: int, where: str) -> int:
        """Offset (in the buffer) of member ``i``'s data, after checking its local header there.
        ``need(a, b)`` returns the buffer's bytes ``a:b``."""
        hdr = bytes(need(rel, rel + 30))
        sig, _ver, flags, method, _t, _d, _crc, _cs, _us, nlen, elen = _LOCAL.unpack(hdr)
        if sig != _LOCAL_SIG:
            raise ArchiveError(f"{where}: no local header at offset {rel + buf_start} (archive corrupt or index stale)")
        cname = self.name_blob[self.name_offsets[i] : self.name_offsets[i + 1]].tobytes()
        lname = bytes(need(rel + 30, rel + 30 + nlen))
        if lname != cname and lname.decode("cp437", "replace").encode("utf-8") != cname:
            raise ArchiveError(f"{where}: local header names {lname[:80]!r}; archive corrupt or index stale")
        if self.flags[i] & 0x1 or flags & 0x1:
            raise ArchiveError(f"{where}: encrypted members are not supported")
        return rel + 30 + nlen + elen

    def head_spans(self, ids: np.ndarray, nbytes: int) -> tuple[np.ndarray, np.ndarray]:
        """(starts, ends): bytes a request must cover for :meth:`extract_head` of ``ids``."""
        ids = np.asarray(ids, dtype=np.int64)
        starts = self.header_offset[ids]
        nlen = self.name_offsets[ids + 1] - self.name_offsets[ids]
        data = np.minimum(self.comp_size[ids], int(nbytes) + HEAD_SLACK)
        ends = starts + 30 + nlen + self.extra_len[ids].astype(np.int64) + LOCAL_EXTRA_MARGIN + data
        return starts, np.minimum(ends, self.data_end)

    def extract_head(self, i: int, buf: bytes | bytearray | memoryview, buf_start: int, nbytes: int) -> bytes:
        """The first ``nbytes`` uncompressed bytes of member ``i`` (fewer when it is shorter), from
        ``buf`` covering :meth:`head_spans`; no size or CRC check (the member is not read whole).

        Raises:
            ArchiveError: a bad local header, encryption, an unsupported method, corrupt deflate
                data, or ``buf`` ending too early.
        """
        i = int(i)
        where = f"member {self.name(i)!r} of {self.identity}"
        mv = memoryview(buf)
        if mv.ndim != 1 or mv.itemsize != 1:
            mv = mv.cast("B")
        rel = int(self.header_offset[i]) - int(buf_start)

        def need(a: int, b: int) -> memoryview:
            if rel < 0 or b > len(mv):
                raise ArchiveError(f"{where}: the buffer does not cover the member's head; fetch head_spans")
            return mv[a:b]

        dstart = self._data_start(i, need, rel, buf_start, where)
        take = min(int(self.comp_size[i]), int(nbytes) + HEAD_SLACK)
        data = need(dstart, dstart + take)
        method = int(self.method[i])
        if method == 0:
            return bytes(data[:nbytes])
        if method == 8:
            try:
                return zlib.decompressobj(-15).decompress(data, int(nbytes))
            except zlib.error as e:
                raise ArchiveError(f"{where}: corrupt deflate data ({e})") from None
        raise ArchiveError(f"{where}: compression method {method} is not supported (only stored=0 and deflate=8)")

    def extract(self, i: int, buf: bytes | bytearray | memoryview, buf_start: int, reader: RangeReader | None = None) -> bytes:
        """Uncompressed bytes of member ``i`` from ``buf`` (archive bytes starting at ``buf_start``).

        Parses the local header inside ``buf`` (its extra field may differ from the central one),
        inflates (stored or deflate) and checks size and CRC-32 (CRC skipped when
        ``crc_known`` is False). If ``buf`` ends before the member does and ``reader`` is given,
        the missing bytes are read from it.

        Raises:
            ArchiveError: naming the member, on a bad local header, encryption, an unsupported
                method, corrupt deflate data, a size or CRC mismatch.
        """
        i = int(i)
        name = self.name(i)
        where = f"member {name!r} of {self.identity}"
        mv = memoryview(buf)
        if mv.ndim != 1 or mv.itemsize != 1:
            mv = mv.cast("B")
        rel = int(self.header_offset[i]) - int(buf_start)
        if rel < 0:
            raise ArchiveError(f"{where}: buffer starts at {buf_start}, after the member's header at {rel + buf_start}")

        def need(a: int, b: int) -> memoryview:
            nonlocal mv
            if b > len(mv):
                if reader is None:
                    raise ArchiveError(
                        f"{where}: the buffer ({len(mv)} bytes from {buf_start}) ends before the member "
                        f"(needs bytes up to {buf_start + b}); fetch index.span(i)"
                    )
                more = reader.read(buf_start + len(mv), b - len(mv))
                mv = memoryview(bytes(mv) + more)
            return mv[a:b]

        dstart = self._data_start(i, need, rel, buf_start, where)
        cmethod = int(self.method[i])
        csize = int(self.comp_size[i])
        usize = int(self.size[i])
        data = need(dstart, dstart + csize)
        if cmethod == 0:
            if csize != usize:
                raise ArchiveError(f"{where}: stored member with compressed size {csize} != size {usize}")
            out = bytes(data)
        elif cmethod == 8:
            try:
                d = zlib.decompressobj(-15)
                out = d.decompress(data, usize + 1)
                if len(out) <= usize:
                    out += d.flush()
            except zlib.error as e:
                raise ArchiveError(f"{where}: corrupt deflate data ({e})") from None
        else:
            raise ArchiveError(
                f"{where}: compression method {cmethod} is not supported (only stored=0 and deflate=8)"
            )
        if len(out) != usize:
            raise ArchiveError(f"{where}: size mismatch: got {len(out)} bytes, the directory says {usize}")
        if self.crc_known:
            got = zlib.crc32(out) & 0xFFFFFFFF
            if got != int(self.crc[i]):
                raise ArchiveError(
                    f"{where}: CRC-32 mismatch (got {got:08x}, expected {int(self.crc[i]):08x}); the "
                    f"bytes were corrupted in transit or on disk"
                )
        return out


# ---------------------------------------------------------------------------- helpers
def _find_eocd(tail: bytes) -> int | None:
    """Position of the EOCD in ``tail``: the last signature whose comment length fits exactly,
    else the last one that fits at all (trailing garbage), else None."""
    L = len(tail)
    loose = None
    pos = tail.rfind(_EOCD_SIG)
    while pos >= 0:
        if pos + 22 <= L:
            clen = struct.unpack_from("<H", tail, pos + 20)[0]
            if pos + 22 + clen == L:
                return pos
            if loose is None and pos + 22 + clen <= L:
                loose = pos
        pos = tail.rfind(_EOCD_SIG, 0, pos)
    return loose


def _slice(reader: RangeReader, tail: bytes, tail_start: int, offset: int, length: int) -> bytes:
    """Bytes ``[offset, offset+length)``: from ``tail`` when inside it, else one read."""
    if offset < 0 or length < 0 or offset + length > reader.size:
        raise ArchiveError(
            f"{reader.identity}: directory record at {offset} (+{length}) lies outside the archive "
            f"({reader.size} bytes); truncated or corrupt"
        )
    if offset >= tail_start:
        return tail[offset - tail_start : offset - tail_start + length]
    return reader.read(offset, length)


def _u16(buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return buf[pos].astype(np.uint32) | (buf[pos + 1].astype(np.uint32) << 8)


def _u32(buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(buf[pos[:, None] + np.arange(4)]).view("<u4").reshape(len(pos))


def _u64(buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(buf[pos[:, None] + np.arange(8)]).view("<u8").reshape(len(pos))


def _raw_name(cd: bytes, P: np.ndarray, nlen: np.ndarray, k: int) -> str:
    a = int(P[k]) + 46
    return bytes(cd[a : a + int(nlen[k])]).decode("utf-8", "replace")


def _chain_fast(buf: np.ndarray) -> np.ndarray | None:
    """Entry positions of a central directory, vectorised: every ``PK\\1\\2`` signature is a
    candidate; when the candidates form exactly the chain ``p -> p + 46 + n + e + c`` from 0 to
    the end, they are the entries. Returns None when they do not (a signature inside a name or
    extra field, or a corrupt directory): the caller then walks the chain one entry at a time."""
    L = len(buf)
    if L < 46:
        return None
    c = np.nonzero((buf[: L - 3] == 0x50) & (buf[1 : L - 2] == 0x4B) & (buf[2 : L - 1] == 1) & (buf[3:] == 2))[0]
    c = c[c + 46 <= L]
    if not len(c) or c[0] != 0:
        return None
    lens = 46 + _u16(buf, c + 28).astype(np.int64) + _u16(buf, c + 30) + _u16(buf, c + 32)
    nxt = c + lens
    if nxt[-1] != L or not np.array_equal(nxt[:-1], c[1:]):
        return None
    return c.astype(np.int64)


def _zip64_extra(
    cd: bytes, start: int, end: int, want_u: bool, want_c: bool, want_o: bool, want_d: bool
) -> tuple[int | None, int | None, int | None, int | None] | None:
    p = start
    while p + 4 <= end:
        hid, hlen = _EXTRA_HDR.unpack_from(cd, p)
        p += 4
        if p + hlen > end:
            return None
        if hid == 0x0001:
            q, stop = p, p + hlen
            vals: list[int | None] = []
            for want, fmt, sz in ((want_u, "<Q", 8), (want_c, "<Q", 8), (want_o, "<Q", 8), (want_d, "<I", 4)):
                if want:
                    if q + sz > stop:
                        return None
                    vals.append(struct.unpack_from(fmt, cd, q)[0])
                    q += sz
                else:
                    vals.append(None)
            return vals[0], vals[1], vals[2], vals[3]
        p += hlen
    return None


def _increment(b: bytes) -> bytes | None:
    """Smallest byte string greater than every string starting with ``b`` (None if none)."""
    arr = bytearray(b)
    while arr and arr[-1] == 0xFF:
        arr.pop()
    if not arr:
        return None
    arr[-1] += 1
    return bytes(arr)
