"""EXIF orientation of JPEG and PNG files: read the tag without decoding, apply it to the pixels.

Cameras and phone scans store the pixels as the sensor saw them and say in EXIF tag 0x0112
(Orientation, 1–8) how to turn them upright. OpenCV's ``IMREAD_UNCHANGED`` (the training decode)
ignores it, so :func:`orientation` reads the tag from a JPEG's ``APP1 Exif`` segment or a PNG's
``eXIf`` chunk (headers only, no pixel is decoded) and :func:`apply_orientation` turns the decoded
image upright, as ``PIL.ImageOps.exif_transpose`` does. A missing, damaged or out-of-range tag
means 1 (as stored).
"""

from __future__ import annotations

import struct

import numpy as np

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ORIENTATION_TAG = 0x0112


def _tiff_orientation(tiff: bytes) -> int:
    """The Orientation of IFD0 in TIFF-structured EXIF bytes (1 when absent or unreadable)."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    e = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(e + "I", tiff, 4)
    if ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack_from(e + "H", tiff, ifd)
    for k in range(count):
        at = ifd + 2 + 12 * k
        if at + 12 > len(tiff):
            break
        tag, kind, _n = struct.unpack_from(e + "HHI", tiff, at)
        if tag == _ORIENTATION_TAG and kind == 3:  # SHORT, stored in the value field
            (value,) = struct.unpack_from(e + "H", tiff, at + 8)
            return value if 1 <= value <= 8 else 1
    return 1


def _jpeg_exif(data: bytes) -> bytes | None:
    i, n = 2, len(data)
    while i + 4 <= n and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no more header segments
            return None
        (length,) = struct.unpack_from(">H", data, i + 2)
        if marker == 0xE1 and data[i + 4:i + 10] == b"Exif\0\0":
            return data[i + 10:i + 2 + length]
        i += 2 + length
    return None


def _png_exif(data: bytes) -> bytes | None:
    pos, n = len(_PNG_SIGNATURE), len(data)
    while pos + 8 <= n:
        length, ctype = struct.unpack_from(">I4s", data, pos)
        if ctype == b"eXIf":
            return data[pos + 8:pos + 8 + length]
        if ctype == b"IEND":
            return None
        pos += 12 + length
    return None


def orientation(data: bytes) -> int:
    """EXIF Orientation (1–8) of JPEG or PNG file bytes; 1 when there is none."""
    try:
        if data.startswith(b"\xff\xd8"):
            tiff = _jpeg_exif(data)
        elif data.startswith(_PNG_SIGNATURE):
            tiff = _png_exif(data)
        else:
            return 1
        return _tiff_orientation(tiff) if tiff else 1
    except struct.error:  # a segment or chunk length running past the data
        return 1


def apply_orientation(img: np.ndarray, value: int) -> np.ndarray:
    """Turn an H×W image stored with EXIF Orientation ``value`` upright (C-contiguous result)."""
    turned = {
        2: lambda a: a[:, ::-1],          # mirrored left–right
        3: lambda a: a[::-1, ::-1],       # rotated 180°
        4: lambda a: a[::-1, :],          # mirrored top–bottom
        5: lambda a: a.T,                 # transposed
        6: lambda a: np.rot90(a, -1),     # stored rotated 90° counter-clockwise: turn clockwise
        7: lambda a: a.T[::-1, ::-1],     # transverse
        8: lambda a: np.rot90(a, 1),      # stored rotated 90° clockwise: turn counter-clockwise
    }.get(int(value))
    return img if turned is None else np.ascontiguousarray(turned(img))
