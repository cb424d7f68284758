"""The first bytes of many archive members at once: content sniffing, DICOM headers.

A dataset told by content (``folder``: PNG / JPEG / DICOM by their first bytes, a DICOM's
PatientID, read by :func:`imgae_dx.data.dicom.header_fields`) or by its members' headers
(``rsna``: each DICOM's ViewPosition) needs the head of every candidate file before it knows its
images. :func:`read_heads` fetches them with few range requests: heads in offset order are grouped
into requests of at most ``max_request_bytes``, reading through gaps up to ``gap_bridge_bytes``
(small files: one request holds many), a few requests in flight. A local source (zip or folder)
answers these reads from disk. :func:`dicom_fields` adds the header parse, a progress bar, and a
cache on disk keyed by the archive's identity and version, so a large remote archive pays the scan
once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imgae_dx.data.datasets.base import HeadReads
from imgae_dx.data.decode import DecodeError, sniff_format
from imgae_dx.utils.atomic import atomic_write_text

log = logging.getLogger(__name__)

#: Bytes that tell PNG / JPEG / DICOM apart (a DICOM's ``DICM`` ends at byte 132).
SNIFF_BYTES = 132


def sniff(head: bytes) -> str | None:
    """``png`` | ``jpeg`` | ``dicom`` from a file's first :data:`SNIFF_BYTES` bytes (the decoder's
    own rule, :func:`~imgae_dx.data.decode.sniff_format`), else None."""
    try:
        return sniff_format(head)
    except DecodeError:
        return None


def iter_heads(archive: Any, member_ids: Sequence[int] | np.ndarray, nbytes: int, *,
               reads: HeadReads | None = None) -> Iterator[tuple[int, bytes]]:
    """``(position in member_ids, head)`` for every member, in archive order as the requests
    arrive: the first ``nbytes`` uncompressed bytes of the member (fewer for a shorter one;
    ``b""`` when its head cannot be read — corrupt local header, unsupported method). Only the
    requests in flight are held in memory.

    Args:
        archive: an opened :class:`~imgae_dx.streaming.sources.Archive`.
        member_ids: the members.
        nbytes: head length.
        reads: request settings (default :class:`HeadReads`): heads in offset order are grouped
            into requests of at most ``max_request_bytes``, reading through gaps of up to
            ``gap_bridge_bytes`` (the data path's cost model: a gap that small costs less than a
            new request); ``in_flight`` requests are fetched ahead by background threads.

    Raises:
        SourceError: a range read fails after the reader's retries.
    """
    from imgae_dx.errors import ArchiveError
    from imgae_dx.streaming.fetcher import Prefetcher, RangeRequest

    reads = reads or HeadReads()
    ids = np.asarray(member_ids, dtype=np.int64)
    if not len(ids):
        return
    index = archive.index
    starts, ends = index.head_spans(ids, nbytes)
    order = np.argsort(starts, kind="stable")
    requests: list[RangeRequest] = []
    positions: list[np.ndarray] = []  # per request: positions in ``ids``
    k = 0
    while k < len(order):
        first = k
        lo, hi = int(starts[order[k]]), int(ends[order[k]])
        k += 1
        while k < len(order):
            s, e = int(starts[order[k]]), int(ends[order[k]])
            if s - hi > reads.gap_bridge_bytes or max(hi, e) - lo > reads.max_request_bytes:
                break
            hi = max(hi, e)
            k += 1
        positions.append(order[first:k])
        requests.append(RangeRequest(lo, hi, ids[order[first:k]]))
    with Prefetcher(archive.reader, requests, in_flight=max(1, reads.in_flight)) as fetched:
        for (req, buf), pos in zip(fetched, positions, strict=True):
            for j in pos.tolist():
                try:
                    head = index.extract_head(int(ids[j]), buf, req.start, nbytes)
                except ArchiveError:
                    head = b""
                yield j, head


def read_heads(archive: Any, member_ids: Sequence[int] | np.ndarray, nbytes: int, *,
               reads: HeadReads | None = None) -> list[bytes]:
    """The heads of :func:`iter_heads`, in the order of ``member_ids``."""
    out: list[bytes] = [b""] * len(member_ids)
    for j, head in iter_heads(archive, member_ids, nbytes, reads=reads):
        out[j] = head
    return out


#: Format of the header cache files (:func:`dicom_fields`); another value is ignored and rebuilt.
FIELDS_CACHE_FORMAT = 1
#: Heads to read before a progress bar is drawn.
BAR_MIN_HEADS = 500


def _fields_cache_path(archive: Any, keywords: Sequence[str], nbytes: int, cache_dir: str) -> Path | None:
    reader = archive.reader
    if reader.version is None:
        return None  # no version to key by: a changed archive would be read from a stale cache
    key = hashlib.sha256("\n".join(
        [reader.identity, str(reader.version), str(reader.size), ",".join(keywords), str(nbytes),
         str(FIELDS_CACHE_FORMAT)]).encode()).hexdigest()[:32]
    return Path(cache_dir).expanduser() / f"dicom-fields-{key}.json"


def _load_fields_cache(path: Path, archive: Any) -> dict[str, dict[str, str] | None]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if (doc.get("format") != FIELDS_CACHE_FORMAT or doc.get("identity") != archive.reader.identity
                or doc.get("version") != str(archive.reader.version) or doc.get("size") != archive.reader.size):
            return {}
        members = doc["members"]
        return members if isinstance(members, dict) else {}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, AttributeError) as e:
        log.warning("ignoring unreadable header cache %s (%s); reading the headers again", path, e)
        return {}


def dicom_fields(archive: Any, member_ids: Sequence[int] | np.ndarray, keywords: Sequence[str],
                 reads: HeadReads, *, nbytes: int = 4096, what: str = "DICOM headers") -> list[dict[str, str] | None]:
    """Per member the DICOM header fields ``keywords`` (:func:`imgae_dx.data.dicom.read_header`:
    None for a member whose header cannot be read), in the order of ``member_ids``.

    The heads come from :func:`iter_heads` (few requests, ``reads.in_flight`` ahead; a tqdm bar
    when ``reads.progress`` and there are at least :data:`BAR_MIN_HEADS`), and what they gave is
    kept in ``reads.cache_dir`` in a JSON file keyed by the archive's identity, version and size
    (and the keywords and head length), by member name: opening the same archive again reads
    only members it has not seen. Nothing is cached for a reader without a version.
    """
    from imgae_dx.data.dicom import read_header

    ids = np.asarray(member_ids, dtype=np.int64)
    names = [archive.index.name(int(i)) for i in ids]
    path = (_fields_cache_path(archive, keywords, nbytes, reads.cache_dir)
            if reads.cache_dir is not None else None)
    known = _load_fields_cache(path, archive) if path is not None else {}
    todo = [k for k, n in enumerate(names) if n not in known]
    if todo:
        from tqdm.auto import tqdm

        t0, before = time.perf_counter(), archive.reader.stats.snapshot()
        with tqdm(total=len(todo), desc=what, unit="hdr",
                  disable=not reads.progress or len(todo) < BAR_MIN_HEADS) as bar:
            for j, head in iter_heads(archive, ids[todo], nbytes, reads=reads):  # parsed as they come
                known[names[todo[j]]] = read_header(head, list(keywords))
                bar.update(1)
        after = archive.reader.stats.snapshot()
        if reads.progress:
            log.info("read %d %s in %d requests (%.1f MB) in %.1f s%s", len(todo), what,
                     after["requests"] - before["requests"],
                     (after["bytes_fetched"] - before["bytes_fetched"]) / 1e6, time.perf_counter() - t0,
                     f"; kept in {path}" if path is not None else "")
        if path is not None:
            _save_fields_cache(path, archive, known)
    return [known[n] for n in names]


def _save_fields_cache(path: Path, archive: Any, members: dict[str, dict[str, str] | None]) -> None:
    doc = {"format": FIELDS_CACHE_FORMAT, "identity": archive.reader.identity,
           "version": str(archive.reader.version), "size": archive.reader.size, "members": members}
    try:
        atomic_write_text(path, json.dumps(doc, separators=(",", ":"), sort_keys=True))
    except OSError as e:
        log.warning("could not write the header cache %s: %s (continuing without it)", path, e)
