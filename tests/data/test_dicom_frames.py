"""The DICOM fast path gives the full reader's pixels (the stored values) for plain 8-bit
MONOCHROME2 frames (JPEG Baseline, DCT-scaled at the model's scale; uncompressed as a view) and
hands every other file to the full reader."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from imgae_dx.data.decode import decode_image, resize_image
from imgae_dx.data.dicom import decode_dicom
from imgae_dx.data.dicom_frames import decode_fast

MAX = 8192
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR AS")  # RSNA's bare ages


def _radiograph(rows: int = 96, cols: int = 96, lo: int = 0, hi: int = 255, seed: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
    rng = np.random.default_rng(seed)
    v = 0.5 + 0.3 * np.sin(x / 7) * np.cos(y / 11) + cv2.GaussianBlur(rng.normal(0, 0.1, (rows, cols)), (0, 0), 1.5)
    v = (v - v.min()) / (v.max() - v.min())
    return np.rint(lo + v * (hi - lo)).astype(np.uint8)


def _dicom(pixels: np.ndarray, *, syntax=JPEGBaseline8Bit, preamble: bool = True, **extra) -> bytes:
    """An RSNA-like file: SC image, 8-bit MONOCHROME2, ``extra`` elements set on the data set."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.PatientAge, ds.ViewPosition = "CR", "p1", "51", "PA"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    for k, v in extra.items():
        setattr(ds, k, v)
    if syntax == JPEGBaseline8Bit:
        ds.PixelData = encapsulate([cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
    else:
        ds.PixelData = pixels.tobytes()
    if syntax == RLELossless:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.compress(RLELossless)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=preamble, implicit_vr=syntax == ImplicitVRLittleEndian)
    return out.getvalue()


@pytest.mark.parametrize("lo, hi", [(0, 255), (30, 200)])  # full range; kept as stored, not stretched
@pytest.mark.parametrize("syntax", [JPEGBaseline8Bit, ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_fast_path_gives_the_full_readers_pixels(syntax, lo, hi):
    px = _radiograph(80, 112, lo, hi)
    data = _dicom(px, syntax=syntax)
    fast = decode_fast(data, max_side=MAX)
    assert fast is not None and fast.shape == (80, 112)
    assert np.array_equal(fast, decode_dicom(data, max_side=MAX))
    if syntax != JPEGBaseline8Bit:
        assert np.array_equal(fast, px)  # the stored values
        assert np.array_equal(decode_image(data, 32), resize_image(px, 32, "squash"))
    else:
        assert abs(int(fast.min()) - lo) <= 3 and abs(int(fast.max()) - hi) <= 3  # not stretched
        # at model size the frame is DCT-scaled (80 px → 40 for 32 px), as JPEG files are
        scaled = decode_fast(data, max_side=MAX, keep_short=32)
        assert scaled is not None and scaled.shape == (40, 56)
        assert np.array_equal(decode_image(data, 32), resize_image(scaled, 32, "squash"))
        full = resize_image(fast, 32, "squash").astype(int)
        assert np.abs(decode_image(data, 32).astype(int) - full).mean() <= 1.5


def test_uncompressed_frame_is_a_view_of_the_bytes():
    data = _dicom(_radiograph(64, 64, 20, 220), syntax=ExplicitVRLittleEndian)
    frame = decode_fast(data, max_side=MAX)
    assert frame is not None and np.shares_memory(frame, np.frombuffer(data, np.uint8))


def test_preamble_less_file_takes_the_fast_path():
    data = _dicom(_radiograph(48, 48, 10, 240), syntax=ExplicitVRLittleEndian, preamble=False)
    assert data[128:132] != b"DICM"
    fast = decode_fast(data, max_side=MAX)
    assert fast is not None and np.array_equal(fast, decode_dicom(data, max_side=MAX, force=True))


@pytest.mark.parametrize("case, extra", [
    ("window", {"WindowCenter": 100, "WindowWidth": 120}),
    ("rescale", {"RescaleSlope": 2, "RescaleIntercept": -10}),
    ("monochrome1", {"PhotometricInterpretation": "MONOCHROME1"}),
    ("7 bits stored", {"BitsStored": 7, "HighBit": 6}),
])
def test_rules_the_fast_path_does_not_implement_go_to_the_full_reader(case, extra):
    px = _radiograph(64, 64, 20, 120)
    for syntax in (JPEGBaseline8Bit, ExplicitVRLittleEndian):
        data = _dicom(px, syntax=syntax, **extra)
        assert decode_fast(data, max_side=MAX) is None, case
        assert np.array_equal(decode_image(data, 32), resize_image(decode_dicom(data, max_side=MAX), 32, "squash"))


def test_other_syntaxes_and_mismatched_frames_go_to_the_full_reader():
    px = _radiograph(64, 64, 20, 120)
    assert decode_fast(_dicom(px, syntax=RLELossless), max_side=MAX) is None
    # a JPEG frame whose own size disagrees with Rows/Columns
    bad = _dicom(px, Rows=32)
    assert decode_fast(bad, max_side=MAX) is None
    # oversized: the full reader refuses it with its message
    assert decode_fast(_dicom(px), max_side=32) is None
