"""ArchiveIndex: EOCD / ZIP64 / central directory parsing, lookups, extraction, on-disk cache."""

from __future__ import annotations

import os
import random
import struct
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from imgae_dx.errors import ArchiveError
from imgae_dx.streaming.archive_index import ArchiveIndex, is_unsafe_name
from imgae_dx.streaming.range_reader import BytesReader, LocalFileReader

from .conftest import build_zip


def _index(path: Path) -> tuple[ArchiveIndex, LocalFileReader]:
    r = LocalFileReader(path)
    return ArchiveIndex.load(r), r


def test_columns_match_zipfile(zip_path: Path, zip_members: dict[str, bytes]) -> None:
    idx, r = _index(zip_path)
    infos = zipfile.ZipFile(zip_path).infolist()
    assert len(idx) == len(infos) == len(zip_members)
    for i, zi in enumerate(infos):
        assert idx.name(i) == zi.filename
        assert idx.header_offset[i] == zi.header_offset
        assert idx.comp_size[i] == zi.compress_size
        assert idx.size[i] == zi.file_size
        assert idx.crc[i] == zi.CRC
        assert idx.method[i] == zi.compress_type
    assert set(np.unique(idx.method).tolist()) == {0, 8}
    assert idx.header_offset.dtype == np.int64 and idx.crc.dtype == np.uint32
    assert idx.name_blob.dtype == np.uint8 and len(idx.name_offsets) == len(idx) + 1


def test_extract_every_member(zip_path: Path, zip_members: dict[str, bytes]) -> None:
    idx, r = _index(zip_path)
    data = zip_path.read_bytes()
    for i in range(len(idx)):
        s, e = idx.span(i)
        assert idx.extract(i, r.read(s, e - s), s) == zip_members[idx.name(i)]
        # from the whole file as one buffer, too
        assert idx.extract(i, data, 0) == zip_members[idx.name(i)]


def test_find_and_prefix(zip_path: Path, zip_members: dict[str, bytes]) -> None:
    idx, _ = _index(zip_path)
    names = list(zip_members)
    for k, n in enumerate(names):
        assert idx.find(n) == k
    assert idx.find("nope.png") == -1
    assert idx.find("images_001/images/0001000") == -1  # prefix of a name is not a name
    assert idx.find("x" * 500) == -1
    ids = idx.names_with_prefix("images_001/")
    assert [idx.name(i) for i in ids] == [n for n in names if n.startswith("images_001/")]
    assert list(idx.names_with_prefix("")) == list(range(len(idx)))
    assert len(idx.names_with_prefix("images_009/")) == 0
    assert len(idx.names_with_prefix("zzzz")) == 0
    with pytest.raises(ArchiveError, match="unsafe"):
        idx.find("../etc/passwd")
    with pytest.raises(ArchiveError, match="unsafe"):
        idx.find("/etc/passwd")


def test_unsafe_names_and_dirs_excluded(tmp_path: Path) -> None:
    p = tmp_path / "evil.zip"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("ok/a.txt", b"a")
        z.writestr("dir/", b"")
        for bad in ("../escape.txt", "/abs.txt", "a/../../b.txt", "a\\..\\b.txt", "C:/win.txt", "x/.."):
            zi = zipfile.ZipInfo(bad)  # ZipInfo would sanitise nothing here but the leading '/'
            zi.filename = bad
            z.writestr(zi, b"evil")
        z.writestr("ok/..hidden", b"fine")  # '..' inside a name is not a component
    idx, _ = _index(p)
    assert sorted(idx.names()) == ["ok/..hidden", "ok/a.txt"]
    assert idx.excluded == {"dirs": 1, "unsafe": 6}
    assert is_unsafe_name("a/../b") and not is_unsafe_name("a/..b/c")


def test_duplicates_find_returns_last(tmp_path: Path) -> None:
    p = tmp_path / "dup.zip"
    with zipfile.ZipFile(p, "w") as z, pytest.warns(UserWarning):
        z.writestr("x.txt", b"first")
        z.writestr("x.txt", b"second")
    idx, r = _index(p)
    i = idx.find("x.txt")
    assert i == 1
    s, e = idx.span(i)
    assert idx.extract(i, r.read(s, e - s), s) == b"second"


def test_cp437_and_utf8_names(tmp_path: Path) -> None:
    p = tmp_path / "names.zip"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("caf\u00e9/\u00fc.txt", b"utf8")  # zipfile sets the UTF-8 flag
        z.writestr("legacy_?.txt", b"cp437")  # ASCII, no flag; patched to cp437 0x82 below
    raw = p.read_bytes().replace(b"legacy_?.txt", b"legacy_\x82.txt")
    p.write_bytes(raw)
    with zipfile.ZipFile(p) as z:
        assert z.namelist() == ["caf\u00e9/\u00fc.txt", "legacy_\u00e9.txt"]
    idx, r = _index(p)
    assert idx.names() == ["caf\u00e9/\u00fc.txt", "legacy_\u00e9.txt"]
    assert idx.find("caf\u00e9/\u00fc.txt") == 0
    i = idx.find("legacy_\u00e9.txt")
    assert i == 1
    s, e = idx.span(i)
    assert idx.extract(i, r.read(s, e - s), s) == b"cp437"


def test_signature_bytes_inside_a_name(tmp_path: Path) -> None:
    """A central-directory signature inside a name defeats the vectorised walk; the exact walk
    takes over."""
    p = tmp_path / "sig.zip"
    names = ["a.txt", "weird PK\x01\x02 name.txt", "c.txt"]
    with zipfile.ZipFile(p, "w") as z:
        for n in names:
            z.writestr(n, n.encode() * 3)
    idx, r = _index(p)
    assert idx.names() == names
    for i, n in enumerate(names):
        s, e = idx.span(i)
        assert idx.extract(i, r.read(s, e - s), s) == n.encode() * 3


def test_comment_and_trailing_garbage(tmp_path: Path, zip_members: dict[str, bytes]) -> None:
    p = build_zip(tmp_path / "c.zip", zip_members)
    with zipfile.ZipFile(p, "a") as z:
        z.comment = b"PK\x05\x06 fake eocd inside the comment " + b"x" * 60000
    idx, r = _index(p)
    assert len(idx) == len(zip_members)
    i = idx.find("test_list.txt")
    s, e = idx.span(i)
    assert idx.extract(i, r.read(s, e - s), s) == b"a\nb\n"


def test_not_a_zip_and_truncated(tmp_path: Path, zip_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(os.urandom(100_000).replace(b"PK", b"pk"))
    with pytest.raises(ArchiveError, match="not a zip archive"):
        _index(junk)
    tiny = tmp_path / "tiny.zip"
    tiny.write_bytes(b"PK")
    with pytest.raises(ArchiveError, match="not a zip"):
        _index(tiny)
    data = zip_path.read_bytes()
    # lose the start of the central directory: the end record then points at garbage
    cd_off = struct.unpack_from("<I", data, len(data) - 6)[0]
    cut = tmp_path / "cut.zip"
    cut.write_bytes(data[: cd_off + 10])
    with pytest.raises(ArchiveError):
        _index(cut)


def test_extract_errors_name_the_member(zip_path: Path) -> None:
    idx, r = _index(zip_path)
    i = idx.find("images_001/images/00010003_000.png")
    s, e = idx.span(i)
    buf = bytearray(r.read(s, e - s))
    good = bytes(buf)
    # corrupt one data byte → CRC mismatch (or corrupt deflate), naming the member
    nlen = struct.unpack_from("<H", buf, 26)[0]
    elen = struct.unpack_from("<H", buf, 28)[0]
    buf[30 + nlen + elen + 100] ^= 0xFF
    with pytest.raises(ArchiveError, match="00010003_000.png"):
        idx.extract(i, bytes(buf), s)
    # header missing
    with pytest.raises(ArchiveError, match="no local header"):
        idx.extract(i, b"\0" * len(good), s)
    # buffer too short: clear error without a reader, transparently completed with one
    short = good[: 30 + nlen + elen + 10]
    with pytest.raises(ArchiveError, match="ends before the member"):
        idx.extract(i, short, s)
    assert idx.extract(i, short, s, reader=r) == idx.extract(i, good, s)
    with pytest.raises(ArchiveError, match="starts at"):
        idx.extract(i, good, s + 1)


def test_unsupported_method_and_size_mismatch(tmp_path: Path) -> None:
    p = tmp_path / "bz.zip"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("b.bin", b"hello" * 100, compress_type=zipfile.ZIP_BZIP2)
        z.writestr("s.bin", b"stored data", compress_type=zipfile.ZIP_STORED)
    idx, r = _index(p)
    with pytest.raises(ArchiveError, match=r"b\.bin.*method 12"):
        s, e = idx.span(0)
        idx.extract(0, r.read(s, e - s), s)
    idx.size[1] += 1  # the directory lies about the size
    with pytest.raises(ArchiveError, match=r"s\.bin"):
        s, e = idx.span(1)
        idx.extract(1, r.read(s, e - s), s)


def _handmade(members: list[tuple[str, bytes]], local_extra: int, central_extra: int) -> bytes:
    """Stored members whose local extra field differs in length from the central one."""
    out, cd = bytearray(), bytearray()
    for name, data in members:
        nb = name.encode()
        crc = zlib.crc32(data)
        off = len(out)
        lx = struct.pack("<HH", 0xCAFE, local_extra - 4) + b"\x07" * (local_extra - 4) if local_extra else b""
        cx = struct.pack("<HH", 0xCAFE, central_extra - 4) + b"\x07" * (central_extra - 4) if central_extra else b""
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 0, 0, 0, crc, len(data), len(data),
                           len(nb), len(lx)) + nb + lx + data
        cd += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, crc, len(data),
                          len(data), len(nb), len(cx), 0, 0, 0, 0, off) + nb + cx
    n = len(members)
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, n, n, len(cd), len(out), 0)
    return bytes(out + cd + eocd)


@pytest.mark.parametrize("local_extra,central_extra", [(0, 0), (100, 0), (0, 60), (400, 8)])
def test_local_extra_differs_from_central(local_extra: int, central_extra: int) -> None:
    members = [("a.txt", b"payload-a" * 50), ("b.txt", b"payload-b" * 70), ("c.txt", b"c")]
    blob = _handmade(members, local_extra, central_extra)
    reader = BytesReader(blob)
    idx = ArchiveIndex.load(reader)
    assert idx.extra_len.tolist() == [central_extra] * 3
    for i, (_name, data) in enumerate(members):
        s, e = idx.span(i)
        buf = reader.read(s, e - s)
        if local_extra - central_extra > 256:
            # beyond the span's margin: a clear error, or completed from the reader
            with pytest.raises(ArchiveError, match="ends before the member"):
                idx.extract(i, buf, s)
        else:
            assert idx.extract(i, buf, s) == data
        assert idx.extract(i, buf, s, reader=reader) == data


# --------------------------------------------------------------------------- ZIP64
def _zip64_everything(members: list[tuple[str, bytes]], other_extra_first: bool = False) -> bytes:
    """Hand-written archive where every CD entry uses ZIP64 extras for sizes *and* offset
    (optionally behind another extra field, which takes the parser's slow path)."""
    out = bytearray()
    cd = bytearray()
    for name, data in members:
        nb = name.encode()
        comp = zlib.compressobj(6, zlib.DEFLATED, -15)
        cdata = comp.compress(data) + comp.flush()
        crc = zlib.crc32(data)
        off = len(out)
        lextra = struct.pack("<HHQQ", 1, 16, len(data), len(cdata))
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 45, 0, 8, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                           len(nb), len(lextra)) + nb + lextra + cdata
        cextra = struct.pack("<HHQQQ", 1, 24, len(data), len(cdata), off)
        if other_extra_first:
            cextra = struct.pack("<HH", 0x5455, 5) + b"\x01abcd" + cextra
        cd += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 45, 45, 0, 8, 0, 0, crc, 0xFFFFFFFF,
                          0xFFFFFFFF, len(nb), len(cextra), 0, 0, 0, 0, 0xFFFFFFFF) + nb + cextra
    cd_off = len(out)
    out += cd
    z64_off = len(out)
    n = len(members)
    out += struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, len(cd), cd_off)
    out += struct.pack("<4sIQI", b"PK\x06\x07", 0, z64_off, 1)
    out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return bytes(out)


@pytest.mark.parametrize("other_extra_first", [False, True])
def test_zip64_extra_fields_for_sizes_and_offsets(other_extra_first: bool) -> None:
    rng = random.Random(3)
    members = [(f"m{k}.bin", rng.randbytes(500) * 3) for k in range(5)]
    blob = _zip64_everything(members, other_extra_first)
    # zipfile agrees it is a valid archive
    import io

    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        assert [z.read(n) for n, _ in members] == [d for _, d in members]
    idx = ArchiveIndex.load(BytesReader(blob))
    assert len(idx) == 5
    for k, (name, data) in enumerate(members):
        assert idx.find(name) == k
        assert idx.size[k] == len(data)
        assert idx.extract(k, blob, 0) == data
    # a saturated field without its extra → clear error
    bad = blob.replace(struct.pack("<HHQQQ", 1, 24, 1500, idx.comp_size[2], idx.header_offset[2]),
                       struct.pack("<HHQQQ", 0x7777, 24, 0, 0, 0))
    with pytest.raises(ArchiveError, match="m2.bin.*ZIP64"):
        ArchiveIndex.load(BytesReader(bad))


def _sparse_zip64(path: Path, members: dict[str, bytes], gap_at: int) -> None:
    """zipfile writes the first members, then continues past ``gap_at`` (a sparse hole)."""
    with zipfile.ZipFile(path, "w", allowZip64=True) as z:
        items = list(members.items())
        half = len(items) // 2
        for name, data in items[:half]:
            z.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED)
        z.start_dir = gap_at  # zipfile writes the next local header here (the file becomes sparse)
        for name, data in items[half:]:
            z.writestr(name, data, compress_type=zipfile.ZIP_STORED)


@pytest.fixture(scope="module")
def sparse_zip64(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    rng = random.Random(7)
    members = {f"images_{1 + k // 4:03d}/images/{k:08d}_000.png": rng.randbytes(3000) for k in range(8)}
    p = tmp_path_factory.mktemp("z64") / "big.zip"
    _sparse_zip64(p, members, gap_at=(4 << 30) + 12345)
    st = p.stat()
    if st.st_blocks * 512 > 64 << 20:
        pytest.skip("filesystem does not support sparse files")
    return p, members


def test_zip64_archive_over_4gib(sparse_zip64: tuple[Path, dict[str, bytes]]) -> None:
    p, members = sparse_zip64
    assert p.stat().st_size > 4 << 30
    t = time.perf_counter()
    idx, r = _index(p)
    assert time.perf_counter() - t < 2
    assert len(idx) == len(members)
    assert int(idx.header_offset.max()) > 4 << 30
    with zipfile.ZipFile(p) as z:
        for zi in z.infolist():
            i = idx.find(zi.filename)
            assert idx.header_offset[i] == zi.header_offset
    for name, data in members.items():
        i = idx.find(name)
        s, e = idx.span(i)
        assert idx.extract(i, r.read(s, e - s), s) == data


# ----------------------------------------------------------------------------- cache
def test_index_cache_roundtrip(zip_path: Path, tmp_path: Path) -> None:
    cache = tmp_path / "idx"
    r = LocalFileReader(zip_path)
    a = ArchiveIndex.load(r, cache)
    files = list(cache.glob("archive-index-*.npz"))
    assert len(files) == 1 and not list(cache.glob("*.tmp"))
    r2 = LocalFileReader(zip_path)
    b = ArchiveIndex.load(r2, cache)
    assert r2.stats.requests == 0  # nothing read: the central directory came from the cache
    for col in ("header_offset", "comp_size", "size", "method", "crc", "extra_len", "name_blob", "name_offsets"):
        assert np.array_equal(getattr(a, col), getattr(b, col))
    assert b.find("test_list.txt") == a.find("test_list.txt")
    # a corrupt cache file is ignored and rewritten
    files[0].write_bytes(b"garbage")
    r3 = LocalFileReader(zip_path)
    c = ArchiveIndex.load(r3, cache)
    assert r3.stats.requests > 0 and len(c) == len(a)
    # a new version of the archive gets a new key
    os.utime(zip_path, ns=(1, 1))
    r4 = LocalFileReader(zip_path)
    ArchiveIndex.load(r4, cache)
    assert r4.stats.requests > 0
    assert len(list(cache.glob("archive-index-*.npz"))) == 2


class _SparseReader(BytesReader):
    """A huge archive whose only real bytes are its tail (central directory + end record)."""

    def __init__(self, tail: bytes, size: int) -> None:
        super().__init__(tail)
        self.size = size
        self._tail_start = size - len(tail)

    def read(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        self.stats.add(bytes_fetched=length, requests=1)
        a = max(offset, self._tail_start)
        head = b"\0" * (a - offset)
        return head + self._data[a - self._tail_start : offset + length - self._tail_start]


def test_parse_112k_members_fast() -> None:
    """A central directory with NIH's member count (42 GB archive) parses in well under 2 s."""
    n = 112_120
    names = [f"images_{1 + k // 10000:03d}/images/{k:08d}_000.png".encode() for k in range(n)]
    cd = bytearray()
    off = 0
    for k, nb in enumerate(names):
        z64 = off > 0xFFFFFFFF
        extra = struct.pack("<HHQ", 1, 8, off) if z64 else b""
        cd += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 45, 45, 0, 8, 0, 0, k, 380_000, 400_000,
                          len(nb), len(extra), 0, 0, 0, 0, 0xFFFFFFFF if z64 else off) + nb + extra
        off += 30 + len(nb) + 380_000
    z64_off = off + len(cd)
    tail = bytes(cd) + struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, len(cd), off)
    tail += struct.pack("<4sIQI", b"PK\x06\x07", 0, z64_off, 1)
    tail += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    reader = _SparseReader(tail, off + len(tail))
    t = time.perf_counter()
    idx = ArchiveIndex.load(reader)
    parse_s = time.perf_counter() - t
    t = time.perf_counter()
    assert idx.find("images_012/images/00112119_000.png") == n - 1
    assert len(idx.names_with_prefix("images_001/")) == 10000
    lookup_s = time.perf_counter() - t
    assert len(idx) == n
    assert int(idx.header_offset[-1]) > 32 << 30
    print(f"parse {parse_s:.3f}s lookup {lookup_s:.3f}s")
    assert parse_s < 2.0, parse_s
    assert lookup_s < 1.0, lookup_s
