"""DICOM files made here with pydicom: grey levels, bit depths, rescale, VOI LUT / window,
MONOCHROME1, compressed syntaxes, the files that must be refused (a deflate bomb among them), files
without file meta, and the scope warnings (pydicom's own CT_small.dcm and JPGExtended.dcm too)."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from imgae_dx.data.decode import DecodeError, ImageReadError, decode_gray
from imgae_dx.data.dicom import decode_dicom, read_dicom, window


def make_dicom(path: Path, pixels: np.ndarray | None, *, bits_stored: int,
               photometric: str = "MONOCHROME2", rescale: tuple[float, float] | None = None,
               window_cw: tuple[float, float] | None = None, voi_lut: np.ndarray | None = None,
               frames: int = 1, size: tuple[int, int] | None = None, preamble: bool = True,
               compress: str | None = None) -> Path:
    """Write a DX DICOM; ``pixels`` None → no pixel data. Returns ``path``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "TEST"
    rows, cols = size or (pixels.shape[:2] if pixels is not None else (64, 64))
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window_cw:
        ds.WindowCenter, ds.WindowWidth = window_cw
    if voi_lut is not None:
        item = Dataset()
        item.LUTDescriptor = [len(voi_lut), 0, 12]  # 12-bit output entries
        item.LUTData = voi_lut.astype("<u2").tobytes()  # OW: one 16-bit word per entry
        ds.VOILUTSequence = [item]
    if pixels is not None:
        ds.PixelData = np.ascontiguousarray(pixels.astype(np.uint8 if bits_stored <= 8 else np.uint16)).tobytes()
    if compress == "rle":
        ds.compress(RLELossless)
    elif compress == "jpegls":  # header only: what matters is that no handler is installed
        ds.file_meta.TransferSyntaxUID = JPEGLSLossless
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + b"\0" * 64])
        ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=preamble)
    return path


def first_png_gray(archive: Path) -> np.ndarray:
    """The full-resolution uint8 pixels of a sample archive's first PNG (realistic content)."""
    with zipfile.ZipFile(archive) as z:
        name = next(n for n in sorted(z.namelist()) if n.endswith(".png"))
        return decode_gray(z.read(name))


@pytest.fixture
def gray(small_archive) -> np.ndarray:
    g = first_png_gray(small_archive).copy()
    g[0, 0], g[0, 1] = 0, 255  # spans the full 8-bit range: min–max is the identity
    return g


def _decode(p: Path) -> np.ndarray:
    return decode_dicom(p.read_bytes(), max_side=8192)


def test_monochrome2_at_8_12_16_bits_without_voi_is_min_max(gray, tmp_path):
    for bits in (8, 12, 16):
        scale = (2**bits - 1) / 255.0
        stored = np.rint(gray * scale)
        p = make_dicom(tmp_path / f"m2_{bits}.dcm", stored, bits_stored=bits)
        got = _decode(p)
        assert got.dtype == np.uint8 and got.shape == gray.shape
        assert np.array_equal(got, gray), bits  # full-range data: same pixels as the PNG


def test_rescale_does_not_change_min_max_and_monochrome1_is_inverted(gray, tmp_path):
    stored = gray.astype(np.uint16) * 16
    plain = _decode(make_dicom(tmp_path / "a.dcm", stored, bits_stored=12))
    rescaled = _decode(make_dicom(tmp_path / "b.dcm", stored, bits_stored=12, rescale=(2.0, -1024.0)))
    assert np.array_equal(plain, rescaled)
    inverted = _decode(make_dicom(tmp_path / "c.dcm", 4095 - stored, bits_stored=12,
                                  photometric="MONOCHROME1"))
    assert np.abs(inverted.astype(int) - plain).max() <= 1  # white = low values, shown as NIH does


def test_8bit_data_without_voi_keeps_its_stored_values_deeper_or_rescaled_data_is_min_max(tmp_path):
    """8-bit data with an identity modality LUT and no VOI decodes to its stored values (as the
    PNG it came from would), MONOCHROME1 inverted; 12-bit or rescaled data is stretched min–max."""
    narrow = np.tile(np.arange(30, 201, dtype=np.uint8), (8, 1))  # 30 … 200
    assert np.array_equal(_decode(make_dicom(tmp_path / "a.dcm", narrow, bits_stored=8)), narrow)
    inv = _decode(make_dicom(tmp_path / "b.dcm", narrow, bits_stored=8, photometric="MONOCHROME1"))
    assert np.array_equal(inv, 255 - narrow)
    stretched = np.rint((narrow.astype(np.float64) - 30) / 170 * 255).astype(np.uint8)
    assert np.array_equal(_decode(make_dicom(tmp_path / "c.dcm", narrow, bits_stored=8, rescale=(2.0, -10.0))),
                          stretched)
    deep = narrow.astype(np.uint16) * 16
    assert np.array_equal(_decode(make_dicom(tmp_path / "d.dcm", deep, bits_stored=12)), stretched)


def test_window_center_width_in_rescaled_units(gray, tmp_path):
    stored = gray.astype(np.uint16) * 16  # 0 … 4080
    slope, intercept, center, width = 1.0, -1000.0, 1040.0, 2000.0
    p = make_dicom(tmp_path / "w.dcm", stored, bits_stored=12, rescale=(slope, intercept),
                   window_cw=(center, width))
    x = stored * slope + intercept
    want = np.rint(np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0, 1) * 255).astype(np.uint8)
    assert np.array_equal(_decode(p), want)
    assert window(np.array([0.0]), 100.0, 0.5, "LINEAR_EXACT")[0] == 0.0
    with pytest.raises(ImageReadError, match="Window Width"):
        window(np.array([0.0]), 100.0, 0.5, "LINEAR")


def test_voi_lut_sequence_wins_over_window(gray, tmp_path):
    stored = gray.astype(np.uint16) * 16
    lut = np.rint(np.sqrt(np.arange(4096) / 4095.0) * 4095).astype(np.uint16)  # a gamma curve
    p = make_dicom(tmp_path / "lut.dcm", stored, bits_stored=12, voi_lut=lut, window_cw=(10.0, 20.0))
    assert np.array_equal(_decode(p), np.rint(lut[stored] / 4095.0 * 255).astype(np.uint8))


def test_rle_is_decoded_by_pydicom_alone(gray, tmp_path):
    stored = gray.astype(np.uint16) * 16
    plain = _decode(make_dicom(tmp_path / "u.dcm", stored, bits_stored=12))
    rle = make_dicom(tmp_path / "rle.dcm", stored, bits_stored=12, compress="rle")
    assert np.array_equal(_decode(rle), plain)


def test_file_without_preamble_is_read_with_force(gray, tmp_path):
    p = make_dicom(tmp_path / "raw.dcm", gray, bits_stored=8, preamble=False)
    assert p.read_bytes()[128:132] != b"DICM"
    assert np.array_equal(decode_dicom(p.read_bytes(), max_side=8192, force=True), gray)


def test_image_read_error_is_the_data_paths_decode_error():
    assert issubclass(ImageReadError, DecodeError)  # the dataset skips it like an undecodable PNG


@pytest.mark.filterwarnings("ignore::UserWarning:pydicom")  # the garbage file makes pydicom guess the VR
@pytest.mark.parametrize("case", ["no_pixels", "bomb", "frames", "truncated", "jpegls", "garbage"])
def test_dicom_refusals(case, gray, tmp_path):
    p = tmp_path / f"{case}.dcm"
    if case == "no_pixels":
        make_dicom(p, None, bits_stored=8)
        match = "no pixel data"
    elif case == "bomb":
        make_dicom(p, np.zeros((4, 4)), bits_stored=8, size=(50_000, 50_000))
        match = "50000×50000.*before decoding"
    elif case == "frames":
        make_dicom(p, np.zeros((3 * 8, 8)), bits_stored=8, size=(8, 8), frames=3)
        match = "3 frames"
    elif case == "truncated":
        make_dicom(p, gray[:100], bits_stored=8, size=gray.shape)
        match = "cannot be decoded"
    elif case == "jpegls":
        make_dicom(p, gray, bits_stored=8, compress="jpegls")
        match = r"JPEG-LS Lossless.*no installed package decodes it.*pip install .*(pylibjpeg|pyjpegls)"
    else:
        p.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage" * 3)
        match = "DICOM"
    with pytest.raises(ImageReadError, match=match):
        decode_dicom(p.read_bytes(), max_side=8192)


# ----------------------------------------------------------------------------- hostile and odd files
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"  # shipped with pydicom


def pydicom_file(name: str) -> Path:
    p = PYDICOM_FILES / name
    if not p.is_file():
        pytest.skip(f"pydicom's test file {name} is not installed")
    return p


def deflate_bomb(inflated_bytes: int = 2 * 2**30, *, rows: int = 8192, cols: int = 8192) -> bytes:
    """A Deflated Explicit VR Little Endian DICOM of ~2 MB whose dataset inflates to
    ``inflated_bytes`` (a DX header, then pixel data of zeros). Built from one deflated block of
    16 MiB of zeros repeated (full flushes make the blocks independent), in about a second."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = Dataset()
    ds.Modality = "DX"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    header = body.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, inflated_bytes)
    out = io.BytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    out.write(c.compress(header) + c.flush(zlib.Z_FULL_FLUSH))
    block = 16 * 2**20
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = z.compress(b"\0" * block) + z.flush(zlib.Z_FULL_FLUSH)
    for _ in range(inflated_bytes // block):
        out.write(zeros)
    out.write(zlib.compressobj(9, zlib.DEFLATED, -15).flush())  # the final (empty) block
    return out.getvalue()


def test_a_deflated_dicom_bomb_is_refused_while_inflating_in_bounded_memory(tmp_path):
    bomb = tmp_path / "bomb.dcm"
    bomb.write_bytes(deflate_bomb())
    assert bomb.stat().st_size < 3 * 2**20
    code = (
        "import resource, sys\n"
        "from imgae_dx.data.dicom import read_dicom\n"
        "from imgae_dx.data.decode import ImageReadError\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "import pydicom, numpy\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    read_dicom(data, max_side=8192)\n"
        "    print('decoded')\n"
        "except ImageReadError as e:\n"
        "    print(e)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert res.returncode == 0, res.stderr
    message, grew_mb = res.stdout.strip().splitlines()
    assert "inflates to more than 144 MB" in message and "before allocating" in message
    assert int(grew_mb) < 300  # the bomb inflates to 2 GB; pydicom alone peaked at 4.5 GB


def test_a_deflated_dicom_within_the_budget_reads_as_its_uncompressed_twin(gray, tmp_path):
    stored = gray.astype(np.uint16) * 16
    plain = make_dicom(tmp_path / "plain.dcm", stored, bits_stored=12)
    ds = pydicom.dcmread(plain)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    data = (tmp_path / "deflated.dcm").read_bytes()
    assert len(data) < plain.stat().st_size  # really deflated
    assert np.array_equal(_decode(tmp_path / "deflated.dcm"), _decode(plain))
    with pytest.raises(ImageReadError, match="truncated"):
        decode_dicom(data[: len(data) // 2], max_side=8192)


def test_declared_pixel_data_over_the_budget_is_refused_before_decoding(tmp_path):
    p = make_dicom(tmp_path / "rgb16.dcm", np.zeros((4, 4)), bits_stored=16, size=(8000, 8000))
    ds = pydicom.dcmread(p)
    ds.SamplesPerPixel = 3  # 8000² × 3 × 2 bytes = 366 MB > 8192² × 2
    ds.save_as(p, enforce_file_format=True)
    with pytest.raises(ImageReadError, match="pixel budget.*before decoding"):
        _decode(p)


def test_a_dicom_without_preamble_and_file_meta_is_implicit_vr_little_endian(gray, tmp_path):
    ds = Dataset()
    ds.Modality = "DX"
    ds.Rows, ds.Columns = gray.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = gray.tobytes()
    buf = DicomBytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    data = buf.getvalue()
    assert data[:4] == b"\x08\x00\x60\x00"  # (0008,0060) first: no preamble, no group 0002
    assert np.array_equal(decode_dicom(data, max_side=8192, force=True), gray)


def test_12_bit_jpeg_extended_names_the_reason_and_the_package():
    data = pydicom_file("JPGExtended.dcm").read_bytes()  # 12-bit JPEG Extended (Process 2 & 4)
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGExtended12Bit

    if set(get_decoder(JPEGExtended12Bit).available_plugins) - {"pillow"}:
        pytest.skip("a 12-bit JPEG decoder is installed here")
    with pytest.raises(ImageReadError) as e:
        decode_dicom(data, max_side=8192)
    msg = str(e.value)
    assert "Pillow cannot decode 12-bit JPEG" in msg and "pip install pylibjpeg pylibjpeg-libjpeg" in msg
    assert "\n" not in msg


def test_install_hints_use_pip_names():
    from imgae_dx.data.dicom import _pip_command

    assert _pip_command("gdcm - requires gdcm>=3.0.10") == "pip install 'python-gdcm>=3.0.10'"
    assert _pip_command("pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1") == \
        "pip install 'pylibjpeg>=2.0' 'pylibjpeg-libjpeg>=2.1'"
    assert _pip_command("pyjpegls - requires numpy and pyjpegls>=1.2") == "pip install 'pyjpegls>=1.2'"


def test_modality_and_body_part_outside_chest_radiographs_warn_but_decode(gray, tmp_path):
    ct = read_dicom(pydicom_file("CT_small.dcm").read_bytes(), max_side=8192)
    assert ct.pixels.dtype == np.uint8 and ct.pixels.shape == (128, 128)
    assert len(ct.warnings) == 1 and "Modality CT" in ct.warnings[0]
    p = make_dicom(tmp_path / "knee.dcm", gray, bits_stored=8)
    ds = pydicom.dcmread(p)
    ds.BodyPartExamined = "KNEE"
    ds.save_as(p, enforce_file_format=True)
    knee = read_dicom(p.read_bytes(), max_side=8192)
    assert knee.warnings == ("DICOM Body Part Examined is KNEE, not the chest: scored, but outside "
                             "what the model saw",)
    ds.BodyPartExamined, ds.Modality = "CHEST", "CR"
    ds.save_as(p, enforce_file_format=True)
    assert read_dicom(p.read_bytes(), max_side=8192).warnings == ()
