"""Real image bytes (cv2, pydicom) and zip archives for the dataset tests."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import cv2
import numpy as np


def image_bytes(fmt: str, seed: int, *, size: tuple[int, int] = (48, 40), rgb: bool = False) -> bytes:
    """A real PNG or JPEG file (``size`` = width, height), gray or 3-channel."""
    rng = np.random.default_rng(seed)
    img = (rng.random((size[1], size[0])) * 200 + 20).astype(np.uint8)
    if rgb:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    ok, buf = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", img)
    assert ok
    return buf.tobytes()


def dicom_bytes(patient_id: str, seed: int = 0, *, view: str = "PA") -> bytes:
    """A real (uncompressed, 8-bit MONOCHROME2) DICOM file with a PatientID and ViewPosition."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.PatientID, ds.ViewPosition, ds.Modality = patient_id, view, "CR"
    ds.Rows, ds.Columns = 32, 32
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = (np.random.default_rng(seed).random((32, 32)) * 255).astype(np.uint8).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_zip(path: Path, members: dict[str, bytes], *, deflate: bool = False) -> Path:
    """A zip archive holding ``members`` in the given order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path
