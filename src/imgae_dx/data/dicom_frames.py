"""The DICOM fast path: 8-bit MONOCHROME2 frames read without pydicom's pixel decode.

RSNA's radiographs (and many exported DX/CR files) are single-frame, 8-bit MONOCHROME2, without a
Modality LUT, rescale, VOI LUT or window, stored uncompressed or as JPEG Baseline. For exactly
those, :func:`decode_fast` gives the pixels :func:`imgae_dx.data.dicom.decode_dicom` gives, faster:

* the header is parsed by pydicom up to the pixel data (``stop_before_pixels``); the pixel data
  element is located in ``data`` itself;
* **uncompressed** (Explicit/Implicit VR Little Endian): the frame is a numpy view of those bytes
  (no copy);
* **JPEG Baseline / Extended** (the encapsulated frame's bytes, extracted by pydicom without
  decoding): decoded by libjpeg-turbo through :func:`imgae_dx.data.jpeg.decode_jpeg_gray` — the
  same checked decoder as JPEG files, at full size (see below);
* then the reader's rule for this case, exactly: the modality LUT is the identity and, with no
  VOI, the values are stretched min–max to [0, 255] (``rint((v − lo) / (hi − lo) · 255)``, as a
  256-entry table; an image already spanning 0–255 is left as it is, the view included).

The min–max rule needs the extremes of the full-resolution frame, which a DCT-scaled decode
does not have (its pixels are block means: on radiographs with thin bright markers its range is
narrower and the stretch differs by ~9 gray levels on average), so JPEG frames are decoded at
full size here.

Anything else — another photometric interpretation or bit depth, signed pixels, several frames,
a rescale, a Modality LUT, a VOI LUT or window, another transfer syntax, a JPEG frame whose own
header disagrees with Rows/Columns, pixel data shorter than declared, a header pydicom cannot
parse — returns ``None``, and the caller uses the full reader (which also gives the errors).
"""

from __future__ import annotations

import io
import struct
from typing import Any

import cv2
import numpy as np

from imgae_dx.data import jpeg

_PIXEL_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
_EXPLICIT_LE, _IMPLICIT_LE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
_JPEG_8BIT = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")  # Baseline, Extended (8-bit data)
_RULE_ELEMENTS = ("ModalityLUTSequence", "VOILUTSequence", "WindowCenter", "WindowWidth")
_UNIT = np.arange(256, dtype=np.float64)


def _plain_8bit_mono2(ds: Any) -> bool:
    """Whether the full reader's rules reduce to "min–max of the stored values" for ``ds``."""
    try:
        if (str(getattr(ds, "PhotometricInterpretation", "")).strip().upper() != "MONOCHROME2"
                or int(getattr(ds, "SamplesPerPixel", 1) or 1) != 1
                or int(getattr(ds, "BitsAllocated", 0) or 0) != 8
                or int(getattr(ds, "BitsStored", 8) or 8) != 8
                or int(getattr(ds, "PixelRepresentation", 0) or 0) != 0
                or int(getattr(ds, "NumberOfFrames", 1) or 1) != 1):
            return False
        if any(k in ds for k in _RULE_ELEMENTS):
            return False
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    except (TypeError, ValueError):
        return False
    return slope == 1.0 and intercept == 0.0


def stretch_min_max(img: np.ndarray) -> np.ndarray:
    """uint8 ``img`` stretched as the full reader does with no VOI: ``rint((v − lo)/(hi − lo)·255)``
    (float64, bit for bit), all zeros when flat; ``img`` itself when it spans 0–255 already."""
    lo, hi = int(img.min()), int(img.max())
    if lo == 0 and hi == 255:
        return img
    if hi == lo:
        return np.zeros(img.shape, np.uint8)
    lut = np.rint(np.clip((_UNIT - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)
    return cv2.LUT(img, lut)


def decode_fast(data: bytes, *, max_side: int) -> np.ndarray | None:
    """DICOM bytes → uint8 H×W as :func:`~imgae_dx.data.dicom.decode_dicom` gives it, or ``None``
    when the file is not the plain 8-bit MONOCHROME2 case (see the module doc)."""
    try:
        import pydicom
    except ImportError:
        return None
    fp = io.BytesIO(data)
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True, force=data[128:132] != b"DICM")
        tsuid = str(ds.file_meta.TransferSyntaxUID)
        rows, cols = int(ds.Rows), int(ds.Columns)
    except Exception:  # pydicom raises many types on damaged headers: the full reader says why
        return None
    at = fp.tell()
    if (data[at:at + 4] != _PIXEL_TAG or not _plain_8bit_mono2(ds)
            or not (0 < rows <= max_side and 0 < cols <= max_side)):
        return None
    if tsuid in (_EXPLICIT_LE, _IMPLICIT_LE):
        head = 8 if tsuid == _IMPLICIT_LE else 12  # tag, (VR, reserved,) length
        (length,) = struct.unpack_from("<I", data, at + head - 4)
        if length == 0xFFFFFFFF or length < rows * cols or at + head + rows * cols > len(data):
            return None
        frame = np.frombuffer(data, np.uint8, count=rows * cols, offset=at + head).reshape(rows, cols)
        return stretch_min_max(frame)
    if tsuid not in _JPEG_8BIT:
        return None
    from pydicom.encaps import generate_frames

    try:
        encoded = next(generate_frames(data[at + 12:], number_of_frames=1))
        h = jpeg.check_jpeg(encoded, max_side)
    except Exception:
        return None
    if (h.width, h.height, h.components, h.precision, h.orientation) != (cols, rows, 1, 8, 1):
        return None
    return stretch_min_max(jpeg.decode_jpeg_gray(encoded, max_side=max_side))


__all__ = ["decode_fast", "stretch_min_max"]
