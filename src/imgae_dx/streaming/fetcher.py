"""Coalesced range requests and a bounded background prefetcher.

:func:`coalesce` turns wanted members into few large requests: members sorted by offset, merged
while the request stays within ``max_request_bytes`` and the unwanted gap between neighbours is at
most ``gap_bridge_bytes`` (a single member larger than the maximum gets a request of its own).

:class:`Prefetcher` fetches requests in background daemon threads, at most ``in_flight`` ahead of
the consumer, and yields ``(request, bytes)`` strictly in the given order. A failed fetch is
re-raised in the consumer at that request's position. ``close()`` returns promptly even while
threads are still blocked on the network (they are daemons and stop after their current read).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from imgae_dx.streaming.archive_index import ArchiveIndex
    from imgae_dx.streaming.range_reader import RangeReader


@dataclass(frozen=True)
class RangeRequest:
    """Archive bytes ``[start, end)`` covering the members ``members`` (int64 ids, offset order)."""

    start: int
    end: int
    members: np.ndarray = field(repr=False)

    @property
    def length(self) -> int:
        """Bytes this request fetches."""
        return self.end - self.start

    def __repr__(self) -> str:
        return f"RangeRequest({self.start}-{self.end}, {len(self.members)} members)"


def coalesce(
    index: ArchiveIndex,
    member_ids: Sequence[int] | np.ndarray,
    max_request_bytes: int,
    gap_bridge_bytes: int,
) -> list[RangeRequest]:
    """Group members into range requests, sorted by offset.

    Args:
        index: the archive index (spans come from :meth:`ArchiveIndex.spans`).
        member_ids: wanted member ids (any order; duplicates dropped).
        max_request_bytes: a request never exceeds this unless one member alone does.
        gap_bridge_bytes: read through gaps up to this many bytes instead of starting a new request.

    Returns:
        Requests in ascending offset order; every wanted member is in exactly one request.
    """
    ids = np.unique(np.asarray(member_ids, dtype=np.int64))
    if len(ids) == 0:
        return []
    if ids[0] < 0 or ids[-1] >= len(index):
        raise IndexError(f"member ids must be in 0..{len(index) - 1}")
    starts, ends = index.spans(ids)
    order = np.lexsort((ids, starts))
    ids, starts, ends = ids[order], starts[order], ends[order]
    max_b = int(max_request_bytes)
    gap_b = int(gap_bridge_bytes)
    out: list[RangeRequest] = []
    s_l, e_l = starts.tolist(), ends.tolist()
    first = 0
    cur_s, cur_e = s_l[0], e_l[0]
    for k in range(1, len(s_l)):
        s, e = s_l[k], e_l[k]
        new_e = max(cur_e, e)
        if s - cur_e <= gap_b and new_e - cur_s <= max_b:
            cur_e = new_e
            continue
        out.append(RangeRequest(int(cur_s), int(cur_e), ids[first:k].copy()))
        first, cur_s, cur_e = k, s, e
    out.append(RangeRequest(int(cur_s), int(cur_e), ids[first:].copy()))
    return out


class PrefetchClosed(RuntimeError):
    """Iterating a prefetcher after ``close()``."""


class Prefetcher:
    """Fetch ``requests`` ahead in background threads; iterate ``(request, data)`` in order.

    Args:
        reader: the archive's reader (thread-safe).
        requests: requests in the order they must be yielded.
        in_flight: at most this many requests fetched and not yet consumed (also the thread count).

    ``buffered_bytes()`` reports the bytes reserved by fetched-or-fetching, not-yet-yielded
    requests (for the memory manager). Use as a context manager or call ``close()``.
    """

    def __init__(self, reader: RangeReader, requests: Sequence[RangeRequest], in_flight: int = 4) -> None:
        if in_flight < 1:
            raise ValueError("in_flight must be >= 1")
        self._reader = reader
        self._requests = list(requests)
        self._in_flight = int(in_flight)
        self._cond = threading.Condition()
        self._results: dict[int, tuple[bytes | None, BaseException | None]] = {}
        self._next_dispatch = 0  # next request index to hand to a worker
        self._next_yield = 0  # next request index the consumer wants
        self._buffered = 0
        self._closed = False
        self._started = False
        self._threads: list[threading.Thread] = []

    # ----------------------------------------------------------------- workers
    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        n = min(self._in_flight, max(len(self._requests), 1))
        for t in range(n):
            th = threading.Thread(target=self._work, name=f"imgae-prefetch-{t}", daemon=True)
            th.start()
            self._threads.append(th)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (
                    self._next_dispatch >= len(self._requests)
                    or self._next_dispatch >= self._next_yield + self._in_flight
                ):
                    if self._next_dispatch >= len(self._requests):
                        return
                    self._cond.wait()
                if self._closed:
                    return
                k = self._next_dispatch
                self._next_dispatch += 1
                req = self._requests[k]
                self._buffered += req.length
            try:
                data: bytes | None = self._reader.read(req.start, req.length)
                err: BaseException | None = None
            except BaseException as e:  # propagated to the consumer in order
                data, err = None, e
            with self._cond:
                if self._closed:
                    return
                self._results[k] = (data, err)
                self._cond.notify_all()

    # ---------------------------------------------------------------- consumer
    def __iter__(self) -> Iterator[tuple[RangeRequest, bytes]]:
        self._start()
        try:
            while True:
                with self._cond:
                    if self._closed:
                        raise PrefetchClosed("prefetcher was closed")
                    k = self._next_yield
                    if k >= len(self._requests):
                        return
                    while k not in self._results and not self._closed:
                        self._cond.wait(timeout=1.0)
                    if self._closed:
                        raise PrefetchClosed("prefetcher was closed")
                    data, err = self._results.pop(k)
                    req = self._requests[k]
                    self._next_yield += 1
                    self._buffered -= req.length
                    self._cond.notify_all()
                if err is not None:
                    raise err
                assert data is not None
                yield req, data
        finally:
            self.close()

    def buffered_bytes(self) -> int:
        """Bytes of requests being fetched or fetched and waiting to be consumed."""
        with self._cond:
            return self._buffered

    def close(self, timeout: float = 0.2) -> None:
        """Stop fetching and drop buffered data. Never blocks longer than about ``timeout``."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._results.clear()
            self._buffered = 0
            self._cond.notify_all()
        for th in self._threads:
            th.join(timeout=timeout / max(len(self._threads), 1))

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # best effort: let worker threads exit
        try:
            self.close(timeout=0)
        except Exception:
            pass
