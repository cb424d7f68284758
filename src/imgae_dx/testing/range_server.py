"""A real threaded HTTP/1.1 loopback server for one file, with Range, signatures and faults.

Used by the tests, the demo and the benchmarks as "cloud storage", and by the Kaggle API
emulator as the storage server its download redirect points at.

Over 500 lines on purpose: one server whose behaviours (ranges, signatures, faults, link) act on
the same request; splitting them would spread one HTTP exchange over several files.

Behaviour:

* ``GET`` with ``Range: bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` → 206 with ``Content-Range``;
  without ``Range`` → 200 with the whole file; unsatisfiable, malformed or multi-range → 416
  (``Content-Range: bytes */SIZE``). Every response carries ``ETag``, ``Last-Modified``,
  ``Accept-Ranges: bytes`` and ``Content-Length``; connections are kept alive.
* ``HEAD`` (and any other method) → 405: signed storage URLs refuse probes, so readers must not
  send them (``server.counts()["methods"]["HEAD"]`` lets tests assert that).
* Signed URLs (``signed=True``): only ``server.signed_url(ttl_s)`` URLs
  (``?expires=UNIX_TIME&sig=HMAC``) are accepted; an expired, forged or missing signature → 403.
  ``server.rotate_key()`` invalidates every URL issued so far (an expiry on demand).
* Faults (:class:`Faults`, seeded RNG), applied to GETs that passed the signature check: reset
  mid-body (TCP RST), short body then close, slow body (a pause mid-body), 5xx, 429 with
  ``Retry-After``, corrupted bytes (one byte flipped, status and headers intact).
* ``server.replace_file(path=None, etag=...)`` changes the content and/or ETag mid-run.
* An emulated network link (:class:`Link`, off by default): every response waits one round-trip
  time before its first byte (a new connection one more, its TCP handshake), and all response
  bodies share one bandwidth (bytes leave in order, paced by a virtual clock). Not modelled: TCP
  slow start and receive windows, loss, jitter. The client is unchanged: it sees a slow network.

Example::

    with RangeServer("data.zip", signed=True, faults=Faults(reset=0.05, seed=1),
                     link=Link(bandwidth_bytes_per_s=100e6, rtt_s=0.030)) as srv:
        url = srv.signed_url(ttl_s=60)
        ...
        srv.counts()   # {"requests": …, "methods": {"GET": …}, "status": {206: …}, "faults": {…}, …}
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import os
import random
import secrets
import socket
import struct
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

_CHUNK = 256 * 1024


@dataclass(frozen=True)
class Faults:
    """Per-GET fault probabilities (their sum must be ≤ 1) and parameters.

    Attributes:
        reset: close the connection with a TCP reset halfway through the body.
        short: send fewer bytes than ``Content-Length``, then close.
        slow: pause ``slow_s`` seconds halfway through the body (then finish it).
        error_5xx: answer 500, 502 or 503 (no body).
        throttle: answer 429 with ``Retry-After: retry_after``.
        corrupt: flip one byte of the body (a CRC check must catch it).
        slow_s: pause of a slow body.
        retry_after: ``Retry-After`` header value (seconds or an HTTP-date) on 429 and 503.
        seed: seeds the fault RNG.
        max_faults: stop injecting after this many faults (``None`` = no limit).
        apply_to_tail: also fault suffix-range (``bytes=-n``) requests.
    """

    reset: float = 0.0
    short: float = 0.0
    slow: float = 0.0
    error_5xx: float = 0.0
    throttle: float = 0.0
    corrupt: float = 0.0
    slow_s: float = 0.3
    retry_after: str = "0"
    seed: int = 0
    max_faults: int | None = None
    apply_to_tail: bool = True

    @classmethod
    def uniform(cls, rate: float, *, seed: int = 0, corrupt: bool = False, **kw: Any) -> Faults:
        """``rate`` split evenly over reset, short, slow, 5xx, 429 (and corrupt if asked)."""
        kinds = ["reset", "short", "slow", "error_5xx", "throttle"] + (["corrupt"] if corrupt else [])
        return cls(**{k: rate / len(kinds) for k in kinds}, seed=seed, **kw)

    def _table(self) -> list[tuple[str, float]]:
        t = [("reset", self.reset), ("short", self.short), ("slow", self.slow),
             ("error_5xx", self.error_5xx), ("throttle", self.throttle), ("corrupt", self.corrupt)]
        if sum(p for _, p in t) > 1.0 + 1e-9:
            raise ValueError("fault probabilities sum to more than 1")
        return t


@dataclass(frozen=True)
class Link:
    """An emulated network link between the server and its clients.

    Attributes:
        bandwidth_bytes_per_s: capacity shared by every response body (``None``: unlimited).
        rtt_s: round-trip time; every response starts this long after its request arrived.
        handshake_rtts: extra round trips before a new connection's first response (TCP: 1;
            TLS would add 1–2).
    """

    bandwidth_bytes_per_s: float | None = None
    rtt_s: float = 0.0
    handshake_rtts: float = 1.0

    def __post_init__(self) -> None:
        if self.bandwidth_bytes_per_s is not None and self.bandwidth_bytes_per_s <= 0:
            raise ValueError(f"bandwidth must be positive, got {self.bandwidth_bytes_per_s}")
        if self.rtt_s < 0 or self.handshake_rtts < 0:
            raise ValueError("rtt_s and handshake_rtts must be >= 0")


class _Pacer:
    """Bytes leave one shared link in order: a virtual clock of when the link is next free."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._free_at = 0.0
        self._lock = threading.Lock()

    def wait(self, nbytes: int) -> None:
        """Block until ``nbytes`` more bytes have crossed the link."""
        with self._lock:
            now = time.monotonic()
            done = max(now, self._free_at) + nbytes / self.rate
            self._free_at = done
        delay = done - time.monotonic()
        if delay > 0:
            time.sleep(delay)


@dataclass(frozen=True)
class _FileState:
    path: Path
    size: int
    etag: str
    last_modified: str


def _file_state(path: Path, etag: str | None, last_modified: str | None) -> _FileState:
    st = path.stat()
    tag = etag or '"' + hashlib.sha1(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:20] + '"'
    lm = last_modified or email.utils.formatdate(st.st_mtime, usegmt=True)
    return _FileState(path, int(st.st_size), tag, lm)


class QuietHTTPServer(ThreadingHTTPServer):
    """Threaded HTTP server for tests that does not print a traceback for a client that hung up
    (or a fault we injected)."""

    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _ReusableServer(QuietHTTPServer):
    allow_reuse_address = True


class RangeServer:
    """Serve one file over loopback HTTP/1.1 (see the module docstring).

    Args:
        path: the file to serve.
        host: bind address (loopback by default).
        port: 0 = any free port (see ``.port`` after ``start()``).
        url_path: the path the file is served at (default ``/<file name>``).
        etag / last_modified: override the validators (default: from path, size and mtime).
        signed: require ``signed_url`` signatures.
        faults: injected faults (default none).
        keepalive_timeout_s: idle keep-alive connections are closed after this.
        link: emulated bandwidth and latency (default: loopback as is).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        url_path: str | None = None,
        etag: str | None = None,
        last_modified: str | None = None,
        signed: bool = False,
        faults: Faults | None = None,
        keepalive_timeout_s: float = 15.0,
        link: Link | None = None,
    ) -> None:
        p = Path(path)
        self._state = _file_state(p, etag, last_modified)
        self.host = host
        self._port = port
        self.url_path = url_path or "/" + p.name
        if not self.url_path.startswith("/"):
            raise ValueError("url_path must start with '/'")
        self.signed = signed
        self._secret = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self.set_faults(faults or Faults())
        self.set_link(link or Link())
        self._keepalive = keepalive_timeout_s
        self._status: Counter[int] = Counter()
        self._methods: Counter[str] = Counter()
        self._faults: Counter[str] = Counter()
        self._bytes_sent = 0
        self._log: deque[tuple[str, str, str, int]] = deque(maxlen=10000)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> RangeServer:
        """Bind and serve in a background thread. Returns self."""
        if self._httpd is not None:
            return self
        server = self

        class Handler(_Handler):
            pass

        Handler.server_ref = server
        Handler.timeout = self._keepalive

        self._httpd = _ReusableServer((self.host, self._port), Handler)
        self._port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"range-server-{self._port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop open connections. Idempotent."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> RangeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------- public
    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        """``http://host:port`` (no path)."""
        return f"http://{self.host}:{self._port}"

    @property
    def url(self) -> str:
        """The unsigned URL of the file (answers 403 when ``signed=True``)."""
        return self.base_url + self.url_path

    @property
    def size(self) -> int:
        return self._state.size

    @property
    def etag(self) -> str:
        return self._state.etag

    @property
    def last_modified(self) -> str:
        return self._state.last_modified

    def signed_url(self, ttl_s: float = 3600.0) -> str:
        """A URL valid for ``ttl_s`` seconds (until ``rotate_key()``)."""
        expires = f"{time.time() + ttl_s:.3f}"
        return f"{self.url}?expires={expires}&sig={self._sign(expires)}"

    def rotate_key(self) -> None:
        """Invalidate every signed URL issued so far (they now get 403)."""
        with self._lock:
            self._secret = secrets.token_bytes(32)

    def replace_file(self, path: str | os.PathLike[str] | None = None, *, etag: str | None = None,
                     last_modified: str | None = None) -> None:
        """Serve new content (``path``) and/or new validators from now on."""
        with self._lock:
            p = Path(path) if path is not None else self._state.path
            self._state = _file_state(p, etag, last_modified)

    def set_faults(self, faults: Faults) -> None:
        """Replace the fault configuration (resets its RNG and fault budget)."""
        table = faults._table()
        with self._lock:
            self.faults = faults
            self._fault_table = table
            self._rng = random.Random(faults.seed)
            self._faults_left = faults.max_faults

    def set_link(self, link: Link) -> None:
        """Emulate ``link`` from now on (``Link()``: no emulation)."""
        pacer = None if link.bandwidth_bytes_per_s is None else _Pacer(link.bandwidth_bytes_per_s)
        with self._lock:
            self.link = link
            self._pacer = pacer

    def counts(self) -> dict[str, Any]:
        """Snapshot: ``requests``, ``methods`` {GET/HEAD/…: n}, ``status`` {code: n},
        ``faults`` {kind: n}, ``bytes_sent``."""
        with self._lock:
            return {
                "requests": sum(self._methods.values()),
                "methods": dict(self._methods),
                "status": dict(self._status),
                "faults": dict(self._faults),
                "bytes_sent": self._bytes_sent,
            }

    def request_log(self) -> list[tuple[str, str, str, int]]:
        """Last requests as (method, path without query, Range header, status)."""
        with self._lock:
            return list(self._log)


    # ---------------------------------------------------------------- internals
    def _sign(self, expires: str) -> str:
        with self._lock:
            key = self._secret
        return hmac.new(key, f"{self.url_path}\n{expires}".encode(), hashlib.sha256).hexdigest()[:32]

    def _check_sig(self, query: str) -> str | None:
        q = parse_qs(query)
        exp, sig = q.get("expires", [None])[0], q.get("sig", [None])[0]
        if not exp or not sig:
            return "missing signature"
        if not hmac.compare_digest(self._sign(exp), sig):
            return "bad signature"
        try:
            if float(exp) < time.time():
                return "signature expired"
        except ValueError:
            return "bad expiry"
        return None

    def _draw_fault(self, is_tail: bool) -> str | None:
        with self._lock:
            if is_tail and not self.faults.apply_to_tail:
                return None
            if self._faults_left is not None and self._faults_left <= 0:
                return None
            u = self._rng.random()
            acc = 0.0
            for kind, p in self._fault_table:
                acc += p
                if u < acc:
                    if self._faults_left is not None:
                        self._faults_left -= 1
                    self._faults[kind] += 1
                    return kind
            return None

    def _rng_choice(self, seq: tuple[int, ...]) -> int:
        with self._lock:
            return seq[self._rng.randrange(len(seq))]

    def _rng_int(self, n: int) -> int:
        with self._lock:
            return self._rng.randrange(n)

    def _record(self, method: str, path: str, rng: str, status: int, sent: int = 0) -> None:
        with self._lock:
            self._methods[method] += 1
            self._status[status] += 1
            self._bytes_sent += sent
            self._log.append((method, path, rng, status))

    def _add_sent(self, n: int) -> None:
        with self._lock:
            self._bytes_sent += n


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) inclusive, or None if malformed / unsatisfiable / multi-range."""
    h = header.strip()
    if not h.lower().startswith("bytes="):
        return None
    spec = h[6:].strip()
    if "," in spec or "-" not in spec:
        return None
    a, b = (s.strip() for s in spec.split("-", 1))
    try:
        if a == "":
            n = int(b)
            if n <= 0 or size == 0:
                return None
            return max(size - n, 0), size - 1
        first = int(a)
        last = int(b) if b else size - 1
    except ValueError:
        return None
    if first < 0 or first >= size or last < first:
        return None
    return first, min(last, size - 1)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "imgae-range-server/1"
    server_ref: RangeServer

    def setup(self) -> None:
        super().setup()
        self._new_connection = True
        # headers and body go out in separate writes: without NODELAY, Nagle + delayed ACK
        # would add ~40 ms to every response
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server_ref._lock:
            self.server_ref._conns.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server_ref._lock:
                self.server_ref._conns.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _link_delay(self) -> None:
        """The emulated link's round trip(s) before this response starts."""
        link = self.server_ref.link
        rtts = 1.0 + (link.handshake_rtts if self._new_connection else 0.0)
        self._new_connection = False
        if link.rtt_s:
            time.sleep(link.rtt_s * rtts)

    def send_response(self, code: int, message: str | None = None) -> None:
        self._link_delay()
        super().send_response(code, message)

    def _refuse(self, code: int, msg: str, extra: dict[str, str] | None = None) -> None:
        body = (msg + "\n").encode()
        self.send_response(code)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _method_not_allowed(self) -> None:
        srv = self.server_ref
        srv._record(self.command, urlsplit(self.path).path, self.headers.get("Range", ""), 405)
        self._refuse(405, "method not allowed: use GET with a Range header", {"Allow": "GET"})

    do_HEAD = _method_not_allowed
    do_POST = _method_not_allowed
    do_PUT = _method_not_allowed
    do_DELETE = _method_not_allowed
    do_OPTIONS = _method_not_allowed

    def do_GET(self) -> None:  # noqa: N802
        srv = self.server_ref
        parts = urlsplit(self.path)
        rng_h = self.headers.get("Range", "")
        if parts.path != srv.url_path:
            srv._record("GET", parts.path, rng_h, 404)
            return self._refuse(404, "not found")
        if srv.signed:
            why = srv._check_sig(parts.query)
            if why:
                srv._record("GET", parts.path, rng_h, 403)
                return self._refuse(403, why)
        st = srv._state
        validators = {"ETag": st.etag, "Last-Modified": st.last_modified, "Accept-Ranges": "bytes"}
        if rng_h:
            r = _parse_range(rng_h, st.size)
            if r is None:
                srv._record("GET", parts.path, rng_h, 416)
                return self._refuse(416, "range not satisfiable", {"Content-Range": f"bytes */{st.size}", **validators})
            first, last = r
            status = 206
        else:
            first, last, status = 0, st.size - 1, 200
        fault = srv._draw_fault(rng_h.replace(" ", "").lower().startswith("bytes=-"))
        if fault == "error_5xx":
            code = srv._rng_choice((500, 502, 503))
            srv._record("GET", parts.path, rng_h, code)
            extra = {"Retry-After": srv.faults.retry_after} if code == 503 else {}
            return self._refuse(code, "injected server error", extra)
        if fault == "throttle":
            srv._record("GET", parts.path, rng_h, 429)
            return self._refuse(429, "too many requests", {"Retry-After": srv.faults.retry_after})
        length = last - first + 1
        cut = None
        if fault in ("reset", "short", "slow"):
            cut = length // 2
        corrupt_at = srv._rng_int(length) if fault == "corrupt" and length else None
        # counted before the reply (the bytes as planned): a client that has its response finds
        # it in the counters; a write that fails takes back what it did not send
        planned = cut if fault in ("reset", "short") else length
        srv._record("GET", parts.path, rng_h, status, planned)
        self.send_response(status)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(length))
        if status == 206:
            self.send_header("Content-Range", f"bytes {first}-{last}/{st.size}")
        for k, v in validators.items():
            self.send_header(k, v)
        self.end_headers()
        sent = 0
        pacer = srv._pacer
        try:
            fd = os.open(st.path, os.O_RDONLY)
            try:
                pos = first
                end = last + 1
                while pos < end:
                    n = min(_CHUNK, end - pos)
                    if cut is not None and sent < cut <= sent + n:
                        n = max(cut - sent, 0)
                    chunk = os.pread(fd, n, pos) if n else b""
                    if corrupt_at is not None and sent <= corrupt_at < sent + len(chunk):
                        ba = bytearray(chunk)
                        ba[corrupt_at - sent] ^= 0xFF
                        chunk = bytes(ba)
                    if chunk:
                        if pacer is not None:
                            pacer.wait(len(chunk))
                        self.wfile.write(chunk)
                    sent += len(chunk)
                    pos += len(chunk)
                    if cut is not None and sent == cut:
                        if fault == "slow":
                            self.wfile.flush()
                            time.sleep(srv.faults.slow_s)
                            cut = None
                        elif fault == "short":
                            self.wfile.flush()
                            self.close_connection = True
                            break
                        elif fault == "reset":
                            self.wfile.flush()
                            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                            self.close_connection = True
                            break
                    if not chunk:
                        break
            finally:
                os.close(fd)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        if sent != planned:  # the client went away, or the file shrank under us
            srv._add_sent(sent - planned)


__all__ = ["Faults", "Link", "RangeServer"]
