"""``open_archive(spec, cfg)``: every data source as one :class:`Archive` (reader + index).

Accepted ``spec`` forms:

* ``kaggle:OWNER/SLUG`` — the Kaggle dataset archive, via
  :class:`imgae_dx.streaming.kaggle_client.KaggleStreamClient` (imported lazily);
* ``kaggle-competition:SLUG`` — a Kaggle competition's whole-data archive, the same way (the user
  must have accepted the competition's rules on kaggle.com);
* ``http://…`` / ``https://…`` — an archive URL that honours ``Range`` requests;
* a path to a local zip file (``~`` expanded);
* a path to an extracted folder (``images_NNN/images/*.png`` + metadata files).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from imgae_dx.errors import ArchiveError, SourceError
from imgae_dx.streaming.archive_index import ArchiveIndex
from imgae_dx.streaming.range_reader import (
    HttpRangeReader,
    LocalFileReader,
    RangeReader,
    redact_url,
)

log = logging.getLogger(__name__)

ALLOWED_FORMS = (
    "kaggle:OWNER/SLUG (e.g. kaggle:nih-chest-xrays/data), "
    "kaggle-competition:SLUG (e.g. kaggle-competition:rsna-pneumonia-detection-challenge), "
    "an http(s):// URL of a zip archive, a local .zip file, or an extracted dataset folder"
)
_NAME = r"([A-Za-z0-9][A-Za-z0-9_.-]*)"
_KAGGLE_RE = re.compile(rf"^kaggle:{_NAME}/{_NAME}$")
_COMPETITION_RE = re.compile(rf"^kaggle-competition:{_NAME}$")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


class Archive:
    """An opened source: ``reader`` (:class:`RangeReader`), ``index`` (:class:`ArchiveIndex`),
    ``identity`` (secret-free string). Close it (or use ``with``) to release connections."""

    #: times a member failing its CRC/size check is re-fetched by :meth:`read_member_id`
    REFETCHES = 2

    def __init__(self, reader: RangeReader, index: ArchiveIndex, identity: str | None = None) -> None:
        self.reader = reader
        self.index = index
        self.identity = identity or reader.identity

    def has(self, name: str) -> bool:
        """True if ``name`` is a member."""
        return self.index.find(name) >= 0

    def read_member(self, name: str) -> bytes:
        """Uncompressed bytes of member ``name`` (one range read; for small files like metadata).

        Raises:
            ArchiveError: no such member, or it fails its checks after re-fetching.
        """
        i = self.index.find(name)
        if i < 0:
            raise ArchiveError(f"{self.identity} has no member {name!r}")
        return self.read_member_id(i)

    def read_member_id(self, i: int) -> bytes:
        """Uncompressed bytes of member id ``i``, re-fetched up to ``REFETCHES`` times when the
        CRC or size check fails (bytes corrupted in transit); use it to recover a member whose
        bytes from a coalesced request failed :meth:`ArchiveIndex.extract`."""
        start, end = self.index.span(i)
        last: ArchiveError | None = None
        for _ in range(self.REFETCHES + 1):
            buf = self.reader.read(start, end - start)
            try:
                return self.index.extract(i, buf, start, reader=self.reader)
            except ArchiveError as e:
                last = e
                log.warning("re-fetching %s: %s", self.index.name(i), e)
        assert last is not None
        raise last

    def stats(self) -> dict[str, int]:
        """The reader's counters (``bytes_fetched``, ``requests``, ``retries``)."""
        return self.reader.stats.snapshot()

    def close(self) -> None:
        """Release the reader."""
        self.reader.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Archive({self.identity!r}, members={len(self.index)})"


def _bad_spec(spec: str, why: str) -> SourceError:
    return SourceError(f"source {spec!r}: {why}. Allowed: {ALLOWED_FORMS}.")


def open_archive(spec: str, cfg: Any = None) -> Archive:
    """Open the source ``spec`` (see the module docstring) as an :class:`Archive`.

    Args:
        spec: the source string.
        cfg: :class:`imgae_dx.config.DataConfig` (``http`` settings, ``index_cache_dir``);
            default: ``DataConfig()``.

    Raises:
        SourceError: bad spec, missing path, not a zip archive, unreachable URL; (kaggle)
            unknown dataset or competition, competition rules not accepted.
        CredentialsError: (kaggle) no credentials found, or rejected.
    """
    if cfg is None:
        from imgae_dx.config import DataConfig

        cfg = DataConfig()
    if not isinstance(spec, str) or not spec.strip():
        raise _bad_spec(str(spec), "empty source")
    spec = spec.strip()
    cache_dir = cfg.index_cache_dir
    reader: RangeReader
    kaggle = _kaggle_client(spec)
    if kaggle is not None:
        reader = kaggle.open_reader(cfg.http)
        return _with_index(reader, cache_dir, spec)
    low = spec.lower()
    if low.startswith(("http://", "https://")):
        reader = HttpRangeReader(spec, http_cfg=cfg.http)
        return _with_index(reader, cache_dir, redact_url(spec))
    sm = _SCHEME_RE.match(spec)
    if sm and len(sm.group(1)) > 1:  # 'C:' drive letters are paths
        raise _bad_spec(redact_url(spec), f"unsupported scheme {sm.group(1)!r}")
    path = Path(os.path.expanduser(spec)).absolute()
    if not path.exists():
        raise _bad_spec(str(path), "no such file or folder")
    if path.is_dir():
        from imgae_dx.streaming.folder_source import open_folder

        freader, findex = open_folder(path)
        return Archive(freader, findex)
    reader = LocalFileReader(path)
    return _with_index(reader, cache_dir, str(path))


def _kaggle_client(spec: str) -> Any:
    """The ``KaggleStreamClient`` of a ``kaggle:`` / ``kaggle-competition:`` spec, else ``None``."""
    if spec.startswith("kaggle:"):
        m = _KAGGLE_RE.match(spec)
        if not m:
            raise _bad_spec(spec, "a Kaggle dataset source must look like kaggle:OWNER/SLUG")
        from imgae_dx.streaming.kaggle_client import KaggleStreamClient

        return KaggleStreamClient(dataset=f"{m.group(1)}/{m.group(2)}")
    if spec.startswith("kaggle-competition:"):
        m = _COMPETITION_RE.match(spec)
        if not m:
            raise _bad_spec(spec, "a Kaggle competition source must look like kaggle-competition:SLUG "
                                  "(SLUG as in https://www.kaggle.com/competitions/SLUG)")
        from imgae_dx.streaming.kaggle_client import KaggleStreamClient

        return KaggleStreamClient(competition=m.group(1))
    return None


def _with_index(reader: RangeReader, cache_dir: str | None, shown: str) -> Archive:
    try:
        index = ArchiveIndex.load(reader, cache_dir)
    except ArchiveError as e:
        reader.close()
        raise SourceError(f"source {shown}: {e}") from None
    except BaseException:
        reader.close()
        raise
    return Archive(reader, index)
