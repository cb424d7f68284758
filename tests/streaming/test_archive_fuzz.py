"""Fuzzing the central-directory parser: garbage and mutated archives raise ArchiveError only."""

from __future__ import annotations

import io
import random
import zipfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgae_dx.errors import ArchiveError
from imgae_dx.streaming.archive_index import ArchiveIndex
from imgae_dx.streaming.range_reader import BytesReader


def _valid_archive() -> bytes:
    rng = random.Random(0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for k in range(6):
            method = zipfile.ZIP_DEFLATED if k % 2 else zipfile.ZIP_STORED
            z.writestr(f"images_001/images/{k:08d}_000.png", rng.randbytes(200) * 2, compress_type=method)
        z.writestr("Data_Entry_2017.csv", b"a,b\n")
    return buf.getvalue()


VALID = _valid_archive()
SETTINGS = settings(max_examples=300, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def _exercise(blob: bytes) -> None:
    try:
        idx = ArchiveIndex.load(BytesReader(blob))
    except ArchiveError:
        return
    for i in range(len(idx)):
        idx.name(i)
        idx.find(idx.name(i)) if not idx.name(i).startswith("/") else None
        try:
            s, e = idx.span(i)
            if 0 <= s <= e <= len(blob):
                idx.extract(i, blob[s:e], s)
        except ArchiveError:
            pass
    idx.names_with_prefix("images_001/")


@SETTINGS
@given(st.binary(min_size=0, max_size=2000))
def test_random_bytes(blob: bytes) -> None:
    _exercise(blob)


@SETTINGS
@given(st.binary(min_size=0, max_size=300))
def test_random_bytes_with_an_end_record(blob: bytes) -> None:
    """Garbage that does contain an EOCD signature (so the CD parser is reached)."""
    _exercise(blob + b"PK\x05\x06" + blob[:18].ljust(18, b"\0"))


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_mutated_valid_archive(edits: list[tuple[int, int]]) -> None:
    blob = bytearray(VALID)
    for pos, val in edits:
        blob[pos] = val
    _exercise(bytes(blob))


@SETTINGS
@given(st.integers(0, len(VALID)))
def test_truncated_valid_archive(cut: int) -> None:
    _exercise(VALID[:cut])


def _zip64_blob() -> bytes:
    from .test_archive_index import _zip64_everything

    rng = random.Random(1)
    return _zip64_everything([(f"m{k}.bin", rng.randbytes(100) * 3) for k in range(3)])


VALID64 = _zip64_blob()


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, len(VALID64) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_mutated_zip64_archive(edits: list[tuple[int, int]]) -> None:
    blob = bytearray(VALID64)
    tail = len(blob) - 250  # aim most edits at the directory, ZIP64 records and extras
    for pos, val in edits:
        blob[max(pos, tail) if pos % 4 else pos] = val
    _exercise(bytes(blob))
