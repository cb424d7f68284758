"""LocalFileReader and HttpRangeReader against the loopback range server (no faults here)."""

from __future__ import annotations

import http.server
import random
import socketserver
import threading
import time
from functools import partial
from pathlib import Path

import pytest

from imgae_dx.config import HttpConfig
from imgae_dx.errors import DatasetChangedError, SourceError
from imgae_dx.streaming.archive_index import ArchiveIndex
from imgae_dx.streaming.range_reader import (
    TAIL_BYTES,
    HttpRangeReader,
    LocalFileReader,
    ReaderStats,
    ResolvedURL,
    redact_url,
)
from imgae_dx.testing import RangeServer

pytestmark = pytest.mark.network


def _random_ranges(size: int, n: int, seed: int = 0, max_len: int = 50_000) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a = rng.randrange(size)
        out.append((a, min(rng.randrange(1, max_len), size - a)))
    return out


# ----------------------------------------------------------------------------- local
def test_local_reader(zip_path: Path) -> None:
    data = zip_path.read_bytes()
    with LocalFileReader(zip_path) as r:
        assert r.size == len(data) and r.identity == f"file:{zip_path.absolute()}"
        assert r.version and str(len(data)) in r.version
        for a, n in _random_ranges(len(data), 50):
            assert r.read(a, n) == data[a : a + n]
        assert r.read_tail(100) == data[-100:]
        assert r.read_tail(10**9) == data
        assert r.read(5, 0) == b""
        with pytest.raises(SourceError, match="outside the archive"):
            r.read(len(data) - 5, 10)
        assert r.stats.snapshot()["requests"] >= 50
    with pytest.raises(SourceError, match="closed"):
        r.read(0, 1)
    with pytest.raises(SourceError, match="no such file"):
        LocalFileReader(zip_path.parent / "missing.zip")


def test_reader_stats_threadsafe() -> None:
    s = ReaderStats()

    def work() -> None:
        for _ in range(10_000):
            s.add(bytes_fetched=2, requests=1)

    ts = [threading.Thread(target=work) for _ in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert s.snapshot() == {"bytes_fetched": 80_000, "requests": 40_000, "retries": 0}


def test_redact_url_and_resolved_repr() -> None:
    u = "https://user:pw@storage.example.com:8443/b/data.zip?X-Goog-Signature=SECRET&Expires=1#frag"
    assert redact_url(u) == "https://storage.example.com:8443/b/data.zip"
    assert "SECRET" not in repr(ResolvedURL(u, '"e"', 10))


# ------------------------------------------------------------------------------ http
def test_http_reads_exact_bytes_tail_first_no_head(big_zip, fast_http: HttpConfig) -> None:
    path, members = big_zip
    data = path.read_bytes()
    with RangeServer(path) as srv:
        r = HttpRangeReader(srv.url, http_cfg=fast_http)
        assert r.size == len(data)
        assert r.version == srv.etag.strip('"')
        assert r.identity == srv.url
        log = srv.request_log()
        assert log[0][2] == f"bytes=-{TAIL_BYTES}"
        for a, n in _random_ranges(len(data), 100):
            assert r.read(a, n) == data[a : a + n]
        assert r.read_tail(1000) == data[-1000:]
        assert r.read_tail(TAIL_BYTES + 10) == data[-(TAIL_BYTES + 10):]
        idx = ArchiveIndex.load(r)
        for i in range(0, len(idx), 7):
            s, e = idx.span(i)
            assert idx.extract(i, r.read(s, e - s), s) == members[idx.name(i)]
        counts = srv.counts()
        assert counts["methods"].get("HEAD", 0) == 0
        assert set(counts["status"]) == {206}
        st = r.stats.snapshot()
        assert st["requests"] == counts["requests"] and st["retries"] == 0
        r.close()


def test_http_concurrent_reads_pool(big_zip, fast_http: HttpConfig) -> None:
    path, _ = big_zip
    data = path.read_bytes()
    with RangeServer(path) as srv:
        r = HttpRangeReader(srv.url, http_cfg=fast_http)
        errors: list[BaseException] = []

        def work(seed: int) -> None:
            try:
                for a, n in _random_ranges(len(data), 40, seed=seed):
                    assert r.read(a, n) == data[a : a + n]
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        ts = [threading.Thread(target=work, args=(s,)) for s in range(6)]
        [t.start() for t in ts]
        [t.join(timeout=60) for t in ts]
        assert not errors
        assert srv.counts()["requests"] == r.stats.requests > 200
        r.close()


def test_etag_change_mid_run_raises(big_zip, fast_http: HttpConfig) -> None:
    path, _ = big_zip
    with RangeServer(path) as srv:
        r = HttpRangeReader(srv.url, http_cfg=fast_http)
        r.read(0, 1000)
        srv.replace_file(etag='"v2"')
        with pytest.raises(DatasetChangedError, match="changed version.*restart"):
            r.read(0, 1000)


def test_size_change_mid_run_raises(big_zip, tmp_path: Path, fast_http: HttpConfig) -> None:
    path, _ = big_zip
    other = tmp_path / "other.zip"
    other.write_bytes(path.read_bytes() + b"more")
    with RangeServer(path, etag='"same"') as srv:
        r = HttpRangeReader(srv.url, http_cfg=fast_http)
        srv.replace_file(other, etag='"same"')
        with pytest.raises(DatasetChangedError, match="size was"):
            r.read(0, 1000)


def test_signature_expiry_reresolves(big_zip, fast_http: HttpConfig) -> None:
    path, _ = big_zip
    data = path.read_bytes()
    with RangeServer(path, signed=True) as srv:
        resolved: list[int] = []

        def resolve() -> ResolvedURL:
            resolved.append(1)
            return ResolvedURL(srv.signed_url(60), srv.etag, srv.size)

        r = HttpRangeReader(srv.signed_url(0.3), identity="kaggle:o/s", http_cfg=fast_http, resolve_url=resolve)
        assert r.identity == "kaggle:o/s"
        assert r.read(0, 5000) == data[:5000]
        time.sleep(0.35)  # the first URL expires
        assert r.read(100, 5000) == data[100:5100]
        assert len(resolved) == 1
        srv.rotate_key()  # every URL issued so far is invalid now
        for a, n in _random_ranges(len(data), 20):
            assert r.read(a, n) == data[a : a + n]
        assert len(resolved) == 2
        assert srv.counts()["status"][403] == 2
        assert srv.counts()["methods"].get("HEAD", 0) == 0


def test_reresolve_with_other_etag_is_dataset_changed(big_zip, fast_http: HttpConfig) -> None:
    path, _ = big_zip
    with RangeServer(path, signed=True) as srv:
        r = HttpRangeReader(srv.signed_url(60), http_cfg=fast_http,
                            resolve_url=lambda: ResolvedURL(srv.signed_url(60), '"another"', srv.size))
        srv.rotate_key()
        with pytest.raises(DatasetChangedError, match="another"):
            r.read(0, 10)


def test_403_without_resolver_is_clear_and_redacted(big_zip, fast_http: HttpConfig) -> None:
    path, _ = big_zip
    with RangeServer(path, signed=True) as srv:
        url = srv.signed_url(60)
        r = HttpRangeReader(url, http_cfg=fast_http)
        srv.rotate_key()
        with pytest.raises(SourceError) as ei:
            r.read(0, 10)
        msg = str(ei.value)
        assert "403" in msg and "sig=" not in msg and "expires=" not in msg and srv.url in msg
        # an unsigned request to a signed server fails at open time, also clearly
        with pytest.raises(SourceError, match="403"):
            HttpRangeReader(srv.url, http_cfg=fast_http)


def test_404_fails_fast(big_zip, fast_http: HttpConfig) -> None:
    path, _ = big_zip
    with RangeServer(path) as srv:
        t = time.perf_counter()
        with pytest.raises(SourceError, match="not found"):
            HttpRangeReader(srv.base_url + "/nope.zip", http_cfg=fast_http)
        assert time.perf_counter() - t < 1
        assert srv.counts()["requests"] == 1


def test_server_without_range_support_is_refused(big_zip, fast_http: HttpConfig) -> None:
    """Python's SimpleHTTPRequestHandler ignores Range and answers 200 with the whole file."""
    path, _ = big_zip
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(path.parent))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    httpd = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    th = threading.Thread(target=httpd.serve_forever, daemon=True)
    th.start()
    try:
        with pytest.raises(SourceError, match="ignored the Range header"):
            HttpRangeReader(f"http://127.0.0.1:{httpd.server_address[1]}/{path.name}", http_cfg=fast_http)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_not_http_url_rejected(fast_http: HttpConfig) -> None:
    with pytest.raises(SourceError, match="not an http"):
        HttpRangeReader("ftp://x/y.zip", http_cfg=fast_http)


def test_server_416_on_bad_ranges(big_zip) -> None:
    import requests

    path, _ = big_zip
    with RangeServer(path) as srv:
        size = srv.size
        for bad in (f"bytes={size}-", "bytes=5-2", "bytes=0-1,5-9", "items=0-4", "bytes=-0"):
            resp = requests.get(srv.url, headers={"Range": bad}, timeout=5)
            assert resp.status_code == 416, bad
            assert resp.headers["Content-Range"] == f"bytes */{size}"
        resp = requests.get(srv.url, headers={"Range": "bytes=10-"}, timeout=5)
        assert resp.status_code == 206 and resp.content == path.read_bytes()[10:]
        assert requests.head(srv.url, timeout=5).status_code == 405
        assert srv.counts()["methods"]["HEAD"] == 1


def test_readers_pickle_and_fork_safety(big_zip, fast_http: HttpConfig) -> None:
    """Readers travel to worker processes: pickled (spawn) or inherited (fork: new connections)."""
    import pickle

    path, _ = big_zip
    data = path.read_bytes()
    local = LocalFileReader(path)
    local2 = pickle.loads(pickle.dumps(local))
    assert local2.read(100, 50) == data[100:150] and local2.identity == local.identity
    with RangeServer(path, signed=True) as srv:
        r = HttpRangeReader(srv.signed_url(60), http_cfg=fast_http)
        r.read(0, 10)
        r2 = pickle.loads(pickle.dumps(r))
        assert r2.size == r.size and r2.version == r.version
        assert r2.read(5, 1000) == data[5:1005]  # the signed URL travelled with it
        assert r2.stats.snapshot()["requests"] >= r.stats.snapshot()["requests"]
        before = r._session
        r._pid = -1  # as seen from a forked child
        assert r.read(7, 100) == data[7:107]
        assert r._session is not before
