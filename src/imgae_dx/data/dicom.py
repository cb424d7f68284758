"""DICOM bytes → 8-bit grayscale at full resolution (uint8 H×W), through ``pydicom``.

The project's one DICOM reader: ``predict`` (:mod:`imgae_dx.inference.images`) and the data path
use it alike.

What happens to the stored values, in order (DICOM PS3.3 C.11):

1. decode the pixel data with whatever ``pydicom`` handler is installed for the transfer syntax
   (uncompressed, deflated and RLE with pydicom alone; JPEG / JPEG 2000 through Pillow; JPEG-LS
   and others through ``pylibjpeg``/``pyjpegls``/``gdcm``). A compressed syntax without a handler
   is refused *before* decoding with a message naming the missing plugin and its pip command;
2. grayscale (``MONOCHROME1``/``MONOCHROME2``): the modality LUT (Rescale Slope/Intercept or a
   Modality LUT Sequence), then the first VOI transform present — a VOI LUT Sequence, else Window
   Center/Width (LINEAR, LINEAR_EXACT or SIGMOID) — mapped to [0, 1]. With neither, PS3.3 C.11
   leaves the mapping to the application: **8-bit** unsigned data whose modality LUT is the
   identity keeps its stored values (``v / 255``: the pixels an 8-bit PNG or JPEG of the same
   image gives — RSNA's DICOMs are the NIH PNGs re-encoded, and decode to those PNGs' values);
   anything else (12/16-bit data, rescaled values) is stretched min–max over the values the image
   spans. ``MONOCHROME1`` (white = low values) is inverted so that, as in the NIH PNGs, dense
   tissue is bright;
3. colour (``RGB``, ``YBR_*`` — converted to RGB by pydicom —, ``PALETTE COLOR`` through its
   LUT) → luminance;
4. rounded to uint8.

Refused, with a :class:`~imgae_dx.data.decode.ImageReadError` saying why: no pixel data,
more than one frame, a side above the caller's ``max_side`` (read from Rows/Columns before
decoding), an unknown photometric interpretation, pixel data that does not decode.
"""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np

from imgae_dx.data.decode import ImageReadError

INSTALL_HINT = "pip install 'pydicom>=3.0' (a dependency of imgae-dx: reinstall it)"
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError:
        raise ImageReadError(f"reading DICOM files needs pydicom: {INSTALL_HINT}") from None
    return pydicom


def _pip_command(requirement: str) -> str:
    """'pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1' → a pip command."""
    needs = requirement.split("requires", 1)[-1]
    pkgs = [p.strip() for p in re.split(r"\band\b|,", needs) if p.strip() and p.strip() != "numpy"]
    return "pip install " + " ".join(f"'{p}'" for p in pkgs)


def check_decoder(ds: Any) -> None:
    """Raise ImageReadError when no installed handler decodes this dataset's transfer syntax."""
    from pydicom.pixels import get_decoder

    meta = getattr(ds, "file_meta", None)
    tsuid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if tsuid is None or not tsuid.is_compressed:
        return
    try:
        decoder = get_decoder(tsuid)
    except NotImplementedError:
        raise ImageReadError(f"DICOM transfer syntax {tsuid.name} ({tsuid}) is not supported by "
                             "pydicom; convert the file to an uncompressed syntax") from None
    if not decoder.is_available:
        options = "; or ".join(_pip_command(r) for r in decoder.missing_dependencies)
        raise ImageReadError(f"DICOM pixel data is compressed as {tsuid.name} ({tsuid}) and no "
                             f"installed package decodes it; install one: {options}")


def window(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """VOI windowing of PS3.3 C.11.2.1.2 / C.11.2.1.3, output scaled to [0, 1] (float64)."""
    f = (function or "LINEAR").upper()
    if f == "SIGMOID":
        if width <= 0:
            raise ImageReadError(f"DICOM Window Width {width} must be > 0 for SIGMOID")
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if f == "LINEAR_EXACT":
        if width <= 0:
            raise ImageReadError(f"DICOM Window Width {width} must be > 0 for LINEAR_EXACT")
        return np.clip((x - (center - width / 2.0)) / width, 0.0, 1.0)
    if f != "LINEAR":
        raise ImageReadError(f"unsupported DICOM VOI LUT Function {function!r}")
    if width < 1:
        raise ImageReadError(f"DICOM Window Width {width} must be ≥ 1 for LINEAR windowing")
    c, w = center - 0.5, width - 1.0
    if w == 0:
        return (x > c).astype(np.float64)
    return np.clip((x - c) / w + 0.5, 0.0, 1.0)


def _first(value: Any) -> float:
    """First value of a possibly multi-valued DS element."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return float(value[0])
    return float(value)


def stored_8bit(ds: Any) -> bool:
    """Whether a grayscale dataset without VOI is shown as stored: 8 bits stored, unsigned, no
    Modality LUT Sequence and an identity rescale (slope 1, intercept 0, or none)."""
    try:
        return (int(getattr(ds, "BitsStored", 8) or 8) == 8
                and int(getattr(ds, "PixelRepresentation", 0) or 0) == 0
                and "ModalityLUTSequence" not in ds
                and float(getattr(ds, "RescaleSlope", 1) or 1) == 1.0
                and float(getattr(ds, "RescaleIntercept", 0) or 0) == 0.0)
    except (TypeError, ValueError):
        return False


def _gray_unit(arr: np.ndarray, ds: Any) -> np.ndarray:
    """Modality LUT + VOI (else stored 8-bit values, else min–max) of a grayscale frame → float64
    in [0, 1]."""
    from pydicom.pixels import apply_modality_lut, apply_voi

    m = np.asarray(apply_modality_lut(arr, ds))
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        lut_in = m if np.issubdtype(m.dtype, np.integer) else np.rint(m).astype(np.int64)  # LUTs index integers
        out = np.asarray(apply_voi(lut_in, ds, index=0), dtype=np.float64)
        return np.clip(out / float(2**bits - 1), 0.0, 1.0)
    x = m.astype(np.float64)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        return window(x, _first(ds.WindowCenter), _first(ds.WindowWidth),
                      str(getattr(ds, "VOILUTFunction", "LINEAR") or "LINEAR"))
    if stored_8bit(ds):
        return x / 255.0
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def _color_gray8(rgb: np.ndarray, bits: int) -> np.ndarray:
    import cv2

    if rgb.dtype != np.uint8:
        rgb = np.clip(np.rint(rgb.astype(np.float64) * (255.0 / (2**bits - 1))), 0, 255)
    return cv2.cvtColor(np.ascontiguousarray(rgb.astype(np.uint8)), cv2.COLOR_RGB2GRAY)


def decode_dicom(data: bytes, *, max_side: int, force: bool = False) -> np.ndarray:
    """DICOM file bytes → uint8 H×W grayscale at full resolution (see the module doc).

    Args:
        data: the file's bytes.
        max_side: refuse images wider or taller than this (Rows/Columns, before decoding).
        force: read files without the 128-byte preamble and ``DICM`` prefix.

    Raises:
        ImageReadError: not DICOM, no pixel data, too large, undecodable, unsupported.
    """
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=force)
    except InvalidDicomError as e:
        raise ImageReadError(f"not a readable DICOM file ({e})") from None
    except Exception as e:  # pydicom raises many types on damaged headers
        raise ImageReadError(f"DICOM header cannot be read ({type(e).__name__}: {str(e)[:160]})") from None
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        kind = getattr(ds, "SOPClassUID", None)
        what = f" ({kind.name})" if kind is not None and hasattr(kind, "name") else ""
        raise ImageReadError(f"DICOM file has no pixel data{what}: nothing to score")
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    if rows <= 0 or cols <= 0:
        raise ImageReadError(f"DICOM declares an empty image ({cols}×{rows})")
    if rows > max_side or cols > max_side:
        raise ImageReadError(f"DICOM declares {cols}×{rows} pixels, more than the {max_side}×{max_side} "
                             "allowed (refused before decoding)")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(f"DICOM holds {frames} frames; only single-frame radiographs are "
                             "scored (export the frame you want as its own file)")
    check_decoder(ds)
    try:
        arr = ds.pixel_array
    except Exception as e:  # handlers raise ValueError/RuntimeError/… on damaged pixel data
        raise ImageReadError(f"DICOM pixel data cannot be decoded ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    pi = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    bits = int(getattr(ds, "BitsStored", 8) or 8)
    if pi in ("MONOCHROME1", "MONOCHROME2"):
        if arr.ndim != 2:
            raise ImageReadError(f"DICOM {pi} pixel data has shape {arr.shape}, expected rows×columns")
        v = _gray_unit(arr, ds)
        if pi == "MONOCHROME1":
            v = 1.0 - v
        return np.rint(v * 255.0).astype(np.uint8)
    if pi == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(arr, ds)
        return _color_gray8(rgb, 16 if rgb.dtype != np.uint8 else 8)
    if pi == "RGB" or pi.startswith("YBR"):
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ImageReadError(f"DICOM {pi} pixel data has shape {arr.shape}, expected rows×columns×3")
        return _color_gray8(arr, bits)
    raise ImageReadError(f"unsupported DICOM Photometric Interpretation {pi!r}")


def read_header(head: bytes, keywords: list[str] | tuple[str, ...]) -> dict[str, str] | None:
    """String values of the DICOM attributes ``keywords`` (e.g. ``PatientID``, ``ViewPosition``)
    found in the first bytes of a file (its header; no pixel data needed), or None when ``head``
    is not a readable DICOM header: not DICOM by content (no ``DICM`` at byte 128 nor a leading
    group 0002/0008 element), a header pydicom cannot parse, or one holding neither a Transfer
    Syntax UID nor any data element. Attributes absent from ``head`` (or cut off at its end) are
    left out; pydicom's warnings about a head cut short are silenced."""
    import warnings

    from imgae_dx.data.decode import DecodeError, sniff_format

    pydicom = _pydicom()
    try:
        if sniff_format(head) != "dicom":
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(head), stop_before_pixels=True, force=True)
    except DecodeError:
        return None
    except Exception:  # noqa: BLE001 - a damaged head is "unreadable", whatever pydicom raises
        return None
    meta = getattr(ds, "file_meta", None)
    if not ((meta is not None and "TransferSyntaxUID" in meta) or any(t.group >= 0x0008 for t in ds.keys())):
        return None
    out: dict[str, str] = {}
    for kw in keywords:
        try:
            v = ds.get(kw)
        except Exception:  # noqa: BLE001 - an element cut off at the end of the head
            continue
        if v is not None and str(v).strip():
            out[kw] = str(v).strip()
    return out


def header_fields(head: bytes, keywords: list[str] | tuple[str, ...]) -> dict[str, str]:
    """:func:`read_header`, with an unreadable head giving no fields."""
    return read_header(head, keywords) or {}
