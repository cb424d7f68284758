"""A loopback stand-in for Kaggle's API that the real ``kagglesdk`` talks to.

Over 500 lines on purpose: the server side of the same API contract as
:mod:`imgae_dx.streaming.kaggle_client` — accounts, datasets, competitions with their rules,
listing, download redirects and injected faults — kept in one place so a test reads the whole
stand-in.

With ``KAGGLE_API_ENVIRONMENT=TEST`` kagglesdk sends every call to
``http://localhost:7777/api/v1/<Service>/<Method>`` (a POST with a JSON body). This emulator binds
127.0.0.1:7777 and answers the calls streaming needs, the way Kaggle does:

* authentication: HTTP basic ``username:key`` or ``Authorization: Bearer TOKEN``; missing or wrong
  → 401 ``{"code": 401, "message": …}``; a dataset not shared with the user → 403;
* ``datasets.DatasetApiService/ListDatasetFiles``: the archive's members, paged
  (``pageSize`` / ``pageToken``);
* ``datasets.DatasetApiService/DownloadDataset``: ``302`` to a signed URL on a *separate* storage
  server (another port on 127.0.0.1, one per archive) that serves Range 206/416, ETag,
  Last-Modified, refuses HEAD, expires signatures (403) and injects faults —
  :class:`imgae_dx.testing.range_server.RangeServer`;
* ``competitions.CompetitionApiService/DownloadDataFiles`` (``{"competitionName": SLUG}``): the
  competition's whole-data archive the same way once the user has accepted its rules, else 403
  with Kaggle's own message (:data:`RULES_NOT_ACCEPTED`);
* ``competitions.CompetitionApiService/ListDataFiles``: the competition's files, paged as above
  (``files`` / ``nextPageToken``; listing needs no accepted rules, as on Kaggle);
* unknown dataset or competition → 404; injectable ``429`` with ``Retry-After`` and 5xx bursts;
* counters of API calls per method, authentication failures and redirects.

Request and response field names are those of the installed ``kagglesdk``
(``kagglesdk/datasets/types/dataset_api_service.py``,
``kagglesdk/competitions/types/competition_api_service.py``).

Port 7777 is fixed by kagglesdk, so only one emulator may run at a time on a machine: ``__enter__``
takes a process lock and an inter-process file lock (``/tmp/imgae_dx_kaggle_emulator.lock``),
waiting up to ``lock_timeout_s`` for another test run to finish with the port.

    with KaggleEmulator() as kaggle:
        kaggle.add_user("alice", "secret-key")
        kaggle.add_dataset("nih-chest-xrays/data", "data.zip")
        kaggle.add_competition("rsna-pneumonia-detection-challenge", "rsna.zip", accepted_users={"alice"})
        os.environ["KAGGLE_API_ENVIRONMENT"] = "TEST"
        KaggleStreamClient(credentials=KaggleCredentials.from_key("alice", "secret-key")).verify()
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import os
import tempfile
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from imgae_dx.testing.range_server import QuietHTTPServer, RangeServer

API_HOST = "127.0.0.1"
API_PORT = 7777
LOCK_PATH = Path(tempfile.gettempdir()) / "imgae_dx_kaggle_emulator.lock"
_PROCESS_LOCK = threading.Lock()
#: Kaggle's answer (HTTP 403) to a competition download before the user accepted the rules
RULES_NOT_ACCEPTED = "You must accept this competition's rules before you'll be able to download files."
#: (service, method) of the emulated API calls → the kind of archive each addresses
_METHODS = {
    ("datasets.DatasetApiService", "ListDatasetFiles"): "dataset",
    ("datasets.DatasetApiService", "DownloadDataset"): "dataset",
    ("datasets.DatasetApiService", "GetDataset"): "dataset",
    ("competitions.CompetitionApiService", "ListDataFiles"): "competition",
    ("competitions.CompetitionApiService", "DownloadDataFiles"): "competition",
}


@contextlib.contextmanager
def port_lock(timeout_s: float = 120.0) -> Iterator[None]:
    """Exclusive use of port 7777 on this machine (threads of this process and other processes).

    Tests that need "nothing listens on 7777" (the no-network case) hold this too.

    Raises:
        TimeoutError: another emulator kept the port for longer than ``timeout_s``.
    """
    if not _PROCESS_LOCK.acquire(timeout=timeout_s):
        raise TimeoutError(f"another Kaggle emulator in this process held port {API_PORT} for {timeout_s:.0f} s")
    try:
        try:
            import fcntl
        except ImportError:  # not POSIX: the in-process lock is all we have
            yield
            return
        fd = os.open(LOCK_PATH, os.O_RDONLY | os.O_CREAT, 0o666)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"another process held the Kaggle emulator lock {LOCK_PATH} (port {API_PORT}) "
                            f"for {timeout_s:.0f} s"
                        ) from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    finally:
        _PROCESS_LOCK.release()


@dataclass
class EmulatedArchive:
    """One downloadable archive (a dataset, or a competition's data), its storage server, and who
    may download it.

    ``ref`` is a dataset's ``OWNER/SLUG`` or a competition's ``SLUG``. ``allowed_users``: for a
    dataset, who may read it (others get 403 "Permission denied"); for a competition, who has
    accepted its rules (others' downloads get :data:`RULES_NOT_ACCEPTED`, 403); ``None`` = every
    authenticated user. ``storage`` is a :class:`~imgae_dx.testing.range_server.RangeServer` with
    ``signed=True``: tests expire its URLs with ``storage.rotate_key()``, change its version with
    ``storage.replace_file(...)``, inject faults with ``storage.set_faults(...)`` and read
    ``storage.counts()``.
    """

    kind: str  # "dataset" | "competition"
    ref: str
    archive: Path
    files: list[tuple[str, int]]
    storage: Any
    allowed_users: set[str] | None = None

    @property
    def slug(self) -> str:
        return self.ref.rsplit("/", 1)[-1]


@dataclass
class _Faults:
    lock: threading.Lock = field(default_factory=threading.Lock)
    queue: list[tuple[int, str | None]] = field(default_factory=list)  # (status, Retry-After)

    def pop(self) -> tuple[int, str | None] | None:
        with self.lock:
            return self.queue.pop(0) if self.queue else None


def _members(path: Path) -> list[tuple[str, int]]:
    with zipfile.ZipFile(path) as zf:
        return [(i.filename, i.file_size) for i in zf.infolist() if not i.is_dir()]


class KaggleEmulator:
    """Kaggle API emulator on 127.0.0.1:7777 plus one signed-URL storage server per archive.

    Args:
        signature_ttl_s: lifetime of the signed URLs DownloadDataset / DownloadDataFiles hand out.
        lock_timeout_s: how long ``__enter__`` waits for another emulator to free the port.

    Attributes:
        calls: ``Counter`` of API calls by method name (``"DownloadDataset"``, …), all answers.
        auth_failures: calls answered 401.
        redirects: DownloadDataset / DownloadDataFiles calls answered with a 302.
        last_auth: ``"basic:USER"`` / ``"bearer"`` / ``None`` of the latest call (no secrets).
    """

    def __init__(
        self,
        *,
        signature_ttl_s: float = 3600.0,
        lock_timeout_s: float = 120.0,
    ) -> None:
        self.signature_ttl_s = float(signature_ttl_s)
        self.lock_timeout_s = float(lock_timeout_s)
        self._users: dict[str, str] = {}
        self._tokens: dict[str, str] = {}  # token → username
        self._archives: dict[tuple[str, str], EmulatedArchive] = {}  # (kind, ref) → archive
        self._faults = _Faults()
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.auth_failures = 0
        self.redirects = 0
        self.last_auth: str | None = None
        self._server: QuietHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock_cm: contextlib.AbstractContextManager[None] | None = None

    # --------------------------------------------------------------------------- set-up
    @property
    def endpoint(self) -> str:
        """What kagglesdk calls with ``KAGGLE_API_ENVIRONMENT=TEST``."""
        return f"http://localhost:{API_PORT}"

    @staticmethod
    def env() -> dict[str, str]:
        """Environment variables that point kagglesdk at the emulator."""
        return {"KAGGLE_API_ENVIRONMENT": "TEST"}

    def add_user(self, username: str, key: str) -> None:
        """Accept basic auth ``username:key``."""
        with self._lock:
            self._users[username] = key

    def add_token(self, token: str, username: str = "token-user") -> None:
        """Accept ``Authorization: Bearer token`` (acting as ``username``)."""
        with self._lock:
            self._tokens[token] = username

    def add_dataset(
        self,
        ref: str,
        archive: str | os.PathLike[str],
        *,
        allowed_users: set[str] | None = None,
        faults: Any = None,
    ) -> EmulatedArchive:
        """Serve ``archive`` (a zip) as dataset ``ref`` = ``OWNER/SLUG`` from its own storage server.

        Args:
            allowed_users: users who may read it (others get 403); ``None`` = public.
            faults: :class:`~imgae_dx.testing.range_server.Faults` of the storage server.
        """
        owner, slug = ref.split("/")
        return self._add("dataset", f"{owner}/{slug}", archive, allowed_users, faults)

    def add_competition(
        self,
        slug: str,
        archive: str | os.PathLike[str],
        *,
        accepted_users: set[str] | None = None,
        faults: Any = None,
    ) -> EmulatedArchive:
        """Serve ``archive`` (a zip) as competition ``slug``'s whole-data download.

        Args:
            accepted_users: users who have accepted the rules (others' downloads get 403);
                ``None`` = every user has; :meth:`accept_rules` adds one later.
            faults: :class:`~imgae_dx.testing.range_server.Faults` of the storage server.
        """
        if not slug or "/" in slug:
            raise ValueError(f"a competition is named by its slug alone, not {slug!r}")
        accepted = None if accepted_users is None else set(accepted_users)
        return self._add("competition", slug, archive, accepted, faults)

    def _add(self, kind: str, ref: str, archive: str | os.PathLike[str], allowed: set[str] | None,
             faults: Any) -> EmulatedArchive:
        path = Path(archive).absolute()
        storage = RangeServer(path, signed=True, faults=faults,
                              url_path=f"/storage/{kind}s/{ref}/archive.zip")
        entry = EmulatedArchive(kind, ref, path, _members(path), storage, allowed)
        with self._lock:
            old = self._archives.get((kind, ref))
            self._archives[(kind, ref)] = entry
            running = self._server is not None
        if old is not None:
            old.storage.stop()
        if running:
            storage.start()
        return entry

    def dataset(self, ref: str) -> EmulatedArchive:
        """The dataset ``OWNER/SLUG`` added with :meth:`add_dataset`."""
        with self._lock:
            return self._archives[("dataset", ref)]

    def competition(self, slug: str) -> EmulatedArchive:
        """The competition ``SLUG`` added with :meth:`add_competition`."""
        with self._lock:
            return self._archives[("competition", slug)]

    def accept_rules(self, slug: str, username: str) -> None:
        """``username`` accepts competition ``slug``'s rules (what "I Understand and Accept" does)."""
        comp = self.competition(slug)
        with self._lock:
            if comp.allowed_users is not None:
                comp.allowed_users.add(username)

    def replace_archive(self, ref: str, archive: str | os.PathLike[str]) -> None:
        """Swap the bytes behind ``ref`` (a dataset's ``OWNER/SLUG`` or a competition's ``SLUG``):
        a new version, new ETag."""
        entry = self.dataset(ref) if "/" in ref else self.competition(ref)
        path = Path(archive).absolute()
        entry.files = _members(path)
        entry.archive = path
        entry.storage.replace_file(path)

    def inject(self, status: int, count: int = 1, retry_after: float | str | None = None) -> None:
        """The next ``count`` API calls answer ``status`` (e.g. 429 with ``Retry-After``, 503)."""
        ra = None if retry_after is None else str(retry_after)
        with self._faults.lock:
            self._faults.queue.extend([(int(status), ra)] * count)

    def clear_faults(self) -> None:
        """Drop injected API faults that have not fired yet."""
        with self._faults.lock:
            self._faults.queue.clear()

    def reset_counters(self) -> None:
        with self._lock:
            self.calls.clear()
            self.auth_failures = 0
            self.redirects = 0

    # ---------------------------------------------------------------------------- life
    def __enter__(self) -> KaggleEmulator:
        self._lock_cm = port_lock(self.lock_timeout_s)
        self._lock_cm.__enter__()
        try:
            with self._lock:
                storages = [d.storage for d in self._archives.values()]
            for st in storages:
                st.start()
            self._serve()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _serve(self) -> None:
        server = QuietHTTPServer((API_HOST, API_PORT), _make_handler(self))
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="kaggle-emulator", daemon=True)
        self._thread.start()

    def _close_api(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @contextlib.contextmanager
    def offline(self) -> Iterator[None]:
        """Nothing listens on port 7777 inside this block (the port stays reserved): "no network"."""
        if self._server is None:
            raise RuntimeError("the emulator is not running")
        self._close_api()
        try:
            yield
        finally:
            self._serve()

    def _stop(self) -> None:
        try:
            self._close_api()
            with self._lock:
                storages = [d.storage for d in self._archives.values()]
            for st in storages:
                st.stop()
        finally:
            if self._lock_cm is not None:
                cm, self._lock_cm = self._lock_cm, None
                cm.__exit__(None, None, None)

    # --------------------------------------------------------------------------- logic
    def _authenticate(self, header: str | None) -> str | None:
        """The user name behind an Authorization header, or ``None``."""
        if not header:
            self.last_auth = None
            return None
        scheme, _, value = header.partition(" ")
        with self._lock:
            if scheme.lower() == "basic":
                try:
                    user, _, key = base64.b64decode(value.strip()).decode().partition(":")
                except (ValueError, UnicodeDecodeError):
                    return None
                self.last_auth = f"basic:{user}"
                expected = self._users.get(user)
                if expected is not None and hmac.compare_digest(expected, key):
                    return user
                return None
            if scheme.lower() == "bearer":
                self.last_auth = "bearer"
                for token, user in self._tokens.items():
                    if hmac.compare_digest(token, value.strip()):
                        return user
                return None
        return None

    def _entry(self, kind: str, body: dict[str, Any]) -> EmulatedArchive | None:
        if kind == "dataset":
            ref = f"{body.get('ownerSlug', '')}/{body.get('datasetSlug', '')}"
        else:
            ref = str(body.get("competitionName") or "")
        with self._lock:
            return self._archives.get((kind, ref))

    def handle(
        self, service: str, method: str, body: dict[str, Any], auth: str | None
    ) -> tuple[int, dict[str, str], Any]:
        """One API call ``/api/v1/<service>/<method>`` → (status, headers, JSON body or None)."""
        with self._lock:
            self.calls[method] += 1
        fault = self._faults.pop()
        if fault is not None:
            status, ra = fault
            headers = {"Retry-After": ra} if ra is not None else {}
            msg = "Too many requests" if status == 429 else "Injected failure"
            return status, headers, {"code": status, "message": msg}
        user = self._authenticate(auth)
        if user is None:
            with self._lock:
                self.auth_failures += 1
            return 401, {"WWW-Authenticate": 'Basic realm="kaggle"'}, {
                "code": 401, "message": "Unauthenticated: missing or invalid credentials"}
        kind = _METHODS.get((service, method))
        if kind is None:
            return 404, {}, {"code": 404, "message": f"method {service}/{method} is not emulated"}
        entry = self._entry(kind, body)
        if entry is None:
            return 404, {}, {"code": 404, "message": f"{kind.capitalize()} not found"}
        with self._lock:
            allowed = entry.allowed_users is None or user in entry.allowed_users
        if kind == "dataset" and not allowed:
            return 403, {}, {"code": 403, "message": "Permission denied"}
        if method in ("ListDatasetFiles", "ListDataFiles"):
            return 200, {}, self._listing(entry, body)
        if method in ("DownloadDataset", "DownloadDataFiles"):
            if kind == "competition" and not allowed:
                return 403, {}, {"code": 403, "message": RULES_NOT_ACCEPTED}
            if body.get("fileName"):
                return 400, {}, {"code": 400, "message": "the emulator serves whole-archive downloads only"}
            url = entry.storage.signed_url(ttl_s=self.signature_ttl_s)
            with self._lock:
                self.redirects += 1
            return 302, {"Location": url}, None
        # GetDataset
        owner = entry.ref.split("/")[0]
        return 200, {}, {"ref": entry.ref, "ownerRef": owner, "title": entry.slug,
                         "totalBytes": entry.archive.stat().st_size}

    @staticmethod
    def _listing(entry: EmulatedArchive, body: dict[str, Any]) -> dict[str, Any]:
        """A page of ``entry``'s files: ``datasetFiles`` (dataset) or ``files`` (competition)."""
        size = int(body.get("pageSize") or 20)
        start = int(body.get("pageToken") or 0)
        page = entry.files[start:start + size]
        if entry.kind == "dataset":
            out: dict[str, Any] = {"datasetFiles": [
                {"ref": name, "name": name, "totalBytes": n, "datasetRef": entry.ref} for name, n in page
            ]}
        else:
            out = {"files": [{"ref": name, "name": name, "totalBytes": n} for name, n in page]}
        if start + size < len(entry.files):
            out["nextPageToken"] = str(start + size)
        return out


def _make_handler(emu: KaggleEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet; never logs headers
            return

        def _send(self, status: int, headers: dict[str, str], payload: Any) -> None:
            body = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            if payload is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            prefix = "/api/v1/"
            if not self.path.startswith(prefix) or self.path.count("/") != 4:
                self._send(404, {}, {"code": 404, "message": f"no route {self.path}"})
                return
            service, _, method = self.path[len(prefix):].partition("/")
            try:
                body = json.loads(raw) if raw else {}
            except json.JSONDecodeError:
                self._send(400, {}, {"code": 400, "message": "body is not JSON"})
                return
            if not isinstance(body, dict):
                self._send(400, {}, {"code": 400, "message": "body must be a JSON object"})
                return
            status, headers, payload = emu.handle(service, method, body, self.headers.get("Authorization"))
            self._send(status, headers, payload)

        def do_GET(self) -> None:  # noqa: N802
            self._send(405, {"Allow": "POST"}, {"code": 405, "message": "the API takes POST"})

    return Handler
