"""The DICOM fast path: 8-bit MONOCHROME2 frames read without pydicom's pixel decode.

RSNA's radiographs (and many exported DX/CR files) are single-frame, 8-bit MONOCHROME2, without a
Modality LUT, rescale, VOI LUT or window, stored uncompressed or as JPEG Baseline. For exactly
those, the full reader (:func:`imgae_dx.data.dicom.decode_dicom`) keeps the stored values (its rule
for 8-bit data without VOI), so :func:`decode_fast` can skip pydicom's pixel decode:

* the header is parsed by pydicom up to the pixel data (``stop_before_pixels``); the pixel data
  element is located in ``data`` itself;
* **uncompressed** (Explicit/Implicit VR Little Endian): the frame is a numpy view of those bytes
  (no copy) — the reader's pixels exactly;
* **JPEG Baseline / Extended** (the encapsulated frame's bytes, extracted by pydicom without
  decoding): decoded by libjpeg-turbo through :func:`imgae_dx.data.jpeg.decode_jpeg_gray` — the
  same checked decoder as JPEG files; at full size the reader's pixels exactly, and with
  ``keep_short`` at the model's scale by DCT scaling (1/2, 1/4, 1/8), as JPEG files are
  (:data:`imgae_dx.data.decode.JPEG_SCALE_MARGIN`).

Anything else — another photometric interpretation or bit depth, signed pixels, several frames,
a rescale, a Modality LUT, a VOI LUT or window, another transfer syntax, a JPEG frame whose own
header disagrees with Rows/Columns, pixel data shorter than declared, a header pydicom cannot
parse — returns ``None``, and the caller uses the full reader (which also gives the errors).
"""

from __future__ import annotations

import io
import struct
from typing import Any

import numpy as np

from imgae_dx.data import jpeg
from imgae_dx.data.dicom import stored_8bit

_PIXEL_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
_EXPLICIT_LE, _IMPLICIT_LE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
_JPEG_8BIT = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")  # Baseline, Extended (8-bit data)
_VOI_ELEMENTS = ("VOILUTSequence", "WindowCenter", "WindowWidth")


def _plain_8bit_mono2(ds: Any) -> bool:
    """Whether the full reader shows ``ds``'s stored values as they are (see the module doc)."""
    try:
        if (str(getattr(ds, "PhotometricInterpretation", "")).strip().upper() != "MONOCHROME2"
                or int(getattr(ds, "SamplesPerPixel", 1) or 1) != 1
                or int(getattr(ds, "BitsAllocated", 0) or 0) != 8
                or int(getattr(ds, "NumberOfFrames", 1) or 1) != 1):
            return False
    except (TypeError, ValueError):
        return False
    return not any(k in ds for k in _VOI_ELEMENTS) and stored_8bit(ds)


def decode_fast(data: bytes, *, max_side: int, keep_short: int | None = None) -> np.ndarray | None:
    """DICOM bytes → uint8 gray as :func:`~imgae_dx.data.dicom.decode_dicom` gives it (H×W), or
    ``None`` when the file is not the plain 8-bit MONOCHROME2 case (see the module doc).

    Args:
        data: the file's bytes.
        max_side: refuse (``None``: the full reader says why) frames larger than this.
        keep_short: a JPEG frame is decoded at the largest DCT reduction keeping its short side
            at least this long (:func:`imgae_dx.data.jpeg.dct_scale`); ``None``: full size.
    """
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
        return np.frombuffer(data, np.uint8, count=rows * cols, offset=at + head).reshape(rows, cols)
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
    return jpeg.decode_jpeg_gray(encoded, max_side=max_side, keep_short=keep_short)


__all__ = ["decode_fast"]
