"""A user's image (file or array) → the uint8 ``image_size × image_size`` array a model scores.

The preprocessing is the training pipeline's, so a file scores as ``evaluate`` scored it: the
bytes go through the data layer's decoders (:mod:`imgae_dx.data.decode`), the format told by
content —

* **PNG** (8/16-bit; gray, RGB, RGBA, palette): :func:`~imgae_dx.data.decode.decode_gray`, the
  decode of the streaming dataset and its cache (IHDR size check, decode, luminance);
* **JPEG**: :mod:`imgae_dx.data.jpeg` (header checked before decoding, luminance, EXIF
  orientation applied: a phone photo of a film is scored upright);
* **DICOM** (``DICM`` at byte 128, a preamble-less data set, or a ``.dcm``/``.dicom``/``.dic``
  name): :mod:`imgae_dx.data.dicom`, with its scope warnings (a CT, a knee …);
* **arrays** (Python API): H×W or H×W×C (C = 1, 3 BGR, 4 BGRA), uint8 / uint16 as the PNG path
  converts them, or float in [0, 1] (rounded to uint8 first, as the cache stores images).

Every path then ends in :func:`to_model_size`, the one resize rule:
:func:`~imgae_dx.data.decode.resize_image` with the policy the model was trained with
(``preprocessing.resize`` of a bundle, ``data.resize`` of a run: ``squash``, ``pad`` or ``crop``).

The model input is then ``v / 255`` as float32 (:func:`to_unit`, the dataset's lookup table).
Files are read only when they are regular files (after resolving links: a FIFO, ``/dev/zero`` or
a socket is refused without being opened for long) and never past :data:`MAX_FILE_BYTES`.
Anything else — not an image, corrupt, truncated, too large (a side over ``max_side``),
unreadable — raises :class:`~imgae_dx.inference.errors.ImageReadError` with a one-line reason.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

import numpy as np

from imgae_dx.data.decode import (
    DEFAULT_MAX_SIDE,
    DecodeError,
    Resize,
    decode_gray_any,
    resize_image,
    sniff_format,
    to_gray8,
)
from imgae_dx.data.decode import to_unit as to_unit  # the model input, re-exported for predict
from imgae_dx.inference.errors import ImageReadError

MAX_SIDE = DEFAULT_MAX_SIDE
#: Larger files are refused before they are read (a 1024² X-ray is ~0.5 MB; a DICOM rarely > 100 MB).
MAX_FILE_BYTES = 512 * 2**20
#: ``data.resize``'s default: the policy where no model says otherwise (arrays and files scored alone)
DEFAULT_RESIZE: Resize = "squash"
#: names read as DICOM even when the content does not say so (a data set starting past group 0008)
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")


@dataclass(frozen=True)
class DecodedImage:
    """A file's pixels, upright, at full resolution (uint8 H×W), and its scope warnings."""

    gray: np.ndarray
    warnings: tuple[str, ...] = ()


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device (such as /dev/zero)"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_bytes(path: str | os.PathLike[str], max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """A regular file's bytes (links resolved), at most ``max_bytes``; anything else refused.

    The file is opened non-blocking and checked again once open, so a FIFO cannot hang the
    reader and a device cannot feed it without end.
    """
    p = os.fspath(path)
    try:
        st = os.stat(p)
        if stat.S_ISDIR(st.st_mode):
            raise ImageReadError("is a folder, not an image file")
        if not stat.S_ISREG(st.st_mode):
            raise ImageReadError(f"{_kind(st.st_mode)}, not a regular file: only regular files are read")
        if st.st_size > max_bytes:
            raise ImageReadError(f"file of {st.st_size / 2**20:.0f} MB is larger than the "
                                 f"{max_bytes // 2**20} MB allowed for one image")
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # replaced between the two looks
                raise ImageReadError(f"{_kind(st.st_mode)}, not a regular file: only regular files are read")
            chunks, size = [], 0
            while size <= max_bytes:
                chunk = os.read(fd, min(1 << 22, max_bytes + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
        if size > max_bytes:
            raise ImageReadError(f"file grew past the {max_bytes // 2**20} MB allowed for one image "
                                 "while being read")
        return b"".join(chunks)
    except FileNotFoundError:
        raise ImageReadError("no such file (or a link to nothing)") from None
    except PermissionError:
        raise ImageReadError("permission denied (the file cannot be read)") from None
    except OSError as e:
        raise ImageReadError(f"cannot be read ({e.strerror or e})") from None


def decode_image(data: bytes, *, name: str = "", max_side: int = MAX_SIDE) -> DecodedImage:
    """An image file's bytes → :class:`DecodedImage` (upright, full resolution; module doc)."""
    try:
        try:
            kind = sniff_format(data)
        except DecodeError:
            if not (data and name.lower().endswith(DICOM_SUFFIXES)):
                raise
            kind = "dicom"
        if kind != "dicom":
            return DecodedImage(decode_gray_any(data, max_side=max_side))
        from imgae_dx.data.dicom import read_dicom

        dcm = read_dicom(data, max_side=max_side, force=data[128:132] != b"DICM")
        return DecodedImage(dcm.pixels, dcm.warnings)
    except ImageReadError:
        raise
    except DecodeError as e:  # the data layer's decode errors: this file's row
        raise ImageReadError(str(e)) from None


def to_model_size(gray: np.ndarray, image_size: int, resize: Resize = DEFAULT_RESIZE) -> np.ndarray:
    """uint8 H×W → uint8 ``image_size × image_size`` by the model's training resize policy."""
    return resize_image(gray, image_size, resize)


def decode_file_bytes(data: bytes, image_size: int, *, name: str = "", max_side: int = MAX_SIDE,
                      resize: Resize = DEFAULT_RESIZE) -> np.ndarray:
    """An image file's bytes → uint8 ``image_size × image_size`` (see the module doc)."""
    return to_model_size(decode_image(data, name=name, max_side=max_side).gray, image_size, resize)


def load_file(path: str | os.PathLike[str], image_size: int, *, max_side: int = MAX_SIDE,
              resize: Resize = DEFAULT_RESIZE) -> np.ndarray:
    """Read and preprocess one image file → uint8 ``image_size × image_size``.

    Raises:
        ImageReadError: unreadable path, not a regular file, not an image, corrupt, truncated or
            too large.
    """
    return decode_file_bytes(read_bytes(path), image_size, name=str(path), max_side=max_side,
                             resize=resize)


def prepare_array(arr: np.ndarray, image_size: int, *, max_side: int = MAX_SIDE,
                  resize: Resize = DEFAULT_RESIZE) -> np.ndarray:
    """An in-memory image → uint8 ``image_size × image_size`` (see the module doc)."""
    a = np.asarray(arr)
    if a.ndim not in (2, 3) or a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageReadError(f"an image array must be H×W or H×W×C, got shape {a.shape}")
    if max(a.shape[:2]) > max_side:
        raise ImageReadError(f"array of {a.shape[1]}×{a.shape[0]} pixels is larger than {max_side} per side")
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)) or a.min() < 0 or a.max() > 1:
            raise ImageReadError("a float image array must hold values in [0, 1]")
        a = np.rint(a * 255.0).astype(np.uint8)
    elif a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    try:
        gray = to_gray8(np.ascontiguousarray(a))
    except DecodeError as e:
        raise ImageReadError(f"{e} (use uint8, uint16 or float in [0, 1])") from None
    return to_model_size(gray, image_size, resize)
