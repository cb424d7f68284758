"""DICOM bytes → 8-bit grayscale at full resolution (uint8 H×W), through ``pydicom``.

The project's one DICOM reader: ``predict`` (:mod:`imgae_dx.inference.images`) and the data path
use it alike. :func:`read_dicom` gives the pixels and the scope warnings; :func:`decode_dicom`
the pixels alone.

Reading, before any pixel is decoded:

* a file without the 128-byte preamble and ``DICM`` (``force``) or without the file meta group
  is read as pydicom detects it; with no Transfer Syntax UID the pixel data is taken in the
  encoding the dataset was read in — Implicit VR Little Endian, DICOM's default, unless the first
  element carries an explicit VR;
* a **Deflated Explicit VR Little Endian** dataset is inflated here, in bounded chunks, and
  refused as soon as it grows past :func:`pixel_budget` (the PNG decoder's limit: ``max_side``² ×
  2 bytes) plus :data:`DEFLATED_HEADER_SLACK` for the other elements — pydicom would inflate it
  whole first (a 2 MB file can inflate to gigabytes);
* Rows/Columns above ``max_side``, more than one frame, and pixel data whose declared size
  (rows × columns × samples × bytes per sample) exceeds :func:`pixel_budget` are refused;
* a compressed syntax without an installed handler, and 12-bit JPEG Extended with Pillow as the
  only handler (Pillow decodes 8-bit JPEG only), are refused with the pip command that fixes it.

What happens to the stored values, in order (DICOM PS3.3 C.11):

1. decode the pixel data with whatever ``pydicom`` handler is installed for the transfer syntax
   (uncompressed, deflated and RLE with pydicom alone; 8-bit JPEG / JPEG 2000 through Pillow;
   JPEG-LS, 12-bit JPEG and others through ``pylibjpeg``/``pyjpegls``/``python-gdcm``);
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

Refused, with a :class:`~imgae_dx.data.decode.ImageReadError` saying why: no pixel data, the
limits above, an unknown photometric interpretation, pixel data that does not decode.

Scope warnings (:attr:`DicomImage.warnings`; the image is still decoded): a Modality other than
the radiographic ones (:data:`RADIOGRAPH_MODALITIES`: CT, MR, NM, RT dose …) and a Body Part
Examined that is not the chest (:data:`CHEST_WORDS`). Absent elements warn of nothing.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgae_dx.data.decode import ImageReadError

INSTALL_HINT = "pip install 'pydicom>=3.0' (a dependency of imgae-dx: reinstall it)"
#: what to install for 12-bit JPEG (JPEG Extended), which Pillow cannot decode
JPEG12_HINT = "pip install pylibjpeg pylibjpeg-libjpeg"
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
#: pip names of the import names pydicom lists as missing dependencies (where they differ)
_PIP_NAMES = {"gdcm": "python-gdcm"}
#: Modality values of projection radiographs: computed (CR), digital (DX), "DR" as several
#: vendors write it, and digitised film (RG). Anything else is outside what the models saw.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RG"})
#: a Body Part Examined containing one of these (upper case) is the chest
CHEST_WORDS = ("CHEST", "THORAX", "LUNG")
#: bytes allowed, besides the pixel budget, for the other elements of a deflated dataset
#: (overlays, icons, private tags)
DEFLATED_HEADER_SLACK = 16 * 2**20
_INFLATE_CHUNK = 1 << 20
_DEFLATED_TSUID = "1.2.840.10008.1.2.1.99"
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
                       b"UT", b"UV"})


@dataclass(frozen=True)
class DicomImage:
    """A decoded DICOM: ``pixels`` (uint8 H×W, full resolution) and scope ``warnings``."""

    pixels: np.ndarray
    warnings: tuple[str, ...] = ()


def pixel_budget(max_side: int) -> int:
    """Bytes of pixel data allowed: ``max_side``² 16-bit samples, the largest PNG accepted."""
    return int(max_side) ** 2 * 2


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError:
        raise ImageReadError(f"reading DICOM files needs pydicom: {INSTALL_HINT}") from None
    return pydicom


def _pip_command(requirement: str) -> str:
    """'pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1' → a pip command (import
    names mapped to their pip names: pydicom's ``gdcm>=3.0.10`` is ``python-gdcm>=3.0.10``)."""
    needs = requirement.split("requires", 1)[-1]
    pkgs = []
    for p in (p.strip() for p in re.split(r"\band\b|,", needs)):
        name = re.split(r"[<>=!~ ]", p, maxsplit=1)[0]
        if p and name != "numpy":
            pkgs.append(_PIP_NAMES.get(name, name) + p[len(name):])
    return "pip install " + " ".join(f"'{p}'" for p in pkgs)


def check_decoder(ds: Any) -> None:
    """Raise ImageReadError when no installed handler decodes this dataset's transfer syntax."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGExtended12Bit

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
    bits = int(getattr(ds, "BitsStored", 8) or 8)
    if tsuid == JPEGExtended12Bit and bits > 8 and set(decoder.available_plugins) <= {"pillow"}:
        raise ImageReadError(f"DICOM pixel data is {bits}-bit JPEG Extended ({tsuid}): Pillow cannot "
                             f"decode 12-bit JPEG; install a decoder that can: {JPEG12_HINT}")


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


def _file_meta_end(data: bytes) -> tuple[int, str | None]:
    """``(offset of the dataset, Transfer Syntax UID)`` from the file meta group (group 0002,
    always Explicit VR Little Endian), after the preamble and ``DICM`` when present."""
    pos = 132 if data[128:132] == b"DICM" else 0
    tsuid: str | None = None
    n = len(data)
    while pos + 8 <= n:
        group, element = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            break
        vr = data[pos + 4:pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > n:
                break
            (length,) = struct.unpack_from("<I", data, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            start = pos + 8
        if element == 0x0010:
            tsuid = data[start:start + length].rstrip(b"\0 ").decode("ascii", "replace")
        pos = start + length
    return min(pos, n), tsuid


def _inflate_bounded(deflated: memoryview, limit: int) -> list[bytes]:
    """Raw-deflate ``deflated`` in chunks of :data:`_INFLATE_CHUNK` → the inflated pieces;
    ImageReadError as soon as they would exceed ``limit`` bytes (nothing larger is allocated)."""
    d = zlib.decompressobj(-zlib.MAX_WBITS)
    pieces: list[bytes] = []
    size = 0
    try:
        for i in range(0, len(deflated), _INFLATE_CHUNK):
            piece: bytes | memoryview = deflated[i:i + _INFLATE_CHUNK]
            while not d.eof:
                want = min(_INFLATE_CHUNK, limit + 1 - size)  # bounded output per call, too
                pieces.append(d.decompress(piece, want))
                size += len(pieces[-1])
                if size > limit:
                    raise ImageReadError(
                        f"deflated DICOM dataset inflates to more than {limit / 2**20:.0f} MB (the "
                        "pixel budget of max_side² × 2 bytes plus its header): refused while "
                        "inflating, before allocating it (a decompression bomb?)")
                piece = d.unconsumed_tail
                if not piece and len(pieces[-1]) < want:  # input used up, no output pending
                    break
            if d.eof:
                break
        pieces.append(d.flush())
    except zlib.error as e:
        raise ImageReadError(f"deflated DICOM dataset is corrupt ({e})") from None
    if not d.eof:
        raise ImageReadError("deflated DICOM dataset is truncated (the deflate stream does not end)")
    return pieces


def _read_dataset(data: bytes, max_side: int, force: bool) -> Any:
    """pydicom's dataset of ``data``, a deflated one inflated within the budget (module doc)."""
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError

    try:
        start, tsuid = _file_meta_end(data)
        if tsuid == _DEFLATED_TSUID:
            from pydicom.filewriter import write_file_meta_info
            from pydicom.uid import ExplicitVRLittleEndian

            meta = pydicom.dcmread(io.BytesIO(data[:start]), force=True).file_meta
            inflated = _inflate_bounded(memoryview(data)[start:],
                                        pixel_budget(max_side) + DEFLATED_HEADER_SLACK)
            meta.TransferSyntaxUID = ExplicitVRLittleEndian  # what the inflated bytes are
            head = io.BytesIO()
            head.write(b"\0" * 128 + b"DICM")
            write_file_meta_info(head, meta, enforce_standard=False)
            data = b"".join([head.getvalue(), *inflated])
            del inflated
            force = True
        ds = pydicom.dcmread(io.BytesIO(data), force=force)
    except ImageReadError:
        raise
    except InvalidDicomError as e:
        raise ImageReadError(f"not a readable DICOM file ({e})") from None
    except Exception as e:  # pydicom raises many types on damaged headers
        raise ImageReadError(f"DICOM header cannot be read ({type(e).__name__}: {_one_line(e, 160)})") from None
    meta = ds.file_meta if getattr(ds, "file_meta", None) is not None else None
    if meta is None or "TransferSyntaxUID" not in meta:
        from pydicom.dataset import FileMetaDataset
        from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

        implicit, little = ds.original_encoding
        if meta is None:
            ds.file_meta = meta = FileMetaDataset()
        meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit is not False else
                                  ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian)
    return ds


def _one_line(e: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (pydicom's span several), at most ``limit`` characters."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def scope_warnings(ds: Any) -> tuple[str, ...]:
    """Why this image may be outside what a chest-radiograph model saw (see the module doc)."""
    out = []
    modality = str(getattr(ds, "Modality", "") or "").strip().upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        out.append(f"DICOM Modality {modality} is not a projection radiograph "
                   f"({'/'.join(sorted(RADIOGRAPH_MODALITIES))}): scored, but outside what the model saw")
    part = str(getattr(ds, "BodyPartExamined", "") or "").strip().upper()
    if part and not any(w in part for w in CHEST_WORDS):
        out.append(f"DICOM Body Part Examined is {part}, not the chest: scored, but outside what "
                   "the model saw")
    return tuple(out)


def read_dicom(data: bytes, *, max_side: int, force: bool = False) -> DicomImage:
    """DICOM file bytes → :class:`DicomImage` (uint8 H×W at full resolution + scope warnings).

    Args:
        data: the file's bytes.
        max_side: refuse images wider or taller than this (Rows/Columns, before decoding); the
            pixel budget is :func:`pixel_budget` of it.
        force: read files without the 128-byte preamble and ``DICM`` prefix.

    Raises:
        ImageReadError: not DICOM, no pixel data, too large, undecodable, unsupported.
    """
    ds = _read_dataset(data, max_side, force)
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
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    allocated = int(getattr(ds, "BitsAllocated", 8) or 8)
    declared = rows * cols * samples * max(1, (allocated + 7) // 8)
    if declared > pixel_budget(max_side):
        raise ImageReadError(f"DICOM declares {cols}×{rows}×{samples} samples of {allocated} bits "
                             f"({declared / 2**20:.0f} MB), more than the pixel budget of "
                             f"{pixel_budget(max_side) / 2**20:.0f} MB (refused before decoding)")
    check_decoder(ds)
    try:
        arr = ds.pixel_array
    except Exception as e:  # handlers raise ValueError/RuntimeError/… on damaged pixel data
        raise ImageReadError(f"DICOM pixel data cannot be decoded ({type(e).__name__}: "
                             f"{_one_line(e)})") from None
    return DicomImage(_to_gray8(arr, ds), scope_warnings(ds))


def decode_dicom(data: bytes, *, max_side: int, force: bool = False) -> np.ndarray:
    """DICOM file bytes → uint8 H×W grayscale at full resolution (:func:`read_dicom`'s pixels)."""
    return read_dicom(data, max_side=max_side, force=force).pixels


def _to_gray8(arr: np.ndarray, ds: Any) -> np.ndarray:
    """Decoded pixel values → uint8 H×W (steps 2–4 of the module doc)."""
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
