"""Synthetic DICOM files in the style of the RSNA Pneumonia Detection Challenge's.

:func:`rsna_dicom` wraps an 8-bit gray image as RSNA's files are: a Secondary Capture object,
``Modality`` CR, ``BodyPartExamined`` CHEST, ``ViewPosition`` PA/AP, ``PatientAge`` as a bare
string (``51``, not DICOM's ``051Y``), 8-bit MONOCHROME2 without any window or rescale, the pixels
as one encapsulated JPEG Baseline frame (or uncompressed, Explicit VR Little Endian). Used by the
RSNA sample archive (:mod:`.rsna`), the tests and the decode benchmark. Everything (UIDs included)
is a function of the arguments: same arguments, same bytes.
"""

from __future__ import annotations

import io

import cv2
import numpy as np


def rsna_dicom(img: np.ndarray, patient_id: str, *, view: str | None = "PA", age: str = "51",
               sex: str = "M", quality: int | None = 95) -> bytes:
    """An RSNA-style DICOM file of ``img`` (uint8 H×W); JPEG Baseline at ``quality``, or
    uncompressed when ``quality`` is None; ``view`` None leaves ViewPosition out."""
    from pydicom import config
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        JPEGBaseline8Bit,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    if img.dtype != np.uint8 or img.ndim != 2:
        raise ValueError(f"rsna_dicom needs a uint8 H×W image, got {img.dtype} {img.shape}")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[patient_id, "instance"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian if quality is None else JPEGBaseline8Bit
    ds = Dataset()
    ds.file_meta = meta
    with config.disable_value_validation():  # PatientAge "51" is what RSNA's files hold
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.StudyDate, ds.StudyTime = "19010101", "000000.00"
        ds.AccessionNumber, ds.Modality, ds.ConversionType = "", "CR", "WSD"
        ds.ReferringPhysicianName, ds.SeriesDescription = "", f"view: {view or ''}"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = patient_id, patient_id, ""
        ds.PatientSex, ds.PatientAge = sex, age
        ds.BodyPartExamined = "CHEST"
        if view is not None:
            ds.ViewPosition = view
        ds.StudyInstanceUID = generate_uid(entropy_srcs=[patient_id, "study"])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[patient_id, "series"])
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber, ds.PatientOrientation = "", "1", "1", ""
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = img.shape
        ds.PixelSpacing = ["0.14300000000000002", "0.14300000000000002"]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        if quality is None:
            ds.PixelData = np.ascontiguousarray(img).tobytes()
        else:
            ds.LossyImageCompression, ds.LossyImageCompressionMethod = "01", "ISO_10918_1"
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
            if not ok:  # pragma: no cover - cv2 always encodes uint8
                raise RuntimeError("JPEG encoding failed")
            ds.PixelData = encapsulate([buf.tobytes()])
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


__all__ = ["rsna_dicom"]
