"""PNG bytes → 8-bit grayscale image at model resolution (uint8, H×W).

One job: turn the bytes of one archive member into the array the cache stores. Two decoders,
both releasing the GIL (a thread pool decodes in parallel), with the same pixels:

* ``auto`` (default): 8-bit gray non-interlaced PNGs — every NIH image but the ~519 RGBA ones —
  go through the split decoder of :mod:`imgae_dx.data.png_split` (libdeflate inflate + a C
  unfilter loop, ~2× faster than libpng, pixel-identical, with every CRC, the Adler-32 and the
  exact inflated size checked); everything else through ``cv2.imdecode``. When the split decoder
  is not installed, everything goes through ``cv2.imdecode`` and a one-time notice is logged.
* ``cv2``: ``cv2.imdecode`` (libpng) for every PNG.

``cv2.imdecode`` runs with ``IMREAD_UNCHANGED`` and the result is converted explicitly, so every
PNG flavour the NIH archive (or a user's folder) may hold ends up the same way:

* 8-bit gray → as is; 16-bit gray → scaled to 8 bit (``v / 257``, rounded);
* RGB / RGBA / gray+alpha / palette (libpng expands these to BGR or BGRA) → luminance
  (``cv2.COLOR_BGR(A)2GRAY``); the alpha channel is ignored (NIH's ~519 RGBA files are opaque).

Before decoding, the image size is read from the IHDR chunk and anything larger than
``max_side`` pixels on a side is refused (a "decompression bomb" would otherwise allocate
gigabytes). The image is then resized with area averaging (``cv2.INTER_AREA``) to
``image_size × image_size``. Anything that cannot be decoded raises :class:`DecodeError`, which
the dataset counts as a skipped image.

:data:`DECODER_VERSION` names the preprocessing (decoders, conversion, area resize and the OpenCV
build doing it); persistent caches of decoded images are keyed by it.
"""

from __future__ import annotations

import struct
from typing import Literal

import cv2
import numpy as np

from imgae_dx.data import png_split
from imgae_dx.data.png_split import PNG_SIGNATURE, DecodeError

#: uint8 → float32 in [0, 1] by table lookup: exact (v / 255), single-threaded numpy (torch's
#: intra-op threads would contend with the decode threads for a 100 µs conversion).
_TO_UNIT = np.arange(256, dtype=np.float32) / np.float32(255.0)


class ImageReadError(DecodeError):
    """One image file (PNG, JPEG, DICOM) cannot be read: what is wrong with it and how to fix it.

    The data path's :class:`DecodeError` family: the streaming dataset skips and counts it like any
    undecodable member; ``predict`` writes it on that file's row and goes on with the others.
    """


def to_unit(images: np.ndarray) -> np.ndarray:
    """uint8 images (any shape) → float32 ``v / 255``: the model input of training, validation,
    calibration and ``predict`` alike."""
    return _TO_UNIT[images]


def to_uint8(unit: np.ndarray) -> np.ndarray:
    """The inverse of :func:`to_unit` on its values (float ``v / 255`` → uint8 ``v``), exactly."""
    return np.rint(unit * 255.0).astype(np.uint8)

DEFAULT_MAX_SIDE = 8192
Decoder = Literal["auto", "cv2"]
DECODERS: tuple[str, ...] = ("auto", "cv2")
#: Identifies the preprocessing of :func:`decode_png` (keys persistent image caches). The split
#: decoder is pixel-identical to libpng, so which of the two ran does not enter it.
DECODER_VERSION = f"png-gray8-1/{png_split.SPLIT_DECODER_VERSION}/area-1/cv2-{cv2.__version__}"


def png_size(data: bytes | memoryview) -> tuple[int, int, int, int]:
    """Read ``(width, height, bit_depth, color_type)`` from the IHDR chunk without decoding.

    Raises:
        DecodeError: the bytes do not start with a PNG signature followed by an IHDR chunk.
    """
    head = bytes(data[:33])
    if len(head) < 33 or head[:8] != PNG_SIGNATURE:
        raise DecodeError("not a PNG file (missing PNG signature)")
    length, ctype = struct.unpack(">I4s", head[8:16])
    if ctype != b"IHDR" or length != 13:
        raise DecodeError("malformed PNG: the first chunk is not a 13-byte IHDR")
    width, height, depth, color = struct.unpack(">IIBB", head[16:26])
    return int(width), int(height), int(depth), int(color)


def decode_gray(data: bytes | memoryview, *, max_side: int = DEFAULT_MAX_SIDE,
                decoder: Decoder = "auto") -> np.ndarray:
    """Decode PNG bytes to an 8-bit grayscale array at the original resolution.

    Args:
        data: the PNG file's bytes.
        max_side: refuse images wider or taller than this (checked on the IHDR, before decoding).
        decoder: ``auto`` (split decoder for 8-bit gray, libpng for the rest) or ``cv2``.

    Returns:
        uint8 array of shape ``H×W``.

    Raises:
        DecodeError: not a PNG, too large, truncated or otherwise undecodable.
        ValueError: unknown ``decoder``.
    """
    if decoder == "auto":
        if png_split.available():
            img = png_split.decode_gray8(data, max_side=max_side)
            if img is not None:
                return img
        else:
            png_split.notice_unavailable()
    elif decoder != "cv2":
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    return _decode_cv2(data, max_side)


def _decode_cv2(data: bytes | memoryview, max_side: int) -> np.ndarray:
    """libpng through ``cv2.imdecode``, IHDR size checked first (see :func:`decode_gray`)."""
    width, height, _, _ = png_size(data)
    if width == 0 or height == 0:
        raise DecodeError(f"PNG declares an empty image ({width}×{height})")
    if width > max_side or height > max_side:
        raise DecodeError(
            f"PNG declares {width}×{height} pixels, more than the {max_side}×{max_side} allowed "
            "(refused before decoding to avoid a decompression bomb)"
        )
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as e:  # pragma: no cover - libpng errors normally surface as None
        raise DecodeError(f"PNG decode failed: {e}") from None
    if img is None:
        raise DecodeError("PNG decode failed (truncated or corrupt image data)")
    return to_gray8(img)


def to_gray8(img: np.ndarray) -> np.ndarray:
    """Convert a decoded image (H×W, H×W×C with C in 1..4; uint8 or uint16) to uint8 H×W."""
    if img.ndim == 3:
        channels = img.shape[2]
        if channels == 1:
            img = img[:, :, 0]
        elif channels == 2:  # gray + alpha (some decoders keep it): drop alpha
            img = np.ascontiguousarray(img[:, :, 0])
        elif channels == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        elif channels == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY)
        else:
            raise DecodeError(f"unsupported image with {channels} channels")
    elif img.ndim != 2:
        raise DecodeError(f"unsupported image of shape {img.shape}")
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return cv2.convertScaleAbs(img, alpha=1.0 / 257.0)
    raise DecodeError(f"unsupported pixel type {img.dtype}")


def resize_area(img: np.ndarray, image_size: int) -> np.ndarray:
    """Resize a uint8 H×W image to ``image_size × image_size`` with area averaging.

    Non-square inputs are stretched (NIH images are all square). Returns a C-contiguous uint8
    array; the input is returned unchanged when it already has the target size.
    """
    if img.shape == (image_size, image_size):
        return np.ascontiguousarray(img)
    return cv2.resize(img, (image_size, image_size), interpolation=cv2.INTER_AREA)


def decode_png(
    data: bytes | memoryview, image_size: int, *, max_side: int = DEFAULT_MAX_SIDE,
    decoder: Decoder = "auto",
) -> np.ndarray:
    """PNG bytes → uint8 ``image_size × image_size`` grayscale (decode, convert, area resize).

    ``decoder`` as in :func:`decode_gray` (the pixels are the same either way).

    Raises:
        DecodeError: the bytes cannot be decoded (the dataset skips and counts such members).
    """
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    return resize_area(decode_gray(data, max_side=max_side, decoder=decoder), image_size)
