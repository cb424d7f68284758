"""The archive served by a real web server (Debian's nginx) read through HttpRangeReader.

Skipped, with the reason, when nginx is not installed or cannot start here.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgae_dx.config import DataConfig, HttpConfig
from imgae_dx.streaming.fetcher import Prefetcher, coalesce
from imgae_dx.streaming.range_reader import HttpRangeReader
from imgae_dx.streaming.sources import open_archive

pytestmark = pytest.mark.network

_CONF = """
{user}
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    default_type application/octet-stream;
    keepalive_requests 10000;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def _nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def nginx(big_zip, tmp_path: Path) -> Iterator[tuple[str, Path, dict[str, bytes]]]:
    binary = _nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    path, members = big_zip
    tmp = tmp_path / "nginx"
    tmp.mkdir()
    port = _free_port()
    conf = tmp / "nginx.conf"
    # as root, workers would drop to 'nobody', who cannot read pytest's private temp folders
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(_CONF.format(user=user, tmp=tmp, port=port, root=path.parent))
    proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(tmp)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                log = (tmp / "error.log").read_text() if (tmp / "error.log").exists() else ""
                pytest.skip(f"nginx could not start: {(out + log).strip()[-300:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.skip("nginx did not accept connections within 10 s")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/{path.name}", path, members
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_members_through_nginx(nginx, tmp_path: Path) -> None:
    url, path, members = nginx
    cfg = DataConfig(index_cache_dir=str(tmp_path / "idx"), http=HttpConfig(timeout_s=5, retries=2))
    with open_archive(url, cfg) as a:
        assert isinstance(a.reader, HttpRangeReader)
        assert a.reader.size == path.stat().st_size
        assert a.reader.version  # nginx sends an ETag for static files
        idx = a.index
        assert sorted(idx.names()) == sorted(members)
        reqs = coalesce(idx, idx.names_with_prefix("images_002/"), 200_000, 4096)
        got = {}
        with Prefetcher(a.reader, reqs, in_flight=3) as pf:
            for q, buf in pf:
                for m in q.members:
                    got[idx.name(m)] = idx.extract(m, buf, q.start)
        assert got == {n: d for n, d in members.items() if n.startswith("images_002/")}
        assert a.read_member("test_list.txt") == members["test_list.txt"]
        assert a.reader.stats.retries == 0
    log = (Path(tmp_path) / "nginx" / "access.log").read_text()
    assert '"HEAD ' not in log and '" 206 ' in log
