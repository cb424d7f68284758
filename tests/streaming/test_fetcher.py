"""coalesce() and Prefetcher: grouping, ordering, bounds, errors, prompt close."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from imgae_dx.errors import SourceError
from imgae_dx.streaming.archive_index import ArchiveIndex
from imgae_dx.streaming.fetcher import PrefetchClosed, Prefetcher, RangeRequest, coalesce
from imgae_dx.streaming.range_reader import LocalFileReader, RangeReader, ReaderStats


@pytest.fixture
def indexed(big_zip) -> tuple[ArchiveIndex, LocalFileReader, dict[str, bytes]]:
    path, members = big_zip
    r = LocalFileReader(path)
    return ArchiveIndex.load(r), r, members


def test_coalesce_covers_each_member_once_sorted(indexed) -> None:
    idx, r, _ = indexed
    rng = np.random.default_rng(0)
    ids = rng.permutation(len(idx))[:80]
    reqs = coalesce(idx, np.concatenate([ids, ids[:5]]), 60_000, 1024)
    got = np.concatenate([q.members for q in reqs])
    assert sorted(got.tolist()) == sorted(set(ids.tolist()))
    starts = [q.start for q in reqs]
    assert starts == sorted(starts)
    s_all, e_all = idx.spans(np.arange(len(idx)))
    for q in reqs:
        assert q.length <= 60_000 or len(q.members) == 1
        for m in q.members:
            assert q.start <= s_all[m] and e_all[m] <= q.end
        offs = idx.header_offset[q.members]
        assert np.all(np.diff(offs) > 0)


def test_coalesce_gap_bridging(indexed) -> None:
    idx, _, _ = indexed
    every_other = np.arange(0, len(idx), 2)
    # gaps (one skipped member, ~12-25 KB) bridged when allowed, split otherwise
    assert len(coalesce(idx, every_other, 10**9, 10**6)) == 1
    split = coalesce(idx, every_other, 10**9, 0)
    assert len(split) == len(every_other)
    all_ids = np.arange(len(idx))
    assert len(coalesce(idx, all_ids, 10**9, 0)) == 1  # adjacent members need no bridging


def test_coalesce_single_member_bigger_than_max(indexed) -> None:
    idx, _, _ = indexed
    reqs = coalesce(idx, np.arange(10), 100, 10**6)
    assert len(reqs) == 10 and all(len(q.members) == 1 for q in reqs)
    assert coalesce(idx, [], 100, 0) == []
    with pytest.raises(IndexError):
        coalesce(idx, [len(idx)], 100, 0)


def test_prefetcher_yields_in_order_exact(indexed) -> None:
    idx, r, members = indexed
    reqs = coalesce(idx, np.arange(len(idx)), 50_000, 0)
    out = []
    with Prefetcher(r, reqs, in_flight=3) as pf:
        for q, buf in pf:
            assert len(buf) == q.length
            out.append(q)
            for m in q.members:
                assert idx.extract(m, buf, q.start) == members[idx.name(m)]
    assert out == reqs


class _SlowReader(RangeReader):
    """Counts concurrency; optionally blocks or fails at given offsets."""

    def __init__(self, size: int, delay: float = 0.01, fail_at: int | None = None,
                 block: threading.Event | None = None) -> None:
        self.identity, self.size, self.version, self.stats = "slow", size, "1", ReaderStats()
        self.delay, self.fail_at, self.block = delay, fail_at, block
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()

    def read(self, offset: int, length: int) -> bytes:
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if self.block is not None:
                self.block.wait(30)
            time.sleep(self.delay)
            if offset == self.fail_at:
                raise SourceError(f"boom at {offset}")
            return bytes([offset % 251]) * length
        finally:
            with self.lock:
                self.active -= 1

    def close(self) -> None:
        pass


def _reqs(n: int, size: int = 1000) -> list[RangeRequest]:
    return [RangeRequest(k * size, (k + 1) * size, np.array([k])) for k in range(n)]


def test_prefetcher_bounded_and_buffered_bytes() -> None:
    reader = _SlowReader(10**6, delay=0.02)
    reqs = _reqs(30)
    peak = 0
    with Prefetcher(reader, reqs, in_flight=3) as pf:
        for q, buf in pf:
            assert buf == bytes([q.start % 251]) * q.length
            peak = max(peak, pf.buffered_bytes())
            time.sleep(0.005)
        assert pf.buffered_bytes() == 0
    assert reader.max_active <= 3
    assert 0 < peak <= 3 * 1000


def test_prefetcher_propagates_error_in_order() -> None:
    reader = _SlowReader(10**6, fail_at=5000)
    seen = []
    with pytest.raises(SourceError, match="boom at 5000"):
        for q, _ in Prefetcher(reader, _reqs(20), in_flight=4):
            seen.append(q.start)
    assert seen == [0, 1000, 2000, 3000, 4000]


def test_close_never_hangs_on_blocked_reads() -> None:
    gate = threading.Event()
    reader = _SlowReader(10**6, block=gate)
    pf = Prefetcher(reader, _reqs(10), in_flight=4)
    it = iter(pf)
    got: list[object] = []
    def consume() -> None:
        try:
            got.append(next(it, None))
        except PrefetchClosed as e:
            got.append(e)

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    time.sleep(0.1)
    t = time.perf_counter()
    pf.close()
    assert time.perf_counter() - t < 1.0
    consumer.join(3)
    assert not consumer.is_alive()  # the waiting consumer was woken up, with a clear error
    assert len(got) == 1 and isinstance(got[0], PrefetchClosed)
    gate.set()
    with pytest.raises(PrefetchClosed):
        next(iter(pf))


def test_early_break_releases(indexed) -> None:
    idx, r, _ = indexed
    reqs = coalesce(idx, np.arange(len(idx)), 20_000, 0)
    pf = Prefetcher(r, reqs, in_flight=2)
    for _k, _ in zip(range(2), pf, strict=False):
        pass
    pf.close()
    assert pf.buffered_bytes() == 0


def test_empty_requests(tmp_path: Path) -> None:
    reader = _SlowReader(10)
    assert list(Prefetcher(reader, [], in_flight=2)) == []
