"""``predict``'s INPUT arguments → the ordered list of files to score.

* an existing **file** is taken as given (whatever its name; its content decides the format);
* a **folder** is searched recursively for image files: names ending in ``.png``, ``.jpg``,
  ``.jpeg``, ``.dcm``, ``.dicom``, ``.dic`` (any case), and files without an extension that hold
  ``DICM`` at byte 128 (scanners often write bare names); hidden files and folders are skipped;
  files are sorted by path;
* a **glob** (``*``, ``?``, ``[``; ``**`` recursive) expands to its matches, sorted; a matched
  folder is searched as above;
* anything else (a missing path, a glob matching nothing) stays in the list with its error, so
  the user sees it on its row.

Duplicates (the same resolved file reached twice) are scored once, at their first position. The
``exclude`` folder (``predict``'s ``OUT/overlays``) is never searched: a second ``predict`` must
not score the first one's overlays. Listing opens no file but regular ones; a FIFO, device or
socket with an image name is listed and refused when read (its row says why).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".dic")


@dataclass(frozen=True)
class InputFile:
    """One entry of the work list: a path, or a path that could not be used and why."""

    path: str
    error: str | None = None


def _is_bare_dicom(p: Path) -> bool:
    """A regular file (links resolved) holding ``DICM`` at byte 128; a FIFO or a device is never
    opened here (opening a FIFO blocks until someone writes to it)."""
    try:
        if not p.is_file():
            return False
        with p.open("rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def _walk(folder: Path, exclude: str | None) -> list[str]:
    out: list[str] = []
    if exclude is not None and os.path.realpath(folder) == exclude:
        return out
    for root, dirs, files in os.walk(folder, onerror=None):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and (exclude is None or os.path.realpath(os.path.join(root, d)) != exclude))
        for name in sorted(files):
            if name.startswith("."):
                continue
            p = Path(root) / name
            suffix = p.suffix.lower()
            if suffix in IMAGE_SUFFIXES or (suffix == "" and _is_bare_dicom(p)):
                out.append(str(p))
    return out


def expand_inputs(args: list[str] | tuple[str, ...],
                  exclude: str | os.PathLike[str] | None = None) -> list[InputFile]:
    """Expand files, folders and globs (see the module doc), in argument order.

    Args:
        exclude: a folder never searched (``predict``'s ``--out``).
    """
    skip = os.path.realpath(exclude) if exclude is not None else None
    out: list[InputFile] = []
    seen: set[str] = set()

    def add(path: str, error: str | None = None) -> None:
        key = os.path.realpath(path) if error is None else f"\0{path}"
        if key in seen:
            return
        seen.add(key)
        out.append(InputFile(path, error))

    for arg in args:
        p = Path(arg).expanduser()
        if p.is_dir():
            found = _walk(p, skip)
            if not found:
                add(str(p), "folder holds no PNG, JPEG or DICOM file")
            for f in found:
                add(f)
        elif p.exists() or p.is_symlink():
            add(str(p))
        elif glob.has_magic(arg):
            matches = sorted(glob.glob(os.path.expanduser(arg), recursive=True))
            if not matches:
                add(arg, "no file matches this pattern")
            for m in matches:
                if Path(m).is_dir():
                    for f in _walk(Path(m), skip):
                        add(f)
                else:
                    add(m)
        else:
            add(str(p), "no such file or folder")
    return out
