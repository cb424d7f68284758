"""RangeServer's emulated link: round trips before every response, one shared bandwidth.

Only lower bounds are asserted: the emulated delays are sleeps, which a loaded machine can
lengthen but never shorten.
"""

from __future__ import annotations

import http.client
import os
import threading
import time

import pytest

from imgae_dx.testing.range_server import Link, RangeServer

pytestmark = pytest.mark.network


@pytest.fixture
def blob(tmp_path):
    p = tmp_path / "blob.bin"
    p.write_bytes(os.urandom(1_000_000))
    return p


def _get(conn: http.client.HTTPConnection, path: str, first: int, last: int) -> tuple[bytes, float]:
    t = time.perf_counter()
    conn.request("GET", path, headers={"Range": f"bytes={first}-{last}"})
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 206
    return body, time.perf_counter() - t


def test_round_trips_new_and_kept_alive_connections(blob):
    data = blob.read_bytes()
    with RangeServer(blob, link=Link(rtt_s=0.05)) as srv:
        conn = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
        body, first = _get(conn, srv.url_path, 0, 99)
        assert body == data[:100] and first >= 0.10  # handshake + request round trips
        body, again = _get(conn, srv.url_path, 100, 199)
        assert body == data[100:200] and again >= 0.05  # kept alive: one round trip
        conn.close()
        srv.set_link(Link())
        conn = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
        assert _get(conn, srv.url_path, 0, 9)[0] == data[:10]
        conn.close()


def test_bandwidth_is_shared_by_concurrent_responses(blob):
    data = blob.read_bytes()
    rate = 4e6
    with RangeServer(blob, link=Link(bandwidth_bytes_per_s=rate)) as srv:
        conn = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
        body, dt = _get(conn, srv.url_path, 0, len(data) - 1)
        assert body == data and dt >= len(data) / rate
        conn.close()
        bodies: list[bytes] = [b"", b""]

        def fetch(i: int) -> None:
            c = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
            bodies[i] = _get(c, srv.url_path, i * 500_000, i * 500_000 + 499_999)[0]
            c.close()

        t = time.perf_counter()
        threads = [threading.Thread(target=fetch, args=(i,)) for i in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert b"".join(bodies) == data
        assert time.perf_counter() - t >= len(data) / rate  # one link, not one per connection


def test_link_values_are_checked():
    with pytest.raises(ValueError, match="bandwidth"):
        Link(bandwidth_bytes_per_s=0)
    with pytest.raises(ValueError, match="rtt_s"):
        Link(rtt_s=-1)
