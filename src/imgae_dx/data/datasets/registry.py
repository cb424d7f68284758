"""Dataset name → :class:`~imgae_dx.data.datasets.base.DatasetSpec`, layout detection, opening.

:func:`open_dataset` is how every command gets an archive's index: ``data.dataset`` names the
dataset; when it is omitted, an archive holding NIH's metadata is NIH, and any other is detected
from its member names (one log line says which; two matching layouts are refused with both named).
The index is bound to the run's :class:`~imgae_dx.data.datasets.base.Protocol`.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from imgae_dx.data.datasets import DATASET_NAMES
from imgae_dx.data.datasets.base import (
    SYNTHETIC_MARKER,
    DatasetIndex,
    DatasetSpec,
    HeadReads,
    Protocol,
    member_names,
)
from imgae_dx.errors import UserError

log = logging.getLogger(__name__)

#: name → module holding its ``SPEC`` (imported on first use).
_MODULES = {name: f"imgae_dx.data.datasets.{name}" for name in DATASET_NAMES}


def spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of a dataset name (UserError for an unknown one)."""
    if name not in _MODULES:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    return importlib.import_module(_MODULES[name]).SPEC


def detect(names: list[str]) -> list[str]:
    """The datasets whose layout the member names match, in :data:`DATASET_NAMES` order."""
    return [n for n in DATASET_NAMES if spec(n).looks_like(names)]


def resolve_dataset(archive: Any, requested: str | None) -> str:
    """``requested``, else NIH when the archive holds its metadata, else the one detected layout.

    Raises:
        UserError: no layout matches (each expected layout named), or several do (the
            candidates named, with the flag that chooses).
    """
    names = member_names(archive.index)
    ident = getattr(archive, "identity", "the archive")
    if requested:
        if not spec(requested).looks_like(names):
            other = detect(names)
            hint = f"; it looks like {' or '.join(other)} (--dataset {other[0]})" if other else ""
            raise UserError(f"{ident} is not laid out as {requested} ({spec(requested).layout}){hint}")
        return requested
    if spec("nih").looks_like(names):
        return "nih"
    found = detect(names)
    if len(found) == 1:
        log.info("dataset: %s (detected from the layout %s of %s; --dataset / data.dataset chooses)",
                 found[0], spec(found[0]).layout, ident)
        return found[0]
    if not found:
        expected = "; ".join(f"{n}: {spec(n).layout}" for n in DATASET_NAMES)
        raise UserError(f"{ident} matches no dataset layout ({len(names)} members); expected one of "
                        f"{expected}")
    raise UserError(f"{ident} matches several dataset layouts ({', '.join(found)}); choose one with "
                    f"--dataset {'|'.join(found)} (data.dataset)")


def has_synthetic_marker(names: list[str]) -> bool:
    """True when the archive carries :data:`SYNTHETIC_MARKER` at its root or one folder deep."""
    return any(n.rsplit("/", 1)[-1] == SYNTHETIC_MARKER and n.count("/") <= 1 for n in names)


def open_dataset(archive: Any, data_cfg: Any, seed: int, *, quiet: bool = False) -> DatasetIndex:
    """The index of ``archive`` for ``data_cfg.dataset`` (resolved as :func:`resolve_dataset`),
    bound to the protocol of ``data_cfg`` and ``seed``, members' heads read with its request
    settings and cache folder (:class:`HeadReads`). Logs (unless ``quiet``) what the build
    skipped and decided, and that ``data.view`` is ignored by a dataset without views; ``quiet``
    also hides progress bars (other ranks than 0)."""
    name = resolve_dataset(archive, getattr(data_cfg, "dataset", None))
    protocol = Protocol.from_config(data_cfg, seed)
    index = spec(name).build(archive, protocol, HeadReads.from_config(data_cfg, progress=not quiet))
    index.synthetic = has_synthetic_marker(member_names(archive.index))
    if not quiet:
        for why, n in index.facts.skipped.items():
            log.info("%s: skipped %d %s", name, n, why)
        for note in index.facts.notes:
            log.info("%s: %s", name, note)
        if not index.has_views and str(protocol.view).upper() != "ALL":
            log.info("%s has no view positions: data.view %s is ignored (every image is used)",
                     name, protocol.view)
    return index
