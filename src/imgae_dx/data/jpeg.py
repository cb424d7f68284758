"""JPEG bytes → 8-bit grayscale (uint8 H×W), header checked before anything is decoded.

:func:`jpeg_header` walks the marker segments up to the first scan and returns the frame size,
components, coding process and precision (SOF), the EXIF orientation (APP1) and the offset of
the first scan, without decoding. :func:`decode_jpeg_gray` refuses, from that header alone, a
side above ``max_side`` or of 0, more than :data:`MAX_SCANS` scans (a progressive file of
thousands of tiny scans costs minutes of CPU) and a file whose end-of-image marker is missing
(libjpeg would fill the missing rows with gray and say nothing), then decodes with OpenCV's
libjpeg-turbo straight to one gray channel (``IMREAD_GRAYSCALE``):

* a gray JPEG → its samples; a YCbCr (colour) JPEG → its Y channel, the JFIF luminance
  ``0.299 R + 0.587 G + 0.114 B`` (chroma is never decoded); CMYK/YCCK → luminance by OpenCV;
* the EXIF orientation (tag 0x0112) is applied, so a phone photo of a film is upright — the same
  in training, evaluation and ``predict``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np

from imgae_dx.data.png_split import DecodeError

JPEG_SOI = b"\xff\xd8\xff"
#: Refuse files with more scans than this (libjpeg-turbo's fuzzing limit is 500; a progressive
#: JPEG from any encoder has about 10).
MAX_SCANS = 500
# Start-of-frame markers (SOF0–SOF15 without DHT C4, JPG C8 and DAC CC) → coding process.
_SOF = {0xC0: "baseline", 0xC1: "extended", 0xC2: "progressive", 0xC3: "lossless",
        0xC5: "differential sequential", 0xC6: "differential progressive", 0xC7: "differential lossless",
        0xC9: "extended (arithmetic)", 0xCA: "progressive (arithmetic)", 0xCB: "lossless (arithmetic)",
        0xCD: "differential sequential (arithmetic)", 0xCE: "differential progressive (arithmetic)",
        0xCF: "differential lossless (arithmetic)"}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0–7: no length field
_SOS, _EOI, _APP1 = 0xDA, b"\xff\xd9", 0xE1


@dataclass(frozen=True)
class JpegHeader:
    """What a JPEG's segments before its first scan say (no pixel decoded)."""

    width: int
    height: int
    components: int
    precision: int  # bits per sample (8 for every common JPEG; 12 in some medical files)
    process: str  # "baseline", "progressive", … (see _SOF)
    orientation: int  # EXIF orientation 1–8 (1 when absent or unreadable)
    scan_offset: int  # byte offset of the first SOS marker

    @property
    def transposed(self) -> bool:
        """Whether the EXIF orientation swaps width and height (orientations 5–8)."""
        return self.orientation >= 5


def _exif_orientation(seg: bytes) -> int:
    """The orientation tag of an APP1 Exif payload (``Exif\\0\\0`` + TIFF), else 1."""
    if not seg.startswith(b"Exif\x00\x00") or len(seg) < 14:
        return 1
    tiff = seg[6:]
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return 1
    try:
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, ifd)
        for k in range(count):
            tag, typ, _n = struct.unpack_from(order + "HHI", tiff, ifd + 2 + 12 * k)
            if tag == 0x0112 and typ == 3:  # SHORT
                (value,) = struct.unpack_from(order + "H", tiff, ifd + 2 + 12 * k + 8)
                return value if 1 <= value <= 8 else 1
    except struct.error:
        return 1
    return 1


def jpeg_header(data: bytes | memoryview) -> JpegHeader:
    """Parse the segments of a JPEG up to its first scan (see :class:`JpegHeader`).

    Raises:
        DecodeError: not a JPEG, or no frame header / scan before the data ends.
    """
    buf = bytes(data[:2]) if isinstance(data, memoryview) else data[:2]
    if buf != b"\xff\xd8":
        raise DecodeError("not a JPEG file (missing start-of-image marker)")
    mv = memoryview(data)
    n = len(mv)
    i = 2
    frame: tuple[int, int, int, int, str] | None = None
    orientation = 1
    while i + 4 <= n:
        if mv[i] != 0xFF:
            raise DecodeError(f"corrupt JPEG: marker expected at byte {i}")
        marker = mv[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        (length,) = struct.unpack_from(">H", mv, i + 2)
        if length < 2:
            raise DecodeError(f"corrupt JPEG: segment of length {length} at byte {i}")
        if marker == _SOS:
            if frame is None:
                break
            width, height, comps, precision, process = frame
            return JpegHeader(width, height, comps, precision, process, orientation, i)
        if marker in _SOF:
            if i + 10 > n:
                break
            precision, height, width, comps = struct.unpack_from(">BHHB", mv, i + 4)
            frame = (int(width), int(height), int(comps), int(precision), _SOF[marker])
        elif marker == _APP1 and orientation == 1:
            orientation = _exif_orientation(bytes(mv[i + 4:min(i + 2 + length, n)]))
        i += 2 + length
    what = "frame header" if frame is None else "scan"
    raise DecodeError(f"corrupt or truncated JPEG (no {what} before the data ends)")


def check_jpeg(data: bytes | memoryview, max_side: int) -> JpegHeader:
    """The header of ``data`` after the checks made before decoding (see the module doc).

    Raises:
        DecodeError: not a JPEG, empty or oversized frame, too many scans, truncated.
    """
    h = jpeg_header(data)
    if h.width == 0 or h.height == 0:
        raise DecodeError(f"JPEG declares an empty image ({h.width}×{h.height})")
    if h.width > max_side or h.height > max_side:
        raise DecodeError(
            f"JPEG declares {h.width}×{h.height} pixels, more than the {max_side}×{max_side} allowed "
            "(refused before decoding to avoid a decompression bomb)")
    raw = data if isinstance(data, bytes) else bytes(data)
    if raw.rfind(_EOI, h.scan_offset) < 0:  # entropy-coded data never holds FF D9: stuffed
        raise DecodeError("truncated JPEG (no end-of-image marker after the scan data)")
    scans = raw.count(b"\xff\xda", h.scan_offset)
    if scans > MAX_SCANS:
        raise DecodeError(f"JPEG holds {scans} scans, more than the {MAX_SCANS} allowed "
                          "(refused before decoding: such files cost minutes of CPU)")
    return h


def decode_jpeg_gray(data: bytes | memoryview, *, max_side: int) -> np.ndarray:
    """JPEG bytes → uint8 H×W gray at full resolution, EXIF orientation applied.

    Raises:
        DecodeError: refused by :func:`check_jpeg`, or libjpeg cannot decode the data.
    """
    check_jpeg(data, max_side)
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    except cv2.error as e:
        raise DecodeError(f"JPEG decode failed: {str(e).strip().splitlines()[-1][:200]}") from None
    if img is None:
        raise DecodeError("JPEG decode failed (corrupt image data, or a coding process OpenCV's "
                          "libjpeg does not decode)")
    return img


__all__ = ["JPEG_SOI", "MAX_SCANS", "JpegHeader", "check_jpeg", "decode_jpeg_gray", "jpeg_header"]
