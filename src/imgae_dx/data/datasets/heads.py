"""The first bytes of many archive members at once: content sniffing, DICOM headers.

A dataset told by content (``folder``: PNG / JPEG / DICOM by their first bytes, a DICOM's
PatientID, read by :func:`imgae_dx.data.dicom.header_fields`) needs the head of every candidate
file before it knows its images. :func:`read_heads`
fetches them with few range requests: heads in offset order are grouped into requests of at most
``max_request_bytes``, reading through gaps up to ``gap_bridge_bytes`` (small files: one request
holds many). A local source (zip or folder) answers these reads from disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from imgae_dx.data.decode import DecodeError, sniff_format

#: Bytes that tell PNG / JPEG / DICOM apart (a DICOM's ``DICM`` ends at byte 132).
SNIFF_BYTES = 132


def sniff(head: bytes) -> str | None:
    """``png`` | ``jpeg`` | ``dicom`` from a file's first :data:`SNIFF_BYTES` bytes (the decoder's
    own rule, :func:`~imgae_dx.data.decode.sniff_format`), else None."""
    try:
        return sniff_format(head)
    except DecodeError:
        return None


def read_heads(archive: Any, member_ids: Sequence[int] | np.ndarray, nbytes: int, *,
               max_request_bytes: int = 16 << 20, gap_bridge_bytes: int = 64 << 10) -> list[bytes]:
    """The first ``nbytes`` uncompressed bytes of each member (fewer for shorter members), in the
    order of ``member_ids``. A member whose head cannot be read (corrupt local header, unsupported
    method) gives ``b""``.

    Args:
        archive: an opened :class:`~imgae_dx.streaming.sources.Archive`.
        member_ids: the members.
        nbytes: head length.
        max_request_bytes: largest range request.
        gap_bridge_bytes: bytes between two heads read through instead of starting a new request.
    """
    from imgae_dx.errors import ArchiveError

    ids = np.asarray(member_ids, dtype=np.int64)
    out: list[bytes] = [b""] * len(ids)
    if not len(ids):
        return out
    index, reader = archive.index, archive.reader
    starts, ends = index.head_spans(ids, nbytes)
    order = np.argsort(starts, kind="stable")
    k = 0
    while k < len(order):
        first = k
        lo, hi = int(starts[order[k]]), int(ends[order[k]])
        k += 1
        while k < len(order):
            s, e = int(starts[order[k]]), int(ends[order[k]])
            if s - hi > gap_bridge_bytes or max(hi, e) - lo > max_request_bytes:
                break
            hi = max(hi, e)
            k += 1
        buf = reader.read(lo, hi - lo)
        for j in order[first:k].tolist():
            try:
                out[j] = index.extract_head(int(ids[j]), buf, lo, nbytes)
            except ArchiveError:
                out[j] = b""
    return out
