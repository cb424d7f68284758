"""Image bytes (PNG, JPEG, DICOM) → 8-bit grayscale at model resolution (uint8 ``S×S``).

One job: turn the bytes of one archive member (or one user file) into the array the cache stores
and the model scores. :func:`decode_image` tells the format by content, never by name:

* **PNG** (signature) → :func:`decode_gray`, below;
* **JPEG** (``FF D8 FF``) → :mod:`imgae_dx.data.jpeg` (SOF size checked before decoding, EXIF
  orientation applied, luminance), decoded at the model's scale by libjpeg-turbo's DCT scaling
  (:data:`JPEG_SCALE_MARGIN`) before the resize;
* **DICOM** (``DICM`` at byte 128, or a file without the preamble that starts with a group 0002
  or 0008 element) → :mod:`imgae_dx.data.dicom` (Rows/Columns checked before decoding, modality
  LUT, VOI, photometric interpretation); plain 8-bit MONOCHROME2 frames, uncompressed or JPEG
  Baseline (RSNA's), take the fast path of :mod:`imgae_dx.data.dicom_frames` (the reader's stored
  values; JPEG frames DCT-scaled like JPEG files);
* anything else → :class:`DecodeError` naming what the bytes look like (an HTML error page, a
  ZIP, a GIF, text, …).

Then :func:`resize_image` brings the gray image to ``S×S`` with the ``data.resize`` policy
(:data:`RESIZE_POLICIES`): ``squash`` (area resize of the whole image, the aspect ratio is not
kept), ``pad`` (area resize of the long side to ``S``, the short side padded centred with
:data:`PAD_VALUE`) or ``crop`` (centre square, then area resize). On a square image the three
give the same pixels.

PNG decoders, both releasing the GIL (a thread pool decodes in parallel), with the same pixels:

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
gigabytes). Anything that cannot be decoded raises :class:`DecodeError`, which the dataset counts
as a skipped image.

:func:`decoder_version` (``DECODER_VERSION`` + the resize policy) names the preprocessing —
decoders, conversion, resize policy and the OpenCV build doing it; persistent caches of decoded
images are keyed by it, so images of different preprocessing never mix.
"""

from __future__ import annotations

import math
import struct
from typing import Literal

import cv2
import numpy as np

from imgae_dx.data import jpeg, png_split
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
Resize = Literal["squash", "pad", "crop"]
RESIZE_POLICIES: tuple[str, ...] = ("squash", "pad", "crop")
#: The value ``pad`` fills the short side with: black, what a radiograph shows where nothing
#: attenuates the beam (air around the body, the collimated border), so the band reads as
#: "outside the patient" and is the same in every image.
PAD_VALUE = 0
#: JPEGs are decoded at the largest DCT reduction (1/2, 1/4, 1/8) that keeps the short side at
#: least this many times ``image_size`` (so the area resize after it stays a downscale). Chosen on
#: real radiographs (``benchmarks/decode_bench.py --format jpeg``, ``benchmarks/RESULTS.md``): 1
#: is ~3.6× faster than a full decode at a mean |Δ| of ~1 gray level; 1.5 and 2 halve Δ at 3.0×
#: and 2.6×.
JPEG_SCALE_MARGIN = 1.0
#: Identifies the decoders of :func:`decode_image` (PNG, JPEG, DICOM; conversion to gray; area
#: resize; the OpenCV build). The split PNG decoder is pixel-identical to libpng, so which of the
#: two ran does not enter it. Caches are keyed by :func:`decoder_version` (this + the resize policy).
DECODER_VERSION = (f"png-gray8-1/{png_split.SPLIT_DECODER_VERSION}/jpeg-gray-exif-dct{JPEG_SCALE_MARGIN:g}-1/"
                   f"dicom-2-stored8-fast8-dct-1/area-1/cv2-{cv2.__version__}")


def decoder_version(resize: Resize) -> str:
    """The preprocessing of ``decode_image(..., resize=resize)``: what image caches are keyed by."""
    _check_policy(resize)
    return f"{DECODER_VERSION}/resize-{resize}-1"


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
    """Resize a uint8 H×W image to ``image_size × image_size`` with area averaging (``squash``).

    Non-square inputs are stretched. Returns a C-contiguous uint8 array; the input is returned
    unchanged when it already has the target size.
    """
    if img.shape == (image_size, image_size):
        return np.ascontiguousarray(img)
    return cv2.resize(img, (image_size, image_size), interpolation=cv2.INTER_AREA)


def _check_policy(policy: str) -> None:
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"resize policy must be one of {', '.join(RESIZE_POLICIES)}, got {policy!r}")


def resize_image(img: np.ndarray, image_size: int, policy: Resize) -> np.ndarray:
    """uint8 H×W → uint8 ``image_size × image_size`` (C-contiguous) by the ``data.resize`` policy.

    * ``squash``: area resize of the whole image (:func:`resize_area`); the aspect ratio is lost.
    * ``pad``: area resize keeping the aspect ratio, the long side to ``image_size`` (the short
      one to ``round(short · image_size / long)``, at least 1), then the short side padded with
      :data:`PAD_VALUE`, centred (an odd remainder goes to the bottom/right).
    * ``crop``: the centred ``min(H, W)`` square (an odd remainder cut from the bottom/right),
      then area resize; what lies outside the square is dropped.

    A square image gives the same pixels under every policy.
    """
    _check_policy(policy)
    h, w = img.shape
    if policy == "squash" or h == w:
        return resize_area(img, image_size)
    if policy == "crop":
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        return resize_area(img[top:top + side, left:left + side], image_size)
    long_side = max(h, w)
    short = max(1, round(min(h, w) * image_size / long_side))
    nh, nw = (image_size, short) if h > w else (short, image_size)
    inner = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    out = np.full((image_size, image_size), PAD_VALUE, np.uint8)
    top, left = (image_size - nh) // 2, (image_size - nw) // 2
    out[top:top + nh, left:left + nw] = inner
    return out


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


# ------------------------------------------------------------------------- any format
Format = Literal["png", "jpeg", "dicom"]
# Explicit-VR value representations (PS3.5 6.2): how a preamble-less DICOM's first element reads.
_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM "
                 b"UC UI UL UN UR US UT UV".split())
# Signatures of what archives and folders hold besides images, for the error message.
_LOOKS_LIKE = ((b"GIF87a", "a GIF image"), (b"GIF89a", "a GIF image"), (b"BM", "a BMP image"),
               (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"),
               (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"), (b"\xff\x4f\xff\x51", "a JPEG 2000 codestream"),
               (b"%PDF", "a PDF document"), (b"PK\x03\x04", "a ZIP archive"), (b"\x1f\x8b", "a gzip file"),
               (b"\x00\x05\x16\x07", "a macOS resource fork (AppleDouble '._' file)"),
               (b"\x00\x05\x16\x00", "a macOS resource fork (AppleSingle file)"))


def _raw_dicom(head: bytes) -> bool:
    """Whether ``head`` starts like a DICOM data set written without the 128-byte preamble:
    a group 0002 (file meta) or 0008 element, in explicit VR (a known VR) or implicit VR."""
    if len(head) < 8:
        return False
    group, element = struct.unpack_from("<HH", head)
    if group not in (0x0002, 0x0008) or element > 0x0100:
        return False
    if head[4:6] in _VRS:
        return True
    (length,) = struct.unpack_from("<I", head, 4)
    return group == 0x0008 and length < 1024  # implicit VR has no file meta group


def describe_bytes(head: bytes) -> str:
    """What the first bytes of a file look like, for a :class:`DecodeError` (\"an HTML page\", …)."""
    if not head:
        return "an empty file"
    for sig, what in _LOOKS_LIKE:
        if head.startswith(sig):
            return what
    if head[8:12] == b"WEBP" and head.startswith(b"RIFF"):
        return "a WebP image"
    text = head.lstrip()
    if text[:1] == b"<" and b"html" in text[:64].lower():
        return "an HTML page (an error page saved in place of the image?)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:  # a character cut at the end of the sniffed bytes is fine
        text = head[:e.start].decode("utf-8") if e.start >= len(head) - 3 else ""
    if text and all(c.isprintable() or c in "\t\r\n" for c in text):
        return f"text ({text[:24]!r}…)"
    return f"unrecognised binary data (starts with {head[:8].hex(' ')})"


def sniff_format(data: bytes | memoryview) -> Format:
    """``png`` | ``jpeg`` | ``dicom`` from the content of ``data`` (never from a name).

    Raises:
        DecodeError: none of the three, naming what the bytes look like.
    """
    head = bytes(data[:132])
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith(jpeg.JPEG_SOI):
        return "jpeg"
    if head[128:132] == b"DICM" or _raw_dicom(head):
        return "dicom"
    raise DecodeError(f"not a PNG, JPEG or DICOM image: the bytes look like {describe_bytes(head)}")


def decode_gray_any(data: bytes | memoryview, *, max_side: int = DEFAULT_MAX_SIDE,
                    png_decoder: Decoder = "auto", image_size: int | None = None) -> np.ndarray:
    """PNG, JPEG or DICOM bytes → uint8 H×W gray (format told by content).

    At full resolution, unless ``image_size`` is given: then a JPEG (and the JPEG frame of a
    DICOM on the fast path of :mod:`imgae_dx.data.dicom_frames`) is decoded at the model's scale —
    the largest DCT reduction (1/2, 1/4, 1/8) whose output keeps the short side at least
    :data:`JPEG_SCALE_MARGIN` × ``image_size`` (:func:`imgae_dx.data.jpeg.dct_scale`), so that
    every resize policy after it is a downscale.

    Raises:
        DecodeError: unrecognised, too large, truncated, corrupt or unsupported.
    """
    kind = sniff_format(data)
    if kind == "png":
        return decode_gray(data, max_side=max_side, decoder=png_decoder)
    keep = None if image_size is None else math.ceil(JPEG_SCALE_MARGIN * image_size)
    if kind == "jpeg":
        return jpeg.decode_jpeg_gray(data, max_side=max_side, keep_short=keep)
    from imgae_dx.data import dicom_frames  # pydicom is imported only for DICOM members
    from imgae_dx.data.dicom import decode_dicom

    raw = data if isinstance(data, bytes) else bytes(data)
    fast = dicom_frames.decode_fast(raw, max_side=max_side, keep_short=keep)
    if fast is not None:
        return fast
    return decode_dicom(raw, max_side=max_side, force=raw[128:132] != b"DICM")


def decode_image(
    data: bytes | memoryview, image_size: int, *, resize: Resize = "squash",
    max_side: int = DEFAULT_MAX_SIDE, png_decoder: Decoder = "auto",
) -> np.ndarray:
    """PNG/JPEG/DICOM bytes → uint8 ``image_size × image_size`` gray (see the module doc).

    Args:
        data: the file's bytes (format told by content).
        image_size: side of the output.
        resize: the ``data.resize`` policy (:func:`resize_image`).
        max_side: refuse images wider or taller than this, from the header, before decoding.
        png_decoder: ``auto`` | ``cv2`` (PNG only; same pixels).

    Raises:
        DecodeError: the bytes cannot be decoded (the dataset skips and counts such members).
        ValueError: ``image_size``, ``resize`` or ``png_decoder`` out of range (a caller's bug).
    """
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    _check_policy(resize)
    gray = decode_gray_any(data, max_side=max_side, png_decoder=png_decoder, image_size=image_size)
    return resize_image(gray, image_size, resize)
