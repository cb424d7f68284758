"""The pretrained files of LPIPS-SqueezeNet (:mod:`imgae_dx.models.perceptual`): where they are
cached, their official URLs and SHA-256, fetching and verifying them.

Two files, each checked against its published SHA-256 before it is loaded (a truncated or foreign
file is refused, never half-used):

============  =====================================================  ==============================
file          cache path (looked up in this order)                   official source
============  =====================================================  ==============================
backbone      ``$TORCH_HOME/hub/checkpoints/squeezenet1_1-b8a52dc0``  torchvision's ImageNet weights
              ``.pth`` (``torch.hub.get_dir()``; default
              ``~/.cache/torch/hub``)
heads         ``lpips/weights/v0.1/squeeze.pth`` of an installed     the ``lpips`` package (0.1.4),
              ``lpips`` package, else                                 Zhang et al.'s
              ``$XDG_CACHE_HOME/imgae_dx/lpips/squeeze.pth``          PerceptualSimilarity repository
              (default ``~/.cache/imgae_dx/lpips/``)
============  =====================================================  ==============================

``imgae-dx fetch-weights`` downloads both from their official URLs where the network allows, or
copies them from a folder (``--from DIR``: the two files, brought from a machine that has them) —
an offline machine then scores with the RA authors' saliency. A missing file that cannot be
fetched raises :class:`LPIPSWeightsError`, which names the files, this layout and the command.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from imgae_dx.errors import UserError
from imgae_dx.utils.hashing import file_sha256


class LPIPSWeightsError(UserError):
    """An LPIPS weight file is missing (and cannot be fetched here) or fails its SHA-256 check."""


@dataclass(frozen=True)
class WeightFile:
    """One pretrained file: its role, file name, official URL, SHA-256 and cache (``torch_hub``:
    torch.hub's checkpoints folder; ``imgae_dx``: the package's cache, after an installed lpips
    package's copy)."""

    role: str
    name: str
    url: str
    sha256: str
    cache: str


BACKBONE = WeightFile(
    "backbone (torchvision SqueezeNet 1.1, ImageNet)", "squeezenet1_1-b8a52dc0.pth",
    "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
    # torch.hub names its files after the first 8 hex digits of this digest (b8a52dc0)
    "b8a52dc049b60e4b6ab68ad0df457362afab8b6304b2febdc1650a5dab4d7e7b", "torch_hub")
HEADS = WeightFile(
    "linear heads (LPIPS v0.1, squeeze)", "squeeze.pth",
    "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/squeeze.pth",
    # the file of the lpips 0.1.4 wheel on PyPI
    "4a5350f23600cb79923ce65bb07cbf57dca461329894153e05a1346bd531cf76", "imgae_dx")


def cache_path(w: WeightFile) -> Path:
    """Where ``imgae-dx fetch-weights`` puts ``w`` (and where it is looked up)."""
    if w.cache == "torch_hub":
        import torch

        return Path(torch.hub.get_dir()) / "checkpoints" / w.name
    base = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(base) / "imgae_dx" / "lpips" / w.name


def _package_file(w: WeightFile) -> Path | None:
    """The heads file of an installed ``lpips`` package, if any."""
    if w.cache != "imgae_dx":
        return None
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.origin:
        return None
    p = Path(spec.origin).parent / "weights" / "v0.1" / w.name
    return p if p.is_file() else None


def find(w: WeightFile) -> Path | None:
    """The existing file of ``w``: an installed ``lpips`` package's heads, else the cache path."""
    p = _package_file(w)
    if p is not None:
        return p
    p = cache_path(w)
    return p if p.is_file() else None


def verify(w: WeightFile, path: Path) -> Path:
    """``path`` if its SHA-256 is ``w``'s; else :class:`LPIPSWeightsError` naming both digests."""
    got = file_sha256(path)
    if got != w.sha256:
        raise LPIPSWeightsError(
            f"{path} is not the official {w.role} file (sha256 {got[:16]}…, expected "
            f"{w.sha256[:16]}…): delete it and run `imgae-dx fetch-weights` (or copy the right "
            f"file from {w.url})")
    return path


def layout() -> str:
    """The cache layout in one line (for error messages and ``fetch-weights``)."""
    return "; ".join(f"{w.name} → {cache_path(w)} (from {w.url})" for w in (BACKBONE, HEADS))


def missing_error(w: WeightFile, why: str) -> LPIPSWeightsError:
    return LPIPSWeightsError(
        f"anomaly.saliency: lpips needs the {w.role} file {w.name}, which is not at {cache_path(w)} "
        f"and could not be downloaded ({why}). Run `imgae-dx fetch-weights` where the network "
        f"allows, or `imgae-dx fetch-weights --from DIR` with the two files copied into DIR "
        f"(layout: {layout()}); or score without it (saliency: none or encoder)")


def _download(url: str, dst: Path, timeout_s: float) -> None:
    """Stream ``url`` into ``dst`` (the caller's temporary path)."""
    import requests

    with requests.get(url, stream=True, timeout=timeout_s) as r:
        r.raise_for_status()
        with dst.open("wb") as f:
            shutil.copyfileobj(r.raw, f)


def fetch(w: WeightFile, *, source_dir: Path | None = None, timeout_s: float = 30.0) -> Path:
    """Put a verified copy of ``w`` at :func:`cache_path` (from ``source_dir/NAME`` when given,
    else downloaded from its URL); nothing is left behind when the copy fails its check."""
    dst = cache_path(w)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.partial")
    try:
        if source_dir is not None:
            src = Path(source_dir) / w.name
            if not src.is_file():
                raise LPIPSWeightsError(f"--from {source_dir}: no {w.name} there (the {w.role} file, "
                                        f"from {w.url})")
            shutil.copyfile(src, tmp)
        else:
            try:
                _download(w.url, tmp, timeout_s)
            except Exception as e:  # offline, DNS, HTTP error
                raise missing_error(w, f"{type(e).__name__}: {str(e)[:120]}") from None
        verify(w, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def ensure(w: WeightFile, *, download: bool = True) -> Path:
    """The verified file of ``w``: found in the cache, else fetched (``download``), else
    :class:`LPIPSWeightsError` (what is missing, where it belongs, how to provide it)."""
    p = find(w)
    if p is not None:
        return verify(w, p)
    if not download:
        raise missing_error(w, "downloads disabled")
    return fetch(w)


def fetch_all(source_dir: Path | None = None, *, force: bool = False,
              notify: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Every file verified in its cache path (``force``: fetched again even when present)."""
    out: dict[str, Path] = {}
    for w in (BACKBONE, HEADS):
        p = None if force else find(w)
        if p is not None:
            verify(w, p)
            state = "present"
        else:
            p = fetch(w, source_dir=source_dir)
            state = "copied" if source_dir is not None else "downloaded"
        out[w.name] = p
        if notify:
            notify(f"{w.name}: {state}, sha256 verified → {p}")
    return out
