"""Image files → model input: PNG variants through the training decode, JPEG, arrays, EXIF
orientation, the resize rule, bad input, and files that are not regular files."""

from __future__ import annotations

import os
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from imgae_dx.data.decode import decode_png, resize_area, resize_image
from imgae_dx.inference.errors import ImageReadError
from imgae_dx.inference.images import (
    decode_file_bytes,
    decode_image,
    load_file,
    prepare_array,
    read_bytes,
    to_unit,
)

from ..data.test_dicom import make_dicom
from .conftest import gray_of


def _png(path: Path, img: np.ndarray) -> Path:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def bomb_png(path: Path, width: int = 50_000, height: int = 50_000) -> Path:
    """A tiny PNG whose IHDR declares a huge image (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_png_variants_use_the_training_decode(sample_pngs, tmp_path):
    gray = gray_of(sample_pngs[0])  # 256×256 uint8 radiograph
    want = decode_png(sample_pngs[0].read_bytes(), 64)
    assert np.array_equal(load_file(sample_pngs[0], 64), want)
    variants = {
        "gray16": (gray.astype(np.uint16) * 257),
        "rgb": cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR),
        "rgba": cv2.cvtColor(gray, cv2.COLOR_GRAY2BGRA),
    }
    for name, img in variants.items():
        p = _png(tmp_path / f"{name}.png", img)
        got = load_file(p, 64)
        assert got.dtype == np.uint8 and got.shape == (64, 64)
        assert np.array_equal(got, decode_png(p.read_bytes(), 64)), name
        assert np.array_equal(got, want), name  # same pixels whatever the PNG flavour
    from PIL import Image  # palette PNG: Pillow writes them (OpenCV cannot)

    Image.fromarray(gray).convert("P").save(tmp_path / "palette.png")
    assert np.abs(load_file(tmp_path / "palette.png", 64).astype(int) - want).max() <= 2


def test_jpeg_gray_and_colour_and_the_same_area_resize(sample_pngs, tmp_path):
    gray = gray_of(sample_pngs[1])
    for name, img in (("g.jpg", gray), ("c.jpeg", cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))):
        p = tmp_path / name
        p.write_bytes(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
        decoded = cv2.imdecode(np.frombuffer(p.read_bytes(), np.uint8), cv2.IMREAD_GRAYSCALE)
        got = load_file(p, 64)
        assert got.shape == (64, 64)
        assert np.abs(got.astype(int) - resize_area(decoded, 64)).max() <= 1
        assert np.abs(got.astype(int) - resize_area(gray, 64)).mean() < 2.0  # JPEG loss only


def test_arrays_go_through_the_same_path(sample_pngs):
    gray = gray_of(sample_pngs[2])
    want = resize_area(gray, 64)
    assert np.array_equal(prepare_array(gray, 64), want)
    assert np.array_equal(prepare_array(gray / 255.0, 64), want)
    assert np.array_equal(prepare_array(gray.astype(np.uint16) * 257, 64), want)
    assert to_unit(want).dtype == np.float32 and to_unit(np.array([255], np.uint8))[0] == 1.0
    with pytest.raises(ImageReadError, match=r"\[0, 1\]"):
        prepare_array(gray * 2.0, 64)
    with pytest.raises(ImageReadError, match="H×W"):
        prepare_array(np.zeros(5), 64)


@pytest.mark.parametrize("case", ["text", "empty", "truncated_png", "corrupt_png", "bomb_png",
                                  "truncated_jpeg", "bomb_jpeg", "folder", "missing", "not_a_dir"])
def test_bad_files_are_refused_with_a_reason(case, sample_pngs, tmp_path):
    data = sample_pngs[0].read_bytes()
    p = tmp_path / f"{case}.png"
    if case == "text":
        p.write_text("hello, I am not an X-ray\n")
        match = "not a PNG, JPEG or DICOM"
    elif case == "empty":
        p.write_bytes(b"")
        match = "empty file"
    elif case == "truncated_png":
        p.write_bytes(data[: len(data) // 2])
        match = "truncated"
    elif case == "corrupt_png":
        p.write_bytes(data[:100] + bytes(b ^ 0x5A for b in data[100:300]) + data[300:])
        match = "PNG decode failed|corrupt|truncated"
    elif case == "bomb_png":
        bomb_png(p)
        match = "50000×50000.*before decoding"
    elif case == "truncated_jpeg":
        p = tmp_path / "t.jpg"
        jpg = cv2.imencode(".jpg", gray_of(sample_pngs[0]))[1].tobytes()
        p.write_bytes(jpg[: len(jpg) * 2 // 3])
        match = "truncated JPEG"
    elif case == "bomb_jpeg":
        p = tmp_path / "b.jpg"
        jpg = bytearray(cv2.imencode(".jpg", np.zeros((8, 8), np.uint8))[1].tobytes())
        i = jpg.index(b"\xff\xc0")
        jpg[i + 5:i + 9] = struct.pack(">HH", 8, 50_000)  # height 8, width 50,000
        p.write_bytes(bytes(jpg))
        match = "50000×8.*before decoding"
    elif case == "folder":
        p = tmp_path / "dir.png"
        p.mkdir()
        match = "is a folder"
    elif case == "missing":
        match = "no such file"
    else:
        f = tmp_path / "file"
        f.write_text("x")
        p = f / "below.png"
        match = "cannot be read"
    with pytest.raises(ImageReadError, match=match):
        load_file(p, 64)


def test_format_is_recognised_by_content_not_name(sample_pngs, tmp_path):
    data = sample_pngs[0].read_bytes()
    want = decode_png(data, 64)
    assert np.array_equal(decode_file_bytes(data, 64, name="x.jpg"), want)
    with pytest.raises(ImageReadError, match="look like a GIF image"):
        decode_file_bytes(b"GIF89a" + b"\0" * 200, 64, name="x.png")
    with pytest.raises(ImageReadError, match="not a readable DICOM|DICOM"):
        decode_file_bytes(b"\0" * 200, 64, name="scan.DCM")  # a .dcm name is tried as DICOM


def test_dicom_files_give_the_pngs_model_input(sample_pngs, tmp_path):
    gray = gray_of(sample_pngs[0]).copy()
    gray[0, 0], gray[0, 1] = 0, 255  # full 8-bit range: min–max is the identity
    for bits in (8, 12):
        stored = np.rint(gray * ((2**bits - 1) / 255.0))
        p = make_dicom(tmp_path / f"m{bits}.dcm", stored, bits_stored=bits)
        assert np.array_equal(load_file(p, 64), resize_area(gray, 64)), bits
    raw = make_dicom(tmp_path / "raw.dcm", gray, bits_stored=8, preamble=False)  # no DICM: by name
    assert np.array_equal(load_file(raw, 64), resize_area(gray, 64))


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "socket"])
def test_only_regular_files_are_read(kind, tmp_path):
    """A FIFO named x.png used to hang predict; a .png link to /dev/zero was read without end."""
    import socket

    p = tmp_path / "x.png"
    if kind == "fifo":
        os.mkfifo(p)  # nobody writes to it: opening it for reading would block forever
        match = "FIFO"
    elif kind == "dev_zero":
        p.symlink_to("/dev/zero")
        match = "character device"
    else:
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(p))
        match = "socket"
    t0 = time.monotonic()
    with pytest.raises(ImageReadError, match=f"{match}.*not a regular file"):
        load_file(p, 64)
    assert time.monotonic() - t0 < 5


def test_reads_stop_at_the_size_cap(tmp_path):
    p = tmp_path / "big.png"
    p.write_bytes(b"\0" * 4096)
    with pytest.raises(ImageReadError, match="larger than"):
        read_bytes(p, max_bytes=1024)
    assert read_bytes(p, max_bytes=4096) == b"\0" * 4096


def test_jpeg_exif_orientation_is_applied(sample_pngs, tmp_path):
    """A phone photo of a film stored sideways (EXIF Orientation 6, 8, …) is scored upright."""
    from PIL import Image, ImageOps

    gray = cv2.resize(gray_of(sample_pngs[0]), (96, 64), interpolation=cv2.INTER_AREA)  # landscape
    for value in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = value
        p = tmp_path / f"o{value}.jpg"
        Image.fromarray(gray).save(p, "JPEG", exif=exif.tobytes(), quality=95)
        upright = np.asarray(ImageOps.exif_transpose(Image.open(p)).convert("L")).astype(int)
        got = decode_image(p.read_bytes()).gray
        assert got.shape == upright.shape and np.abs(got - upright).max() <= 2, value


def test_the_resize_policy_is_the_models(sample_pngs):
    data = sample_pngs[0].read_bytes()
    assert np.array_equal(decode_file_bytes(data, 64, resize="squash"), decode_png(data, 64))
    wide = cv2.resize(gray_of(sample_pngs[0]), (120, 60), interpolation=cv2.INTER_AREA)
    png = cv2.imencode(".png", wide)[1].tobytes()
    for policy in ("squash", "pad", "crop"):
        assert np.array_equal(decode_file_bytes(png, 32, resize=policy), resize_image(wide, 32, policy))
    assert not np.array_equal(decode_file_bytes(png, 32, resize="pad"),
                              decode_file_bytes(png, 32, resize="squash"))
