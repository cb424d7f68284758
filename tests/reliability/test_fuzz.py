"""Fuzzing what the central-directory fuzzer (tests/streaming/test_archive_fuzz.py) does not reach:
the NIH metadata parsers and the PNG decoder. Any input ends in a result or in the project's own
error (MetadataError / DecodeError) — never another exception, a hang or a crash — and well-formed
rows mixed with garbage rows all survive ("nothing lost").
"""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgae_dx.data.datasets.nih import (
    DATA_ENTRY_HEADER,
    MetadataError,
    parse_bbox_list,
    parse_data_entry,
    parse_image_list,
)
from imgae_dx.data.decode import DecodeError, decode_png

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def _header() -> str:
    return DATA_ENTRY_HEADER if isinstance(DATA_ENTRY_HEADER, str) else ",".join(DATA_ENTRY_HEADER)


def _row(i: int, patient: int, label: str, view: str) -> str:
    return f"{i:08d}_000.png,{label},0,{patient},{20 + i % 60},{'MF'[i % 2]},{view},1024,1024,0.143,0.143,"


GOOD_ROWS = st.lists(
    st.tuples(st.integers(1, 99_999_999), st.integers(0, 30_000),
              st.sampled_from(["No Finding", "Mass|Nodule", "Effusion", "Infiltration"]),
              st.sampled_from(["PA", "AP"])),
    min_size=1, max_size=30, unique_by=lambda t: t[0],
)
# lines no parser may accept as an image row of Data_Entry (too few fields / bad ids / empty)
BAD_ROWS = st.lists(st.one_of(
    st.just("x.png,No Finding"),
    st.text(alphabet="abc;|", min_size=1, max_size=20),  # one field, no comma
    st.builds(lambda s: f"{s}.png,No Finding,0,not-a-number,50,M,PA,1,1,1,1,", st.text("xyz", min_size=1, max_size=5)),
    st.just(",No Finding,0,1,50,M,PA,1,1,1,1,"),
), max_size=10)


def _call(fn, data: bytes):
    try:
        return fn(data)
    except MetadataError as e:
        assert str(e)  # a message a person can act on
        return None


@SETTINGS
@given(st.binary(max_size=3000))
def test_parsers_on_random_bytes(blob: bytes) -> None:
    _call(parse_data_entry, blob)
    _call(parse_bbox_list, blob)
    _call(lambda b: parse_image_list(b, "test_list.txt"), blob)


@SETTINGS
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=2000))
def test_parsers_on_random_text(text: str) -> None:
    data = text.encode()
    _call(parse_data_entry, data)
    _call(parse_bbox_list, data)
    _call(lambda b: parse_image_list(b, "train_val_list.txt"), data)


@SETTINGS
@given(GOOD_ROWS, BAD_ROWS, st.randoms(use_true_random=False), st.booleans())
def test_data_entry_keeps_every_good_row_among_bad_ones(good, bad, rnd, crlf) -> None:
    rows = [_row(*g) for g in good]
    lines = rows + bad
    rnd.shuffle(lines)
    nl = "\r\n" if crlf else "\n"
    data = (_header() + nl + nl.join(lines) + nl).encode()
    total = len(good) + len(bad)
    try:
        table = parse_data_entry(data)
    except MetadataError as e:
        # only when the file is mostly garbage
        assert len(bad) > 10 or not good, str(e)
        assert len(bad) > 0.5 * total or not good
        return
    assert sorted(table.image.tolist()) == sorted(f"{g[0]:08d}_000.png" for g in good)
    assert table.report.malformed == len(bad)
    got = dict(zip(table.image.tolist(), zip(table.patient.tolist(), table.view.tolist(), strict=True), strict=True))
    for i, p, _label, v in good:
        assert got[f"{i:08d}_000.png"] == (p, v)


@SETTINGS
@given(st.lists(st.tuples(st.integers(1, 10**6), st.floats(0, 1024), st.floats(0, 1024),
                          st.floats(0, 500), st.floats(0, 500)), max_size=20),
       st.lists(st.sampled_from(["a.png,Mass,x,1,2,3", "b.png,Mass,1,2", "c.png,Mass,1,2,-3,4",
                                 "d.png,Mass,nan,1,1,1"]), max_size=5))
def test_bbox_list_keeps_good_boxes(good, bad) -> None:
    head = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
    lines = [f"{i:08d}_000.png,Infiltrate,{x!r},{y!r},{w!r},{h!r},,," for i, x, y, w, h in good] + bad
    boxes, rep = parse_bbox_list(("\n".join([head, *lines]) + "\n").encode())
    assert rep.rows == len(good) and rep.malformed == len(bad)
    assert sum(len(v) for v in boxes.values()) == len(good)
    assert all(b[0] == "Infiltration" for v in boxes.values() for b in v)  # NIH's spelling fixed


def _png(img: np.ndarray) -> bytes:
    import cv2

    ok, enc = cv2.imencode(".png", img)
    assert ok
    return enc.tobytes()


VALID_PNG = _png((np.arange(96 * 80, dtype=np.uint32) % 251).astype(np.uint8).reshape(96, 80))


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, len(VALID_PNG) - 1), st.integers(0, 255)), min_size=1, max_size=6))
def test_decode_mutated_png(edits) -> None:
    blob = bytearray(VALID_PNG)
    for pos, val in edits:
        blob[pos] = val
    try:
        out = decode_png(bytes(blob), 32)
    except DecodeError as e:
        assert str(e)
        return
    assert out.dtype == np.uint8 and out.shape == (32, 32)


@SETTINGS
@given(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1), st.sampled_from([1, 2, 4, 8, 16]),
       st.sampled_from([0, 2, 3, 4, 6, 5]))
def test_decode_any_declared_header(width, height, depth, color) -> None:
    """IHDR claims any size / depth / colour type over a tiny stream: refused or decoded, fast."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    blob = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    try:
        out = decode_png(blob, 32)
    except DecodeError:
        return
    assert out.shape == (32, 32)


def test_truncations_of_a_valid_png_never_crash() -> None:
    for cut in range(0, len(VALID_PNG), max(1, len(VALID_PNG) // 200)):
        with pytest.raises(DecodeError):
            decode_png(VALID_PNG[:cut], 32)
    assert decode_png(io.BytesIO(VALID_PNG).getvalue(), 32).shape == (32, 32)
