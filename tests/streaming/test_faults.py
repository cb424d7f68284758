"""Faults are normal: every read returns exactly the right bytes or a clear error, never a hang."""

from __future__ import annotations

import random
import socket
import threading
import time
from pathlib import Path

import pytest

from imgae_dx.config import HttpConfig
from imgae_dx.errors import ArchiveError, SourceError
from imgae_dx.streaming.archive_index import ArchiveIndex
from imgae_dx.streaming.fetcher import Prefetcher, coalesce
from imgae_dx.streaming.range_reader import HttpRangeReader, ResolvedURL
from imgae_dx.streaming.sources import Archive
from imgae_dx.testing import Faults, RangeServer

pytestmark = pytest.mark.network


def _ranges(size: int, n: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a = rng.randrange(size - 70_000)  # below the cached tail: every read hits the server
        out.append((a, rng.randrange(1, 60_000)))
    return out


@pytest.mark.parametrize("rate", [0.05, 0.20])
def test_reads_exact_under_faults(big_zip, fast_http: HttpConfig, rate: float) -> None:
    path, _ = big_zip
    data = path.read_bytes()
    faults = Faults.uniform(rate, seed=int(rate * 100), slow_s=0.05)
    with RangeServer(path, signed=True, faults=faults) as srv:
        r = HttpRangeReader(srv.signed_url(60), http_cfg=fast_http,
                            resolve_url=lambda: ResolvedURL(srv.signed_url(60), srv.etag, srv.size))
        for k, (a, n) in enumerate(_ranges(len(data), 150, seed=1)):
            assert r.read(a, n) == data[a : a + n]
            if k == 75:
                srv.rotate_key()  # a signature expiry in the middle, too
        c = srv.counts()
        injected = sum(c["faults"].values())
        assert injected >= 2, c
        assert set(c["faults"]) - {"reset", "short", "slow", "error_5xx", "throttle"} == set()
        # slow bodies succeed on the same try; everything else needs a retry (or a re-resolve)
        failed = injected - c["faults"].get("slow", 0)
        # (+1: the re-resolve after rotate_key; a little slack for a pooled connection the
        # server closed after a fault)
        assert failed + 1 <= r.stats.retries <= failed + 3
        assert c["methods"].get("HEAD", 0) == 0
        r.close()


def test_prefetch_under_faults_extracts_every_member(big_zip, fast_http: HttpConfig) -> None:
    path, members = big_zip
    with RangeServer(path, faults=Faults.uniform(0.2, seed=5, slow_s=0.05)) as srv:
        r = HttpRangeReader(srv.url, http_cfg=fast_http)
        idx = ArchiveIndex.load(r)
        reqs = coalesce(idx, range(len(idx)), 100_000, 4096)
        got = {}
        with Prefetcher(r, reqs, in_flight=4) as pf:
            for req, buf in pf:
                for m in req.members:
                    got[idx.name(m)] = idx.extract(m, buf, req.start)
        assert got == members
        assert sum(srv.counts()["faults"].values()) > 0


def test_all_faults_exhaust_budget_with_clear_redacted_error(big_zip) -> None:
    path, _ = big_zip
    cfg = HttpConfig(timeout_s=2, retries=3, backoff_s=0.001, backoff_max_s=0.01)
    with RangeServer(path, signed=True) as srv:
        r = HttpRangeReader(srv.signed_url(60), http_cfg=cfg)
        srv.set_faults(Faults(reset=0.5, error_5xx=0.5, seed=2))
        t = time.perf_counter()
        with pytest.raises(SourceError) as ei:
            r.read(1000, 5000)
        assert time.perf_counter() - t < 10
        msg = str(ei.value)
        assert srv.url in msg and "bytes 1000-5999" in msg and "4 tries" in msg
        assert "sig=" not in msg and "expires=" not in msg
        assert r.stats.retries == 3
        assert srv.counts()["requests"] == 1 + 4


def test_429_retry_after_is_honoured(big_zip, fast_http: HttpConfig) -> None:
    path, _ = big_zip
    data = path.read_bytes()
    with RangeServer(path) as srv:
        r = HttpRangeReader(srv.url, http_cfg=fast_http)
        srv.set_faults(Faults(throttle=1.0, retry_after="0.4", max_faults=2))
        t = time.perf_counter()
        assert r.read(0, 1000) == data[:1000]
        assert time.perf_counter() - t >= 0.8
        assert srv.counts()["status"][429] == 2


def test_slow_body_past_timeout_is_retried(big_zip) -> None:
    path, _ = big_zip
    data = path.read_bytes()
    cfg = HttpConfig(timeout_s=0.2, retries=3, backoff_s=0.001, backoff_max_s=0.01)
    with RangeServer(path) as srv:
        r = HttpRangeReader(srv.url, http_cfg=cfg)
        srv.set_faults(Faults(slow=1.0, slow_s=0.6, max_faults=1))
        assert r.read(0, 200_000) == data[:200_000]
        assert r.stats.retries == 1


def test_corrupted_bytes_caught_by_crc_and_refetched(big_zip, fast_http: HttpConfig) -> None:
    path, members = big_zip
    with RangeServer(path) as srv:
        r = HttpRangeReader(srv.url, http_cfg=fast_http)
        archive = Archive(r, ArchiveIndex.load(r))
        name = next(n for n in members if n.endswith("0005_000.png"))
        i = archive.index.find(name)
        s, e = archive.index.span(i)
        srv.set_faults(Faults(corrupt=1.0, max_faults=1))
        with pytest.raises(ArchiveError, match="CRC-32 mismatch|corrupt deflate"):
            archive.index.extract(i, r.read(s, e - s), s)
        srv.set_faults(Faults(corrupt=1.0, max_faults=1))
        assert archive.read_member(name) == members[name]  # re-fetched after the CRC failure
        srv.set_faults(Faults(corrupt=1.0))  # corrupt every time: the error surfaces
        with pytest.raises(ArchiveError, match=name):
            archive.read_member(name)


def test_silent_server_never_hangs() -> None:
    """A server that accepts and never answers: timeouts + budget end in SourceError."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        lsock.settimeout(0.1)
        while not stop.is_set():
            try:
                conns.append(lsock.accept()[0])
            except OSError:
                pass

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    cfg = HttpConfig(timeout_s=0.2, retries=2, backoff_s=0.001, backoff_max_s=0.01)
    try:
        t = time.perf_counter()
        with pytest.raises(SourceError, match="3 tries"):
            HttpRangeReader(f"http://127.0.0.1:{lsock.getsockname()[1]}/data.zip?sig=s3cret", http_cfg=cfg)
        assert time.perf_counter() - t < 5
    finally:
        stop.set()
        th.join(2)
        for c in conns:
            c.close()
        lsock.close()


def test_connection_refused_is_retried_then_clear(tmp_path: Path) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    cfg = HttpConfig(timeout_s=1, retries=1, backoff_s=0.001, backoff_max_s=0.01)
    with pytest.raises(SourceError) as ei:
        HttpRangeReader(f"http://127.0.0.1:{port}/x.zip?token=abc", http_cfg=cfg)
    assert "abc" not in str(ei.value) and "2 tries" in str(ei.value)
