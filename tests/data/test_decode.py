"""PNG decoding: every PNG flavour → uint8 gray at model size; bad input → DecodeError."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from imgae_dx.data.decode import DecodeError, decode_gray, decode_png, png_size


def _gradient(h: int = 96, w: int = 96) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return ((x * 2 + y) % 256).astype(np.uint8)


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def _pil_png(im: Image.Image) -> bytes:
    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue()


def test_gray8_roundtrip_and_area_resize():
    g = _gradient(64, 64)
    assert np.array_equal(decode_gray(_png(g)), g)
    out = decode_png(_png(g), 32)
    assert out.dtype == np.uint8 and out.shape == (32, 32)
    # area averaging = mean of 2×2 blocks (rounded)
    expect = g.reshape(32, 2, 32, 2).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(out.astype(np.float64) - expect).max() <= 1.0


def test_rgb_and_rgba_become_luminance():
    g = _gradient()
    rgb = np.dstack([g, g, g])
    rgba = np.dstack([g, g, g, np.full_like(g, 255)])
    assert np.array_equal(decode_gray(_png(rgb)), g)
    assert np.array_equal(decode_gray(_png(rgba)), g)
    # a coloured pixel converts with the luminance weights, not a channel pick
    col = np.zeros((8, 8, 3), np.uint8)
    col[..., 2] = 200  # red in BGR
    v = decode_gray(_png(col))[0, 0]
    assert abs(int(v) - round(0.299 * 200)) <= 1


def test_sixteen_bit_scaled_to_eight():
    g16 = (_gradient().astype(np.uint16) * 257)
    out = decode_gray(_png(g16))
    assert out.dtype == np.uint8
    assert np.array_equal(out, _gradient())


def test_palette_and_gray_alpha():
    g = _gradient()
    pal = Image.fromarray(g).convert("P")
    assert pal.mode == "P"
    assert png_size(_pil_png(pal))[3] == 3  # color type 3: palette
    np.testing.assert_allclose(decode_gray(_pil_png(pal)).astype(int), g.astype(int), atol=2)
    la = Image.fromarray(np.dstack([g, np.full_like(g, 255)]), mode="LA")
    assert png_size(_pil_png(la))[3] == 4  # gray + alpha
    assert np.array_equal(decode_gray(_pil_png(la)), g)


def test_png_size_reads_ihdr():
    assert png_size(_png(_gradient(40, 70))) == (70, 40, 8, 0)


def _bomb_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\0" * 64


def test_decompression_bomb_refused_before_decoding():
    with pytest.raises(DecodeError, match="20000×20000.*decompression bomb"):
        decode_png(_bomb_header(20000, 20000), 128)
    with pytest.raises(DecodeError, match="more than the 64×64"):
        decode_png(_png(_gradient(65, 65)), 32, max_side=64)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "signature"),
        (b"GIF89a" + b"\0" * 40, "signature"),
        (b"\x89PNG\r\n\x1a\n" + b"\0\0\0\x0dIDAT" + b"\0" * 30, "IHDR"),
    ],
)
def test_not_png(data, reason):
    with pytest.raises(DecodeError, match=reason):
        decode_png(data, 32)


def test_truncated_and_corrupt_png():
    rng = np.random.default_rng(0)
    data = _png(rng.integers(0, 256, (128, 128), dtype=np.uint8))
    for cut in (len(data) // 2, len(data) - 12):
        with pytest.raises(DecodeError, match="truncated"):
            decode_png(data[:cut], 32)
    bad = bytearray(data)
    for i in range(100, len(bad) - 20, 7):  # scramble the compressed stream
        bad[i] ^= 0x5A
    with pytest.raises(DecodeError):
        decode_png(bytes(bad), 32)


def test_zero_size_refused():
    with pytest.raises(DecodeError, match="empty"):
        decode_png(_bomb_header(0, 10), 32)


def test_decode_error_is_archive_error():
    from imgae_dx.errors import ArchiveError

    assert issubclass(DecodeError, ArchiveError)
