"""Atomic file writes: a temp file in the destination folder, fsync, then ``os.replace``.

A crash (or SIGKILL, or a full disk) at any moment leaves either the previous file or the new
one, never a half-written file. Every writer of state in ImgAE-Dx goes through here.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str],
    mode: str = "wb",
    *,
    encoding: str | None = None,
    file_mode: int = 0o644,
    fsync: bool = True,
) -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on a clean exit it replaces ``path``.

    Args:
        path: destination; its folder is created if needed.
        mode: ``"wb"`` or ``"w"`` (text, with ``encoding``; UTF-8 by default).
        file_mode: permission bits of the result (``0o600`` for private files).
        fsync: flush to disk before the rename (and the folder after it).

    On any exception the temp file is removed and the destination is untouched.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open supports modes 'wb' and 'w', not {mode!r}")
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=TMP_SUFFIX, dir=dest.parent)
    try:
        os.fchmod(fd, file_mode)
        kwargs = {"encoding": encoding or "utf-8"} if mode == "w" else {}
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_dir(dest.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, file_mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_open(path, "wb", file_mode=file_mode) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, file_mode: int = 0o644) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    with atomic_open(path, "w", file_mode=file_mode) as f:
        f.write(text)
    return Path(path)


def remove_stale_temps(folder: str | os.PathLike[str], name: str | None = None) -> int:
    """Delete temp files a killed writer left in ``folder`` (only ``name``'s if given).

    Returns how many were removed. Call it only where no other process is writing.
    """
    pattern = f".{name}.*{TMP_SUFFIX}" if name else f".*{TMP_SUFFIX}"
    removed = 0
    for p in Path(folder).glob(pattern):
        with contextlib.suppress(OSError):
            p.unlink()
            removed += 1
    return removed


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
