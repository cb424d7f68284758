"""The split PNG decoder: pixel-identical to libpng on every filter type, strict on bad input.

PNGs are written by a tiny encoder in this file that picks the filter of every row (so each of
the five filter types, and rows mixing them, are exercised; libpng's own encoder picks them
adaptively) and splits IDAT as asked. References are ``cv2.imdecode`` (libpng).
"""

from __future__ import annotations

import struct
import threading
import time
import zipfile
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from imgae_dx.data import png_split
from imgae_dx.data.decode import DecodeError, decode_gray, decode_png

pytestmark = pytest.mark.skipif(not png_split.available(), reason=f"{png_split.why_unavailable()}")

NONE, SUB, UP, AVG, PAETH = range(5)


# ------------------------------------------------------------------------------ tiny encoder
def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _filter_rows(img: np.ndarray, filters: list[int]) -> bytes:
    """Filtered scanlines of a uint8 H×W image, row y with filter type ``filters[y]``."""
    out = bytearray()
    prev = np.zeros(img.shape[1], np.int32)
    for y, f in enumerate(filters):
        row = img[y].astype(np.int32)
        left = np.concatenate([[0], row[:-1]])
        upleft = np.concatenate([[0], prev[:-1]])
        pred = {NONE: 0, SUB: left, UP: prev, AVG: (left + prev) >> 1, PAETH: _paeth(left, prev, upleft)}[f]
        out.append(f)
        out += ((row - pred) & 0xFF).astype(np.uint8).tobytes()
        prev = row
    return bytes(out)


def _chunk(ctype: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(ctype + data) if crc is None else crc
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", crc & 0xFFFFFFFF)


def _ihdr(w: int, h: int, depth: int = 8, color: int = 0, interlace: int = 0) -> bytes:
    return _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, interlace))


def encode(img: np.ndarray, filters: int | list[int], *, level: int = 6, idat_size: int | None = None,
           before_idat: bytes = b"", zdata: bytes | None = None) -> bytes:
    """An 8-bit gray PNG of ``img`` (one filter for all rows, or one per row)."""
    h, w = img.shape
    rows = [filters] * h if isinstance(filters, int) else list(filters)
    z = zlib.compress(_filter_rows(img, rows), level) if zdata is None else zdata
    step = idat_size or len(z) or 1
    idats = b"".join(_chunk(b"IDAT", z[i:i + step]) for i in range(0, len(z), step))
    return png_split.PNG_SIGNATURE + _ihdr(w, h) + before_idat + idats + _chunk(b"IEND", b"")


def _cv2(data: bytes) -> np.ndarray | None:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def _fast(data: bytes) -> np.ndarray:
    out = png_split.decode_gray8(data, max_side=8192)
    assert out is not None, "the split path did not take this PNG"
    return out


def _images(h: int, w: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    smooth = ((x * 3 + y * 5) // 2 % 256).astype(np.uint8)
    return [rng.integers(0, 256, (h, w), dtype=np.uint8), smooth,
            np.full((h, w), 255, np.uint8), np.zeros((h, w), np.uint8)]


# ------------------------------------------------------------------------------ pixel identity
@pytest.mark.parametrize("filters", [NONE, SUB, UP, AVG, PAETH, "mixed"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (2, 2), (5, 3), (17, 31), (64, 255)])
def test_every_filter_type_matches_libpng(filters, shape):
    h, w = shape
    rng = np.random.default_rng(h * 1000 + w)
    for img in _images(h, w, seed=h + w):
        rows = rng.integers(0, 5, h).tolist() if filters == "mixed" else filters
        data = encode(img, rows)
        assert np.array_equal(_fast(data), _cv2(data))
        assert np.array_equal(_fast(data), img)


def test_paeth_on_noise_and_split_idat_matches_libpng():
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, (300, 301), dtype=np.uint8)
    img[100:200] = np.clip(img[100:200] // 8 + np.arange(301) // 2, 0, 255)  # smooth band
    rows = rng.integers(0, 5, 300).tolist()
    for idat_size in (1, 7, 8192, None):
        data = encode(img, rows, idat_size=idat_size)
        assert np.array_equal(_fast(data), _cv2(data))
    # an ancillary chunk (even with a bad CRC, as libpng) does not change the pixels
    text = _chunk(b"tEXt", b"Comment\0hello", crc=0)
    data = encode(img, rows, before_idat=text)
    assert np.array_equal(_fast(data), img)


def test_paeth_threshold_form_equals_the_spec_for_all_bytes():
    """The C loop's branch-free Paeth predictor equals the spec's on all 2^24 (a, b, c)."""
    a, b, c = (v.ravel() for v in np.meshgrid(*(np.arange(256, dtype=np.int16),) * 3, indexing="ij"))
    thresh = 3 * c - (a + b)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    fast = np.where(thresh <= lo, hi, np.where(hi <= thresh, lo, c))
    assert np.array_equal(fast, _paeth(a, b, c))


def test_sample_archive_members_match_libpng(small_archive):
    with zipfile.ZipFile(small_archive) as z:
        pngs = [z.read(n) for n in z.namelist() if n.endswith(".png")]
    fast = 0
    for data in pngs:
        ref = _cv2(data)
        got = decode_gray(data)
        if png_split.decode_gray8(data, max_side=8192) is not None:
            fast += 1
        if ref.ndim == 2:
            assert np.array_equal(got, ref)
        assert np.array_equal(got, decode_gray(data, decoder="cv2"))
        assert np.array_equal(decode_png(data, 64), decode_png(data, 64, decoder="cv2"))
    assert fast >= 0.9 * len(pngs)  # all but the sample's RGBA images


# ------------------------------------------------------------------------------ other flavours
def _adam7(img: np.ndarray) -> bytes:
    """Interlaced (Adam7) 8-bit gray PNG, filter None on every row."""
    h, w = img.shape
    raw = bytearray()
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4),
                           (1, 0, 2, 2), (0, 1, 1, 2)):
        sub = img[y0::dy, x0::dx]
        if sub.size:
            for row in sub:
                raw += b"\0" + row.tobytes()
    return (png_split.PNG_SIGNATURE + _ihdr(w, h, interlace=1) + _chunk(b"IDAT", zlib.compress(bytes(raw)))
            + _chunk(b"IEND", b""))


def _pil(im: Image.Image) -> bytes:
    import io

    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue()


def test_other_flavours_go_through_libpng():
    g = _images(37, 41, seed=3)[0]
    flavours = {
        "interlaced": _adam7(g),
        "rgba": cv2.imencode(".png", np.dstack([g, g, g, np.full_like(g, 255)]))[1].tobytes(),
        "rgb": cv2.imencode(".png", np.dstack([g, g, g]))[1].tobytes(),
        "16-bit": cv2.imencode(".png", g.astype(np.uint16) * 257)[1].tobytes(),
        "palette": _pil(Image.fromarray(g).convert("P")),
        "gray+alpha": _pil(Image.fromarray(np.dstack([g, np.full_like(g, 255)]), mode="LA")),
        "gray+tRNS": encode(g, SUB, before_idat=_chunk(b"tRNS", b"\0\x07")),
    }
    for name, data in flavours.items():
        assert png_split.decode_gray8(data, max_side=8192) is None, name
        assert np.array_equal(decode_gray(data), decode_gray(data, decoder="cv2")), name
    assert np.array_equal(decode_gray(flavours["interlaced"]), g)
    assert np.array_equal(decode_gray(flavours["16-bit"]), g)


def test_unknown_decoder_name_is_refused():
    with pytest.raises(ValueError, match="auto, cv2"):
        decode_gray(encode(np.zeros((2, 2), np.uint8), NONE), decoder="pyspng")


# ------------------------------------------------------------------------------ bad input
def _good() -> tuple[np.ndarray, bytes]:
    img = _images(40, 33, seed=11)[0]
    return img, encode(img, PAETH, idat_size=200)


def _chunks(data: bytes) -> list[tuple[int, bytes, int]]:
    """(offset, type, length) of every chunk."""
    out, pos = [], 8
    while pos < len(data):
        n, t = struct.unpack(">I4s", data[pos:pos + 8])
        out.append((pos, t, n))
        pos += 12 + n
    return out


def test_truncated_anywhere_is_a_decode_error():
    _, data = _good()
    cuts = {8, 20, 33, 34, len(data) - 1, len(data) - 12}
    cuts |= {off + d for off, _, _ in _chunks(data) for d in (0, 4, 9)}
    for cut in sorted(c for c in cuts if c < len(data)):
        with pytest.raises(DecodeError, match="truncated|IHDR|signature"):
            decode_png(data[:cut], 16)


@pytest.mark.parametrize("which", [b"IHDR", b"IDAT", b"IEND"])
def test_bad_crc_of_a_critical_chunk(which):
    _, data = _good()
    off, _, n = next(c for c in _chunks(data) if c[1] == which)
    bad = bytearray(data)
    bad[off + 8 + n] ^= 0x01  # first CRC byte
    with pytest.raises(DecodeError, match=f"CRC-32 mismatch in the {which.decode()} chunk"):
        decode_png(bytes(bad), 16)


def test_bad_adler32_is_a_decode_error():
    img, _ = _good()
    z = bytearray(zlib.compress(_filter_rows(img, [SUB] * img.shape[0])))
    z[-1] ^= 0xFF  # Adler-32 is the stream's last 4 bytes; chunk CRCs are recomputed: valid
    data = encode(img, SUB, zdata=bytes(z))
    with pytest.raises(DecodeError, match="Adler-32"):
        decode_png(data, 16)


def test_image_data_too_long_or_too_short():
    img, _ = _good()
    h = img.shape[0]
    longer = zlib.compress(_filter_rows(np.vstack([img, img[:1]]), [UP] * (h + 1)))
    with pytest.raises(DecodeError, match="more data than"):
        decode_png(encode(img, UP, zdata=longer), 16)
    shorter = zlib.compress(_filter_rows(img[:-1], [UP] * (h - 1)))
    with pytest.raises(DecodeError, match="IDAT inflates to .* bytes"):
        decode_png(encode(img, UP, zdata=shorter), 16)


def test_bad_filter_type_names_the_row():
    img, _ = _good()
    raw = bytearray(_filter_rows(img, [SUB] * img.shape[0]))
    raw[5 * (img.shape[1] + 1)] = 5
    with pytest.raises(DecodeError, match="row 5 has filter type 5"):
        decode_png(encode(img, SUB, zdata=zlib.compress(bytes(raw))), 16)


def test_ihdr_bombs_refused_before_allocating():
    tiny = zlib.compress(b"\0" * 10)
    for side, why in ((20000, "decompression bomb"), (8000, "holds only .* bytes of image data")):
        data = (png_split.PNG_SIGNATURE + _ihdr(side, side) + _chunk(b"IDAT", tiny) + _chunk(b"IEND", b""))
        with pytest.raises(DecodeError, match=why):
            decode_png(data, 16)


def test_structural_errors():
    img, data = _good()
    chunks = _chunks(data)
    idats = [c for c in chunks if c[1] == b"IDAT"]
    assert len(idats) > 2
    # an ancillary chunk between two IDATs
    off = idats[1][0]
    split = data[:off] + _chunk(b"tEXt", b"a\0b") + data[off:]
    with pytest.raises(DecodeError, match="not consecutive"):
        decode_png(split, 16)
    # no IEND
    with pytest.raises(DecodeError, match="no IEND"):
        decode_png(data[:chunks[-1][0]], 16)
    # garbage where a chunk type should be
    bad = bytearray(data)
    bad[idats[0][0] + 4:idats[0][0] + 8] = b"I\x00AT"
    with pytest.raises(DecodeError, match="invalid chunk type"):
        decode_png(bytes(bad), 16)
    # IHDR not first
    body = data[8:]
    ihdr_len = 25
    swapped = data[:8] + body[ihdr_len:ihdr_len + 12 + idats[0][2]] + body[:ihdr_len]
    with pytest.raises(DecodeError, match="first chunk is not IHDR"):
        decode_png(swapped, 16)


# ------------------------------------------------------------------------------ threads
def _other_thread_progress_during(call) -> int:
    """Iterations a spinning Python thread makes during the middle third of ``call``.

    If ``call`` held the GIL, the spinner could only run around its ends (a switch interval or a
    scheduling delay before ``call`` is entered, or after it returned but before the end is
    timed): never in the middle third of a 100+ ms call (checked with a GIL-holding ``sorted``
    of a million floats: 0). The calls below are single C calls on 64 MB.
    """
    stamps: list[float] = []
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            stamps.append(time.perf_counter())

    th = threading.Thread(target=spin)
    th.start()
    try:
        time.sleep(0.01)
        t0 = time.perf_counter()
        call()
        t1 = time.perf_counter()
    finally:
        stop.set()
        th.join()
    third = (t1 - t0) / 3
    return sum(t0 + third < s < t1 - third for s in stamps)


def test_gil_released_during_inflate_and_unfilter():
    import deflate
    from imgae_dx.data._png_unfilter import unfilter_gray8

    rng = np.random.default_rng(0)
    w, h = 16383, 4096
    raw = rng.integers(0, 256, (h, w + 1), dtype=np.uint8)
    raw[:, 0] = PAETH  # Paeth rows over noise: the slowest filter
    pixels = np.empty((h, w), np.uint8)
    assert _other_thread_progress_during(lambda: unfilter_gray8(raw, pixels, w, h)) > 0
    pixels = None
    raw &= 7  # few matches: inflates slowly
    z = zlib.compress(raw, 1)
    assert _other_thread_progress_during(lambda: deflate.zlib_decompress(z, raw.nbytes)) > 0


def test_without_the_fast_path_everything_goes_through_libpng(monkeypatch, caplog):
    monkeypatch.setattr(png_split, "_unfilter", None)
    monkeypatch.setattr(png_split, "_why_unavailable", "extension missing (test)")
    monkeypatch.setattr(png_split, "_notice_given", False)
    monkeypatch.delenv("RANK", raising=False)
    img = _images(20, 30, seed=4)[1]
    data = encode(img, PAETH)
    with caplog.at_level("WARNING", logger="imgae_dx.data.png_split"):
        assert png_split.decode_gray8(data, max_side=8192) is None
        assert np.array_equal(decode_gray(data), img)
        assert np.array_equal(decode_gray(data), img)
    notices = [r for r in caplog.records if "fast PNG decoder unavailable" in r.getMessage()]
    assert len(notices) == 1 and "extension missing (test)" in notices[0].getMessage()
