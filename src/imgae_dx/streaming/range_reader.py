"""Byte ranges of one archive: the single interface every source ends in.

Over 500 lines on purpose: the HTTP reader's response checks, retries, re-signing and ETag rules
are one protocol; splitting them would scatter the invariants a reviewer must see together.

* :class:`LocalFileReader` — ``os.pread`` on a local file.
* :class:`HttpRangeReader` — HTTP(S) ``Range`` GETs over a pooled ``requests.Session``. The
  archive's size comes from the tail read (suffix range ``bytes=-65536``, ``Content-Range`` total):
  **HEAD is never sent** (signed storage URLs refuse it). Every response is checked (206, matching
  ``Content-Range``, exact body length); transient failures are retried by
  :class:`~imgae_dx.streaming.retry.RetryPolicy`. A 403 (expired signature) calls ``resolve_url``
  for a fresh signed URL. An ETag that changes mid-run raises
  :class:`~imgae_dx.errors.DatasetChangedError`.

Readers are thread-safe: several prefetch threads call :meth:`RangeReader.read` at once.
URLs that appear in identities, errors and logs go through :func:`redact_url` (query strings of
signed URLs are secrets).
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from imgae_dx.errors import DatasetChangedError, SourceError, UserError
from imgae_dx.streaming.retry import RetryPolicy, TransientError, parse_retry_after

log = logging.getLogger(__name__)

#: Bytes fetched by the first (suffix-range) request; the index reads the EOCD from them.
TAIL_BYTES = 65536

CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_QUERY_IN_TEXT = re.compile(r"\?[^\s'\")>\]]*")


# ------------------------------------------------------------------------------------ helpers
def redact_url(url: str) -> str:
    """``url`` without query string, fragment or user info: safe for logs, errors, identities.

    >>> redact_url("https://u:p@host/a/data.zip?X-Goog-Signature=abc#f")
    'https://host/a/data.zip'
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def redact_text(text: str) -> str:
    """Remove any ``?query`` that looks like part of a URL from free text (exception messages)."""
    return _QUERY_IN_TEXT.sub("?<redacted>", text)


def describe_exc(e: BaseException) -> str:
    """``Type: message`` of an exception for an error text: redacted, at most 300 characters."""
    msg = redact_text(str(e))
    if len(msg) > 300:
        msg = msg[:300] + "…"
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _norm_etag(etag: str | None) -> str | None:
    if etag is None:
        return None
    e = etag.strip()
    if e.startswith(("W/", "w/")):
        e = e[2:]
    return e.strip('"') or None


@dataclass(repr=False)
class ResolvedURL:
    """A (signed) URL of the archive plus what the resolver learnt about it.

    ``url`` may carry a secret signature: it is never shown by ``repr``. ``etag``/``size`` are
    ``None`` when unknown; when known they are checked against the archive being read.
    """

    url: str
    etag: str | None = None
    size: int | None = None

    def __repr__(self) -> str:
        return f"ResolvedURL(url={redact_url(self.url)!r}, etag={self.etag!r}, size={self.size!r})"


class ReaderStats:
    """Thread-safe counters of one reader: ``bytes_fetched``, ``requests``, ``retries``."""

    __slots__ = ("_lock", "bytes_fetched", "requests", "retries")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes_fetched = 0
        self.requests = 0
        self.retries = 0

    def __getstate__(self) -> dict[str, int]:
        return self.snapshot()

    def __setstate__(self, state: dict[str, int]) -> None:
        self._lock = threading.Lock()
        self.bytes_fetched = state["bytes_fetched"]
        self.requests = state["requests"]
        self.retries = state["retries"]

    def add(self, *, bytes_fetched: int = 0, requests: int = 0, retries: int = 0) -> None:
        """Increment counters atomically."""
        with self._lock:
            self.bytes_fetched += bytes_fetched
            self.requests += requests
            self.retries += retries

    def snapshot(self) -> dict[str, int]:
        """A consistent copy: ``{"bytes_fetched": …, "requests": …, "retries": …}``."""
        with self._lock:
            return {"bytes_fetched": self.bytes_fetched, "requests": self.requests, "retries": self.retries}

    def __repr__(self) -> str:
        return f"ReaderStats({self.snapshot()})"


# -------------------------------------------------------------------------------- interface
class RangeReader(ABC):
    """Random access to the bytes of one archive.

    Attributes:
        identity: stable, secret-free id, e.g. ``"file:/abs/data.zip"``, ``"https://host/path"``,
            ``"kaggle:owner/slug"``.
        size: archive length in bytes.
        version: ETag, else Last-Modified, else an mtime/size token; keys the index cache.
        stats: :class:`ReaderStats`.
    """

    identity: str
    size: int
    version: str | None
    stats: ReaderStats

    @abstractmethod
    def read(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes starting at ``offset``, or raise :class:`SourceError`."""

    def read_tail(self, length: int) -> bytes:
        """The last ``min(length, size)`` bytes of the archive."""
        length = min(int(length), self.size)
        return self.read(self.size - length, length)

    @abstractmethod
    def close(self) -> None:
        """Release files / connections. Idempotent."""

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise SourceError(
                f"{self.identity}: byte range {offset}-{offset + length - 1} is outside the archive "
                f"(size {self.size}); the index does not match this archive — delete the index cache "
                f"or restart"
            )

    def __enter__(self) -> RangeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------ local
def pread_full(fd: int, length: int, offset: int) -> bytes:
    """``os.pread`` until ``length`` bytes or end of file (pread may return short on some
    filesystems); the result is shorter than ``length`` only at end of file."""
    data = os.pread(fd, length, offset)
    if len(data) >= length or not data:
        return data
    parts, got = [data], len(data)
    while got < length:
        more = os.pread(fd, length - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class LocalFileReader(RangeReader):
    """``os.pread`` on a local file (thread-safe, no shared file position)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        p = Path(path).expanduser().absolute()
        try:
            fd = os.open(p, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except FileNotFoundError:
            raise SourceError(f"no such file: {p}") from None
        except IsADirectoryError:
            raise SourceError(f"{p} is a folder, not an archive file") from None
        except OSError as e:
            raise SourceError(f"cannot open {p}: {e.strerror or e}") from None
        self._fd: int | None = fd
        st = os.fstat(fd)
        self.path = p
        self.identity = f"file:{p}"
        self.size = int(st.st_size)
        self.version = f"mtime_ns={st.st_mtime_ns};size={st.st_size}"
        self.stats = ReaderStats()

    def __getstate__(self) -> dict[str, Any]:
        """Picklable: the file is reopened (and checked unchanged) in the receiving process."""
        state = self.__dict__.copy()
        state["_fd"] = None
        state["_was_open"] = self._fd is not None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        was_open = state.pop("_was_open", False)
        self.__dict__.update(state)
        if was_open:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            st = os.fstat(fd)
            if f"mtime_ns={st.st_mtime_ns};size={st.st_size}" != self.version:
                os.close(fd)
                raise SourceError(f"{self.identity} changed since it was opened; restart")
            self._fd = fd

    def read(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        fd = self._fd
        if fd is None:
            raise SourceError(f"{self.identity}: reader is closed")
        if length == 0:
            return b""
        try:
            data = pread_full(fd, length, offset)
        except OSError as e:
            raise SourceError(
                f"{self.identity}: read of bytes {offset}-{offset + length - 1} failed: {e.strerror or e}"
            ) from None
        if len(data) != length:
            raise SourceError(
                f"{self.identity}: file ended early at bytes {offset}-{offset + length - 1} "
                f"(got {len(data)} of {length}); was it truncated or replaced while running?"
            )
        self.stats.add(bytes_fetched=length, requests=1)
        return data

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class BytesReader(RangeReader):
    """An archive held in memory (tests, fuzzing, tiny embedded archives)."""

    def __init__(self, data: bytes, identity: str = "memory:archive", version: str | None = None) -> None:
        self._data = bytes(data)
        self.identity = identity
        self.size = len(self._data)
        self.version = version or f"size={self.size}"
        self.stats = ReaderStats()

    def read(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        self.stats.add(bytes_fetched=length, requests=1)
        return self._data[offset : offset + length]

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------- http
class _Fatal(Exception):
    """Internal: a non-retryable error raised from inside an attempt."""

    def __init__(self, err: Exception) -> None:
        super().__init__(str(err))
        self.err = err


class HttpRangeReader(RangeReader):
    """HTTP(S) ``Range`` reads of one archive with pooling, verification and retries.

    Args:
        url: the archive URL (may be signed; the signature never leaves this object).
        identity: secret-free identity (default: the redacted URL).
        http_cfg: :class:`imgae_dx.config.HttpConfig` (timeouts, retries, backoff, pool size).
        resolve_url: called on HTTP 403 to obtain a fresh signed URL; if the fresh ETag/size
            differ from the archive being read, :class:`DatasetChangedError` is raised.
        session: a ``requests.Session`` to use (default: a new one with a pooled adapter).
        retry_policy: override the policy built from ``http_cfg`` (tests).

    The constructor performs the first request, a suffix range ``bytes=-65536``, which gives the
    archive size (``Content-Range`` total), its ETag / Last-Modified and the tail bytes that
    :meth:`read_tail` serves without another request.

    Processes: a forked child (DataLoader worker) opens its own connections on first use; the
    reader also pickles (spawned workers) when ``resolve_url`` is picklable. Size
    ``http_cfg.pool_connections`` ≥ the requests in flight per process, or urllib3 discards the
    extra connections after use.
    """

    def __init__(
        self,
        url: str,
        *,
        identity: str | None = None,
        http_cfg: Any = None,
        resolve_url: Callable[[], ResolvedURL] | None = None,
        session: Any = None,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        if http_cfg is None:
            from imgae_dx.config import HttpConfig

            http_cfg = HttpConfig()
        scheme = urlsplit(url).scheme.lower()
        if scheme not in ("http", "https"):
            raise SourceError(f"not an http(s) URL: {redact_url(url)}")
        self._url = url
        self._url_gen = 0
        self._url_lock = threading.Lock()
        self.identity = identity or redact_url(url)
        self._display = redact_url(url)
        self._cfg = http_cfg
        self._timeout = (float(http_cfg.timeout_s), float(http_cfg.timeout_s))
        self._resolve_url = resolve_url
        self._policy = retry_policy or RetryPolicy.from_config(http_cfg)
        self._own_session = session is None
        self._session = session if session is not None else self._new_session()
        self._pid = os.getpid()
        self._closed = False
        self.stats = ReaderStats()
        self._etag: str | None = None
        self._last_modified: str | None = None
        self.size = -1
        self.version = None
        self._tail = b""
        self._fetch_tail()

    def _new_session(self) -> Any:
        import requests
        from requests.adapters import HTTPAdapter

        session = requests.Session()
        pool = int(self._cfg.pool_connections)
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(pool, 1), max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def _current_session(self) -> Any:
        """The session of this process: after a fork (DataLoader workers) the parent's pooled
        sockets must not be shared, so the child opens its own connections."""
        if self._pid != os.getpid():
            with self._url_lock:
                if self._pid != os.getpid():
                    self._session = self._new_session()
                    self._own_session = True
                    self._pid = os.getpid()
        return self._session

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (spawned worker processes): drops the session and locks, keeps the URL."""
        state = self.__dict__.copy()
        for k in ("_session", "_url_lock"):
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._url_lock = threading.Lock()
        self._session = self._new_session()
        self._own_session = True
        self._pid = os.getpid()

    # ------------------------------------------------------------------ public
    def read(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        if length == 0:
            return b""
        if self._closed:
            raise SourceError(f"{self.identity}: reader is closed")
        tail_start = self.size - len(self._tail)
        if offset >= tail_start:  # already have these bytes
            return self._tail[offset - tail_start : offset - tail_start + length]
        end = offset + length - 1
        return self._with_retries(f"bytes={offset}-{end}", f"bytes {offset}-{end}", offset, length)

    def read_tail(self, length: int) -> bytes:
        length = min(int(length), self.size)
        if length <= len(self._tail):
            return self._tail[len(self._tail) - length :]
        return self.read(self.size - length, length)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._own_session:
            self._session.close()

    # ---------------------------------------------------------------- internals
    def _fetch_tail(self) -> None:
        data = self._with_retries(f"bytes=-{TAIL_BYTES}", f"last {TAIL_BYTES} bytes", None, None)
        self._tail = data

    def _with_retries(self, range_header: str, what: str, offset: int | None, length: int | None) -> bytes:
        def on_retry(attempt: int, err: TransientError) -> None:
            self.stats.add(retries=1)
            log.debug("retry %d of %s %s: %s", attempt + 1, self._display, what, err.cause)

        try:
            return self._policy.call(
                lambda: self._attempt(range_header, offset, length),
                source=self.identity if self.identity == self._display else f"{self.identity} ({self._display})",
                what=what,
                on_retry=on_retry,
            )
        except _Fatal as f:
            raise f.err from None

    def _fatal(self, msg: str, cls: type[SourceError] = SourceError) -> _Fatal:
        return _Fatal(cls(msg))

    def _attempt(self, range_header: str, offset: int | None, length: int | None) -> bytes:
        import requests
        import urllib3

        with self._url_lock:
            url, gen = self._url, self._url_gen
        headers = {"Range": range_header, "Accept-Encoding": "identity"}
        self.stats.add(requests=1)
        try:
            resp = self._current_session().get(url, headers=headers, stream=True, timeout=self._timeout, allow_redirects=True)
        except requests.exceptions.SSLError as e:
            raise self._fatal(f"{self._display}: TLS error: {describe_exc(e)}") from None
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema) as e:
            raise self._fatal(f"{self._display}: invalid URL: {describe_exc(e)}") from None
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
            raise TransientError(describe_exc(e)) from None
        try:
            return self._handle(resp, range_header, offset, length, gen)
        finally:
            resp.close()

    def _handle(self, resp: Any, range_header: str, offset: int | None, length: int | None, gen: int) -> bytes:
        import requests
        import urllib3

        status = resp.status_code
        if status == 403:
            if self._resolve_url is None:
                raise self._fatal(
                    f"{self._display}: access denied (HTTP 403) for {range_header}. A signed URL may "
                    f"have expired: pass a fresh one."
                )
            self._reresolve(gen)
            raise TransientError("HTTP 403 (signature expired?); re-resolved the URL", retry_after=0.0)
        if status == 429 or status >= 500:
            ra = parse_retry_after(resp.headers.get("Retry-After"))
            raise TransientError(f"HTTP {status} {resp.reason or ''}".strip(), retry_after=ra)
        if status in (404, 410):
            raise self._fatal(f"{self._display}: not found (HTTP {status}); check the URL or dataset name")
        if status == 416:
            raise self._fatal(
                f"{self._display}: range not satisfiable (HTTP 416) for {range_header}; the archive is "
                f"smaller than expected — it may have been replaced. Restart the run.",
                DatasetChangedError if self.size >= 0 else SourceError,
            )
        if status == 200:
            raise self._fatal(
                f"{self._display}: the server ignored the Range header (HTTP 200 instead of 206); it "
                f"cannot serve byte ranges. Use a server or storage that supports HTTP Range requests."
            )
        if status != 206:
            raise self._fatal(f"{self._display}: unexpected HTTP {status} {resp.reason or ''} for {range_header}")

        m = CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if not m or m.group(3) == "*":
            raise TransientError(f"bad or missing Content-Range {resp.headers.get('Content-Range')!r}")
        first, last, total = int(m.group(1)), int(m.group(2)), int(m.group(3))
        self._check_version(resp, total)
        if offset is None:  # suffix range: whatever the server chose must end at the end
            if last != total - 1 or first > last:
                raise TransientError(f"suffix range answered with bytes {first}-{last}/{total}")
            want = last - first + 1
        else:
            if first != offset or last != offset + (length or 0) - 1:
                raise TransientError(f"asked for {range_header}, got bytes {first}-{last}")
            want = int(length or 0)
        cl = resp.headers.get("Content-Length")
        if cl is not None and cl.strip().isdigit() and int(cl) != want:
            raise TransientError(f"Content-Length {cl} does not match the range length {want}")
        try:
            data = self._read_body(resp, want)
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError,
                http.client.HTTPException, OSError, ValueError) as e:
            raise TransientError(f"body interrupted: {describe_exc(e)}") from None
        if len(data) != want:
            raise TransientError(f"short body: got {len(data)} of {want} bytes")
        self.stats.add(bytes_fetched=want)
        return data

    @staticmethod
    def _read_body(resp: Any, want: int) -> bytes:
        raw = resp.raw
        chunks: list[bytes] = []
        got = 0
        while got < want:
            piece = raw.read(want - got, decode_content=False)
            if not piece:
                break
            chunks.append(piece)
            got += len(piece)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _check_version(self, resp: Any, total: int) -> None:
        etag = resp.headers.get("ETag")
        lm = resp.headers.get("Last-Modified")
        with self._url_lock:
            if self.size < 0:  # first response defines the version
                self.size = total
                self._etag = etag
                self._last_modified = lm
                self.version = _norm_etag(etag) or lm or f"size={total}"
                return
            changed = None
            if self._etag is not None and etag is not None and _norm_etag(etag) != _norm_etag(self._etag):
                changed = f"ETag was {self._etag}, now {etag}"
            elif self._etag is None and self._last_modified and lm and lm != self._last_modified:
                changed = f"Last-Modified was {self._last_modified}, now {lm}"
            elif total != self.size:
                changed = f"size was {self.size}, now {total}"
        if changed:
            raise self._fatal(self._changed_msg(changed), DatasetChangedError)

    def _changed_msg(self, detail: str) -> str:
        return (
            f"the dataset archive {self.identity} changed version in the middle of the run ({detail}). "
            f"Byte offsets from the old version are invalid; restart the run to use the new version."
        )

    def _reresolve(self, gen: int) -> None:
        assert self._resolve_url is not None
        with self._url_lock:
            if gen != self._url_gen:  # another thread already refreshed the URL
                return
            try:
                fresh = self._resolve_url()
            except UserError:
                raise
            except Exception as e:  # resolver bugs / network: report, do not leak
                raise self._fatal(f"{self.identity}: re-resolving the expired URL failed: {describe_exc(e)}") from None
            if fresh.etag is not None and self._etag is not None and _norm_etag(fresh.etag) != _norm_etag(self._etag):
                raise self._fatal(self._changed_msg(f"ETag was {self._etag}, now {fresh.etag}"), DatasetChangedError)
            if fresh.size is not None and self.size >= 0 and int(fresh.size) != self.size:
                raise self._fatal(self._changed_msg(f"size was {self.size}, now {fresh.size}"), DatasetChangedError)
            self._url = fresh.url
            self._url_gen += 1
            self._display = redact_url(fresh.url)
            log.info("re-resolved the signed URL of %s", self.identity)
