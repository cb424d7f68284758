"""Decoding: PNG/JPEG/DICOM told by content → uint8 gray at model size by the resize policy;
bad input → DecodeError naming what is wrong, before anything large is allocated."""

from __future__ import annotations

import io
import re
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from imgae_dx.data.decode import (
    DECODER_VERSION,
    PAD_VALUE,
    RESIZE_POLICIES,
    DecodeError,
    decode_gray,
    decode_gray_any,
    decode_image,
    decode_png,
    decoder_version,
    png_size,
    resize_image,
    sniff_format,
)
from imgae_dx.data.jpeg import MAX_SCANS, jpeg_header


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


# ------------------------------------------------------------------ decode_image: any format
def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth radiograph-like gray image (JPEG keeps it within a few levels)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    rng = np.random.default_rng(seed)
    img = 128 + 60 * np.sin(x / 9.0) * np.cos(y / 13.0) + 30 * np.sin((x + y) / 31.0)
    img += cv2.GaussianBlur(rng.normal(0, 8, (h, w)), (0, 0), 2)
    return np.clip(img, 0, 255).astype(np.uint8)


def _jpeg(img: np.ndarray, quality: int = 95, **kw) -> bytes:
    """JPEG bytes from PIL (gray 'L', 'RGB' or 'CMYK' images; kw: progressive, exif, …)."""
    out = io.BytesIO()
    im = img if isinstance(img, Image.Image) else Image.fromarray(img)
    im.save(out, format="JPEG", quality=quality, **kw)
    return out.getvalue()


def test_png_path_is_decode_png_pixel_for_pixel():
    g = _gradient(100, 100)
    for img in (g, np.dstack([g, g // 2, 255 - g]), g.astype(np.uint16) * 257):
        data = _png(img)
        for decoder in ("auto", "cv2"):
            assert np.array_equal(decode_image(data, 32, png_decoder=decoder), decode_png(data, 32))
    assert sniff_format(_png(g)) == "png"


def test_gray_jpeg_decodes_to_its_pixels_at_model_size():
    src = _photo(300, 300)
    data = _jpeg(src)
    assert sniff_format(data) == "jpeg"
    out = decode_image(data, 64)
    assert out.shape == (64, 64) and out.dtype == np.uint8 and out.flags.c_contiguous
    expect = cv2.resize(src, (64, 64), interpolation=cv2.INTER_AREA)
    assert np.abs(out.astype(int) - expect).mean() < 1.0


def test_rgb_and_cmyk_jpegs_become_luminance():
    g = _photo(120, 160)
    rgb = np.dstack([g, np.roll(g, 20, axis=1), 255 - g])  # coloured: channels differ
    lum = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    got = decode_gray_any(_jpeg(rgb))
    assert got.shape == (120, 160)
    assert np.abs(got.astype(int) - lum).mean() < 2.0  # the Y of YCbCr is this luminance
    cmyk = Image.fromarray(rgb).convert("CMYK")
    assert np.abs(decode_gray_any(_jpeg(cmyk)).astype(int) - lum).mean() < 3.0


def test_progressive_jpeg_equals_baseline():
    src = _photo(200, 240)
    base, prog = _jpeg(src, 90), _jpeg(src, 90, progressive=True)
    assert jpeg_header(prog).process == "progressive" and jpeg_header(base).process == "baseline"
    assert np.abs(decode_gray_any(prog).astype(int) - decode_gray_any(base)).max() <= 1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation):
    src = np.zeros((60, 100), np.uint8)
    src[:20, :30] = 255  # a bright block in the top-left corner of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _jpeg(src, 95, exif=exif.tobytes())
    assert jpeg_header(data).orientation == orientation
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("L"))
    got = decode_gray_any(data)
    assert got.shape == upright.shape == ((100, 60) if orientation >= 5 else (60, 100))
    assert np.abs(got.astype(int) - upright).mean() < 1.0


def test_jpeg_header_reads_size_without_decoding():
    h = jpeg_header(_jpeg(_photo(70, 130)))
    assert (h.width, h.height, h.components, h.precision, h.orientation) == (130, 70, 1, 8, 1)
    rgb = _jpeg(np.dstack([_photo(10, 20)] * 3))
    assert jpeg_header(rgb).components == 3


def _jpeg_with_frame(width: int, height: int) -> bytes:
    """A real small JPEG whose SOF0 claims another size (the scan data stays the small one's)."""
    data = bytearray(_jpeg(_photo(16, 16)))
    i = data.index(b"\xff\xc0")
    data[i + 5:i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_jpeg_bomb_refused_before_decoding():
    with pytest.raises(DecodeError, match="30000×20000.*decompression bomb"):
        decode_image(_jpeg_with_frame(30000, 20000), 64)
    with pytest.raises(DecodeError, match="more than the 64×64"):
        decode_image(_jpeg(_photo(65, 40)), 32, max_side=64)
    with pytest.raises(DecodeError, match="empty"):
        decode_image(_jpeg_with_frame(0, 16), 32)
    data = _jpeg(_photo(32, 32))
    sos = data.index(b"\xff\xda")
    many = data[:-2] + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" * (MAX_SCANS + 1) + b"\xff\xd9"
    with pytest.raises(DecodeError, match=f"{MAX_SCANS + 1 + 1} scans"):
        decode_image(many, 32)
    assert sos > 0


def test_truncated_and_corrupt_jpeg():
    data = _jpeg(_photo(128, 128))
    for cut in (len(data) // 2, len(data) - 2):
        with pytest.raises(DecodeError, match="truncated"):
            decode_image(data[:cut], 32)
    with pytest.raises(DecodeError, match="truncated|corrupt"):
        decode_image(data[:data.index(b"\xff\xda")], 32)  # headers only
    with pytest.raises(DecodeError, match="corrupt"):
        decode_image(b"\xff\xd8\xff\xe0\x00\x01" + b"\0" * 40, 32)  # segment length 1


@pytest.mark.parametrize("data, looks_like", [
    (b"", "an empty file"),
    (b"<!DOCTYPE html><html><body>403 Forbidden</body></html>", "HTML page"),
    (b"GIF89a" + b"\0" * 40, "GIF image"),
    (b"PK\x03\x04" + b"\0" * 40, "ZIP archive"),
    (b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ", "AppleDouble"),
    (b"patientId,x,y,width,height,Target\n", "text ('patientId"),
    (bytes(range(200, 240)), "unrecognised binary data (starts with c8 c9"),
])
def test_unknown_content_named(data, looks_like):
    with pytest.raises(DecodeError, match=r"not a PNG, JPEG or DICOM image: the bytes look like .*"
                       + re.escape(looks_like)):
        decode_image(data, 32)


def test_arguments_checked():
    with pytest.raises(ValueError, match="resize policy"):
        decode_image(_png(_gradient()), 32, resize="stretch")
    with pytest.raises(ValueError, match="image_size"):
        decode_image(_png(_gradient()), 0)


# ------------------------------------------------------------------ resize policies
def test_resize_policies_on_a_wide_image():
    img = np.zeros((60, 120), np.uint8)
    img[:, :30] = 40
    img[:, 30:90] = 200  # the centre square
    img[:, 90:] = 90
    squash = resize_image(img, 32, "squash")
    assert np.array_equal(squash, cv2.resize(img, (32, 32), interpolation=cv2.INTER_AREA))
    crop = resize_image(img, 32, "crop")
    assert np.array_equal(crop, np.full((32, 32), 200, np.uint8))  # only the centre square kept
    pad = resize_image(img, 32, "pad")
    assert pad.shape == (32, 32) and pad.flags.c_contiguous
    assert (pad[:8] == PAD_VALUE).all() and (pad[24:] == PAD_VALUE).all()  # 16 rows kept, centred
    assert np.array_equal(pad[8:24], cv2.resize(img, (32, 16), interpolation=cv2.INTER_AREA))


def test_resize_policies_on_a_tall_image_and_odd_remainders():
    img = _photo(101, 40)
    pad = resize_image(img, 32, "pad")  # 32 × round(40·32/101) = 32 × 13: 9 columns left, 10 right
    assert (pad[:, :9] == PAD_VALUE).all() and (pad[:, 22:] == PAD_VALUE).all()
    assert np.array_equal(pad[:, 9:22], cv2.resize(img, (13, 32), interpolation=cv2.INTER_AREA))
    crop = resize_image(img, 32, "crop")  # rows 30..70 of 101 (the odd row cut at the bottom)
    assert np.array_equal(crop, cv2.resize(img[30:70], (32, 32), interpolation=cv2.INTER_AREA))
    sliver = resize_image(np.full((1, 500), 77, np.uint8), 32, "pad")
    assert (sliver[15] == 77).all() and (np.delete(sliver, 15, axis=0) == 0).all()  # one row survives


def test_square_images_same_under_every_policy():
    img = _photo(96, 96)
    out = {p: resize_image(img, 32, p) for p in RESIZE_POLICIES}
    assert all(np.array_equal(out["squash"], o) for o in out.values())
    data = _jpeg(_photo(200, 300))
    assert {p: decode_image(data, 32, resize=p).shape for p in RESIZE_POLICIES} == {
        p: (32, 32) for p in RESIZE_POLICIES}


def test_cache_key_names_policy_and_decoders():
    versions = {p: decoder_version(p) for p in RESIZE_POLICIES}
    assert len(set(versions.values())) == 3
    assert all(v.startswith(DECODER_VERSION) for v in versions.values())
    assert "jpeg" in DECODER_VERSION and "dicom" in DECODER_VERSION and "png" in DECODER_VERSION


def test_dicom_told_by_content_with_and_without_preamble():
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = 4, 4
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 8, 8, 7, 0
    ds.PixelData = bytes(16)
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        assert out.getvalue()[128:132] == b"DICM" and sniff_format(out.getvalue()) == "dicom"
        implicit = syntax == ImplicitVRLittleEndian
        no_preamble = io.BytesIO()  # file meta (group 0002) first
        pydicom.dcmwrite(no_preamble, ds, implicit_vr=implicit, little_endian=True)
        assert no_preamble.getvalue()[:2] == b"\x02\x00" and sniff_format(no_preamble.getvalue()) == "dicom"
        del ds.file_meta
        bare = io.BytesIO()  # no preamble, no file meta: starts with the (0008,0016) element
        pydicom.dcmwrite(bare, ds, implicit_vr=implicit, little_endian=True)
        assert bare.getvalue()[:2] == b"\x08\x00" and sniff_format(bare.getvalue()) == "dicom", syntax
