"""``KaggleStreamClient``: a Kaggle dataset or competition as one archive read by byte ranges.

Over 500 lines on purpose: one client of one API — target parsing, the SDK session, the retry and
error mapping of every call (401/403/404, the competition rules page, 429 with Retry-After) and the
signed-URL resolution share the same state and the same error contract.

Built on Kaggle's official SDK, ``kagglesdk`` (imported lazily). A :class:`KaggleTarget` names what
is downloaded: a dataset ``kaggle:OWNER/SLUG`` (``POST /v1/datasets.DatasetApiService/
DownloadDataset``) or a competition's whole data ``kaggle-competition:SLUG``
(``POST /v1/competitions.CompetitionApiService/DownloadDataFiles``). Both answer with a redirect
to a signed storage URL; the SDK follows it and hands back a *streamed* response. We keep its final
``.url`` (the signed URL), ``ETag`` and size and close it unread. The adapter we mount on the SDK's
session turns that redirected GET into a one-byte range probe, so resolving costs two small round
trips and no archive bytes (the size then comes from ``Content-Range``). That URL honours ``Range``
and expires: :meth:`KaggleStreamClient.open_reader` gives the range reader :meth:`resolve_archive`
as its ``resolve_url`` so a 403 re-resolves it (and a changed ETag is refused by the reader).

Errors are sorted for the user: rejected credentials (401; 403 for a dataset) →
:class:`CredentialsError`; a competition's rules not accepted (403) →
:class:`KaggleRulesNotAcceptedError` naming the rules page; no network →
:class:`KaggleNetworkError`; unknown dataset or competition (404) → :class:`KaggleNotFoundError`
(:class:`KaggleDatasetNotFoundError` / :class:`KaggleCompetitionNotFoundError`); 429 and 5xx are
retried (``Retry-After`` honoured) with :class:`RetryPolicy`. No message ever holds the key, the
token or a URL signature.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from imgae_dx.errors import CredentialsError, SourceError, UserError
from imgae_dx.streaming.credentials import KaggleCredentials, resolve_credentials
from imgae_dx.streaming.range_reader import (
    CONTENT_RANGE,
    HttpRangeReader,
    ResolvedURL,
    describe_exc,
    redact_url,
)
from imgae_dx.streaming.retry import RetryPolicy, TransientError, parse_retry_after

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_DATASET = "nih-chest-xrays/data"
EXAMPLE_COMPETITION = "rsna-pneumonia-detection-challenge"
DATASET_PREFIX = "kaggle:"
COMPETITION_PREFIX = "kaggle-competition:"
SDK_HINT = "install Kaggle's SDK: `pip install kagglesdk` (it is a dependency of imgae-dx)"
_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class KaggleNetworkError(SourceError):
    """Kaggle's API cannot be reached (no network, DNS, proxy, firewall)."""


class KaggleNotFoundError(SourceError):
    """The dataset or competition does not exist on Kaggle (or is not visible to these credentials)."""


class KaggleDatasetNotFoundError(KaggleNotFoundError):
    """The dataset does not exist on Kaggle (or is not visible to these credentials)."""


class KaggleCompetitionNotFoundError(KaggleNotFoundError):
    """The competition does not exist on Kaggle."""


class KaggleRulesNotAcceptedError(SourceError):
    """The user has not accepted the competition's rules (Kaggle answers 403 to its download)."""


@dataclass(frozen=True)
class KaggleTarget:
    """What a client downloads: a dataset (``owner`` + ``slug``) or a competition's data (``slug``)."""

    kind: Literal["dataset", "competition"]
    slug: str
    owner: str | None = None

    @property
    def ref(self) -> str:
        """``OWNER/SLUG`` of a dataset, ``SLUG`` of a competition."""
        return f"{self.owner}/{self.slug}" if self.kind == "dataset" else self.slug

    @property
    def identity(self) -> str:
        """The archive's secret-free identity: ``kaggle:OWNER/SLUG`` or ``kaggle-competition:SLUG``."""
        return (DATASET_PREFIX if self.kind == "dataset" else COMPETITION_PREFIX) + self.ref

    @property
    def page(self) -> str:
        """The target's page on kaggle.com."""
        return f"https://www.kaggle.com/{self.kind}s/{self.ref}"

    def __str__(self) -> str:
        return f"{self.kind} {self.ref}"


@dataclass(frozen=True)
class DatasetFile:
    """One file of a Kaggle dataset or competition as the API lists it (``size``: bytes, uncompressed)."""

    name: str
    size: int
    creation_date: str | None = None


def parse_dataset(spec: str) -> tuple[str, str]:
    """``"owner/slug"`` or ``"kaggle:owner/slug"`` → ``(owner, slug)``.

    Raises:
        UserError: anything else (names the value and the expected form).
    """
    s = spec.strip()
    if s.startswith("kaggle:"):
        s = s[len("kaggle:"):]
    parts = s.strip("/").split("/")
    if len(parts) != 2 or not all(parts) or any(c.isspace() for c in s):
        raise UserError(
            f"bad Kaggle dataset {spec!r}: expected OWNER/SLUG, e.g. {DEFAULT_DATASET} "
            f"(as in https://www.kaggle.com/datasets/{DEFAULT_DATASET})"
        )
    return parts[0], parts[1]


def parse_competition(spec: str) -> str:
    """``"slug"`` or ``"kaggle-competition:slug"`` → ``slug``.

    Raises:
        UserError: anything else (names the value and the expected form).
    """
    s = spec.strip()
    if s.startswith(COMPETITION_PREFIX):
        s = s[len(COMPETITION_PREFIX):]
    if not _SLUG.fullmatch(s):
        raise UserError(
            f"bad Kaggle competition {spec!r}: expected {COMPETITION_PREFIX}SLUG, e.g. "
            f"{COMPETITION_PREFIX}{EXAMPLE_COMPETITION} "
            f"(as in https://www.kaggle.com/competitions/{EXAMPLE_COMPETITION})"
        )
    return s


def parse_target(spec: str) -> KaggleTarget:
    """``kaggle-competition:SLUG`` → a competition; ``OWNER/SLUG`` or ``kaggle:OWNER/SLUG`` → a dataset.

    Raises:
        UserError: a malformed name (the message gives the expected form).
    """
    if spec.strip().startswith(COMPETITION_PREFIX):
        return KaggleTarget("competition", parse_competition(spec))
    try:
        owner, slug = parse_dataset(spec)
    except UserError:
        raise UserError(
            f"bad Kaggle dataset or competition {spec!r}: expected a dataset OWNER/SLUG (e.g. "
            f"{DEFAULT_DATASET}) or {COMPETITION_PREFIX}SLUG (e.g. {COMPETITION_PREFIX}{EXAMPLE_COMPETITION})"
        ) from None
    return KaggleTarget("dataset", slug, owner)


def _server_message(resp: Any) -> str | None:
    """The ``message`` of a Kaggle JSON error body (one line, ≤ 200 characters), if any."""
    try:
        if resp is None or "application/json" not in (resp.headers.get("Content-Type") or ""):
            return None
        msg = resp.json().get("message")
    except Exception:  # not JSON, body already released, …: no message
        return None
    if not isinstance(msg, str) or not msg.strip():
        return None
    msg = " ".join(msg.split())
    return msg if len(msg) <= 200 else msg[:199] + "…"


def _import_sdk() -> Any:
    try:
        import kagglesdk  # noqa: F401
        from kagglesdk import kaggle_env
        from kagglesdk.kaggle_client import KaggleClient
    except ImportError as e:
        raise UserError(f"cannot import kagglesdk ({e}); {SDK_HINT}") from None
    return KaggleClient, kaggle_env


class _SessionAdapter:
    """Factory of the requests ``HTTPAdapter`` mounted on kagglesdk's session.

    It applies a default timeout (kagglesdk sets none, so a silent network would hang forever),
    and turns the GET that follows the download redirect into a one-byte probe
    (``Range: bytes=0-0``): the storage answers ``206`` with ``Content-Range: bytes 0-0/SIZE``,
    so resolving transfers no archive bytes at all (API calls are POSTs and are left alone).
    """

    @staticmethod
    def make(timeout_s: float) -> Any:
        import requests.adapters

        class Adapter(requests.adapters.HTTPAdapter):
            def send(self, request: Any, **kw: Any) -> Any:  # type: ignore[override]
                if kw.get("timeout") is None:
                    kw["timeout"] = timeout_s
                if request.method == "GET" and "Range" not in request.headers:
                    request.headers["Range"] = "bytes=0-0"
                    request.headers["Accept-Encoding"] = "identity"
                return super().send(request, **kw)

        return Adapter()


def _archive_size(headers: Any, status: int) -> int | None:
    """Archive size from a probe response: the ``Content-Range`` total, else ``Content-Length``."""
    if status == 206:
        m = CONTENT_RANGE.match(headers.get("Content-Range") or "")
        return int(m.group(3)) if m and m.group(3) != "*" else None
    length = headers.get("Content-Length")
    return int(length) if status == 200 and length and length.isdigit() else None


class KaggleStreamClient:
    """Kaggle dataset or competition access for streaming: list files, resolve the archive's signed URL.

    Args:
        dataset: ``OWNER/SLUG`` (or ``kaggle:OWNER/SLUG``); default ``nih-chest-xrays/data`` when
            no ``competition`` is given.
        credentials: explicit credentials; default: resolved in the official order on first use.
        retry: policy for 429/5xx/connection failures of API calls (``Retry-After`` honoured).
        timeout_s: connect/read timeout of one API call.
        competition: ``SLUG`` (or ``kaggle-competition:SLUG``): stream the competition's whole-data
            download instead of a dataset (the user must have accepted its rules on kaggle.com).

    Attributes:
        target: the :class:`KaggleTarget`; ``identity`` its archive identity
            (``kaggle:OWNER/SLUG`` / ``kaggle-competition:SLUG``); ``dataset`` / ``owner`` its
            ``OWNER/SLUG`` / ``OWNER`` (``None`` for a competition), ``competition`` its slug
            (``None`` for a dataset), ``slug`` either's slug.

    The environment (``KAGGLE_API_ENVIRONMENT``) is chosen by kagglesdk: unset = api.kaggle.com,
    ``TEST`` = ``http://localhost:7777`` (the loopback emulator used by tests).
    """

    def __init__(
        self,
        dataset: str | None = None,
        credentials: KaggleCredentials | None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout_s: float = 30.0,
        competition: str | None = None,
    ) -> None:
        if competition is not None:
            if dataset is not None:
                raise ValueError("KaggleStreamClient takes a dataset or a competition, not both")
            self.target = KaggleTarget("competition", parse_competition(competition))
        else:
            owner, slug = parse_dataset(dataset or DEFAULT_DATASET)
            self.target = KaggleTarget("dataset", slug, owner)
        is_dataset = self.target.kind == "dataset"
        self.owner, self.slug = self.target.owner, self.target.slug
        self.dataset = self.target.ref if is_dataset else None
        self.competition = None if is_dataset else self.target.slug
        self.identity = self.target.identity
        self._credentials = credentials
        self.retry = retry or RetryPolicy(retries=5, backoff_s=0.5, backoff_max_s=30.0)
        self.timeout_s = float(timeout_s)
        self._client: Any = None
        self._lock = threading.Lock()
        self.api_calls = 0
        self.resolves = 0

    def __repr__(self) -> str:
        who = self._credentials.describe() if self._credentials else "credentials not resolved yet"
        return f"KaggleStreamClient({self.identity!r}, {who})"

    @classmethod
    def from_target(
        cls, spec: str, credentials: KaggleCredentials | None = None, **kw: Any
    ) -> KaggleStreamClient:
        """A client for ``spec`` as :func:`parse_target` reads it (dataset or competition)."""
        target = parse_target(spec)
        if target.kind == "competition":
            return cls(credentials=credentials, competition=target.slug, **kw)
        return cls(target.ref, credentials, **kw)

    # ----------------------------------------------------------------------------- plumbing
    @property
    def credentials(self) -> KaggleCredentials:
        """The credentials in use (resolved on first access)."""
        if self._credentials is None:
            self._credentials = resolve_credentials()
        return self._credentials

    @property
    def endpoint(self) -> str:
        """Base URL of the API kagglesdk talks to (secret-free)."""
        _, kaggle_env = _import_sdk()
        try:
            return str(kaggle_env.get_endpoint(kaggle_env.get_env()))
        except Exception as e:  # kagglesdk raises a bare Exception for a bad env value
            raise UserError(f"{e}; allowed KAGGLE_API_ENVIRONMENT values: PROD (default), TEST") from None

    def _kaggle(self) -> Any:
        """The kagglesdk client (built once; authenticates with exactly ``self.credentials``)."""
        with self._lock:
            if self._client is not None:
                return self._client
            KaggleClient, _ = _import_sdk()
            endpoint = self.endpoint  # validates KAGGLE_API_ENVIRONMENT first
            creds = self.credentials
            try:
                client = KaggleClient(**creds.client_kwargs())
            except Exception as e:
                raise UserError(f"cannot create the Kaggle client for {endpoint}: {type(e).__name__}") from None
            http = client.http_client()
            http.__enter__()  # opens the requests session and fills auth
            session = getattr(http, "_session", None)
            if session is not None:
                adapter = _SessionAdapter.make(self.timeout_s)
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                if creds.kind == "key":
                    # kagglesdk prefers a token found in the environment over username/password;
                    # use exactly the credentials we report.
                    session.auth = (creds.username, creds.secret.reveal())
            self._client = client
            return client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                try:
                    self._client.__exit__(None, None, None)
                finally:
                    self._client = None

    def __enter__(self) -> KaggleStreamClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _attempt(self, fn: Callable[[], T], what: str, state: dict[str, str]) -> Callable[[], T]:
        """Wrap one API call: classify failures into final errors or ``TransientError``."""
        import requests

        def once() -> T:
            with self._lock:
                self.api_calls += 1
            try:
                return fn()
            except requests.HTTPError as e:
                resp = e.response
                status = resp.status_code if resp is not None else 0
                redirected = resp is not None and bool(resp.history)
                message = _server_message(resp)
                state["kind"] = "http"
                if resp is not None:
                    try:
                        resp.close()
                    except Exception:
                        pass
                if status == 429:
                    ra = parse_retry_after(resp.headers.get("Retry-After")) if resp is not None else None
                    raise TransientError(f"HTTP 429 Too Many Requests from Kaggle ({what})", ra) from None
                if status >= 500 or status in (408, 425):
                    raise TransientError(f"HTTP {status} from Kaggle ({what})") from None
                if redirected and status in (403, 410):
                    # the storage refused the fresh signed URL (clock skew, race): resolve again
                    raise TransientError(f"storage answered HTTP {status} to a new signed URL") from None
                self._raise_final(status, what, resp, message)
                raise  # unreachable: _raise_final always raises
            except (requests.ConnectionError, requests.Timeout) as e:
                state["kind"] = "network"
                kind = "timed out" if isinstance(e, requests.Timeout) else "connection failed"
                raise TransientError(f"cannot reach Kaggle at {self.endpoint} ({kind})") from None
            except requests.RequestException as e:  # redirects loop, invalid URL, …: not retried
                raise SourceError(f"Kaggle request failed while trying to {what}: {describe_exc(e)}") from None

        return once

    def _raise_final(self, status: int, what: str, resp: Any, message: str | None) -> None:
        t = self.target
        who = self.credentials.describe()
        if status == 401:
            raise CredentialsError(
                f"Kaggle rejected the credentials (HTTP 401) while trying to {what}: {who}. "
                "The key or token is wrong, expired or revoked; create a new one at "
                "https://www.kaggle.com/settings → API and run `imgae-dx setup-kaggle --api-key-path kaggle.json`"
            )
        if status == 403 and t.kind == "competition":
            # Kaggle's words only where they say more than "accept the rules" (e.g. a private competition)
            says = f'; Kaggle says: "{message}"' if message and "rules" not in message.lower() else ""
            raise KaggleRulesNotAcceptedError(
                f"the rules of Kaggle competition {t.slug} are not accepted for {who} (HTTP 403 while "
                f"trying to {what}{says}). Open {t.page}/rules while logged in to Kaggle as that user and "
                'click "I Understand and Accept" (on a closed competition, "Late Submission" first), '
                "then run again"
            )
        if status == 403:
            raise CredentialsError(
                f"Kaggle refused access (HTTP 403) while trying to {what}: {who}. Sign in on "
                f"{t.page} and accept the dataset's terms, or check that the key has not been revoked"
            )
        if status == 404 and t.kind == "competition":
            raise KaggleCompetitionNotFoundError(
                f"Kaggle competition {t.slug} not found (HTTP 404) while trying to {what}; check the "
                f"name (SLUG as in https://www.kaggle.com/competitions/SLUG, e.g. {EXAMPLE_COMPETITION})"
            )
        if status == 404:
            raise KaggleDatasetNotFoundError(
                f"Kaggle dataset {t.ref} not found (HTTP 404) while trying to {what}; check the "
                f"name (OWNER/SLUG as in {t.page}) — the NIH one is {DEFAULT_DATASET}"
            )
        reason = getattr(resp, "reason", "") or ""
        raise SourceError(f"Kaggle answered HTTP {status} {reason} while trying to {what} ({self.identity})")

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        state: dict[str, str] = {}
        try:
            return self.retry.call(self._attempt(fn, what, state), source=f"Kaggle API {self.endpoint}", what=what)
        except SourceError as e:
            if state.get("kind") == "network" and not isinstance(e, KaggleNetworkError):
                raise KaggleNetworkError(
                    f"no network: cannot reach Kaggle's API at {self.endpoint} to {what} "
                    f"({self.retry.retries + 1} tries). Check the internet connection, proxy "
                    "(HTTPS_PROXY) or firewall"
                ) from None
            raise

    # ------------------------------------------------------------------------------- API
    def _list_page(self, page_size: int, token: str | None) -> tuple[list[Any], str | None]:
        """One page of the target's file listing: (kagglesdk file objects, next page token)."""
        t = self.target
        what = f"list the {t.kind}'s files"
        if t.kind == "competition":
            from kagglesdk.competitions.types.competition_api_service import ApiListDataFilesRequest

            creq = ApiListDataFilesRequest()
            creq.competition_name, creq.page_size = t.slug, page_size
            if token:
                creq.page_token = token
            cresp = self._call(
                what, lambda: self._kaggle().competitions.competition_api_client.list_data_files(creq)
            )
            return list(cresp.files), cresp.next_page_token
        from kagglesdk.datasets.types.dataset_api_service import ApiListDatasetFilesRequest

        req = ApiListDatasetFilesRequest()
        req.owner_slug, req.dataset_slug, req.page_size = t.owner, t.slug, page_size
        if token:
            req.page_token = token
        resp = self._call(
            what, lambda: self._kaggle().datasets.dataset_api_client.list_dataset_files(req)
        )
        if resp.error_message:
            raise SourceError(f"Kaggle could not list {t}: {resp.error_message}")
        return list(resp.dataset_files), resp.next_page_token

    def list_files(self, limit: int | None = None, page_size: int = 200) -> list[DatasetFile]:
        """The dataset's (or competition's) files, names and sizes, as Kaggle lists them, following pages.

        Args:
            limit: stop after this many files (the NIH listing has >112,000 entries).
            page_size: files per API call.
        """
        out: list[DatasetFile] = []
        token: str | None = None
        seen: set[str] = set()
        while True:
            files, token = self._list_page(page_size, token)
            for f in files:
                created = f.creation_date.isoformat() if f.creation_date else None
                out.append(DatasetFile(f.name or f.ref, int(f.total_bytes or 0), created))
                if limit is not None and len(out) >= limit:
                    return out
            if not token:
                return out
            if token in seen:
                raise SourceError(f"Kaggle's file listing of {self.target} repeats page token; stopping")
            seen.add(token)

    def _download(self) -> Any:
        """The SDK's whole-archive download call (a streamed response after the redirect)."""
        t = self.target
        if t.kind == "competition":
            from kagglesdk.competitions.types.competition_api_service import (
                ApiDownloadDataFilesRequest,
            )

            creq = ApiDownloadDataFilesRequest()
            creq.competition_name = t.slug
            return self._kaggle().competitions.competition_api_client.download_data_files(creq)
        from kagglesdk.datasets.types.dataset_api_service import ApiDownloadDatasetRequest

        req = ApiDownloadDatasetRequest()
        req.owner_slug, req.dataset_slug = t.owner, t.slug
        return self._kaggle().datasets.dataset_api_client.download_dataset(req)

    def resolve_archive(self) -> ResolvedURL:
        """Resolve the archive's signed URL without reading its body.

        Returns:
            ``ResolvedURL`` with the signed URL, its ETag and size (Content-Length).
        """
        resp = self._call(f"resolve the {self.target.kind} download", self._download)
        try:
            url = str(resp.url)
            headers = resp.headers
            status = int(resp.status_code)
            redirected = bool(resp.history)
        finally:
            resp.close()  # unread: the body is the whole archive
        if not redirected:
            raise SourceError(
                f"Kaggle did not redirect the download of {self.target} to a storage URL "
                f"(got {redact_url(url)}); cannot stream it by byte ranges"
            )
        size = _archive_size(headers, status)
        with self._lock:
            self.resolves += 1
        log.debug("resolved %s → %s (%s bytes)", self.identity, redact_url(url), size)
        return ResolvedURL(url=url, etag=headers.get("ETag"), size=size)

    def open_reader(self, http_cfg: Any = None) -> HttpRangeReader:
        """A range reader over the archive that re-resolves the signed URL when it expires.

        Args:
            http_cfg: an :class:`imgae_dx.config.HttpConfig` (timeouts, retries, pool); default one.
        """

        if http_cfg is None:
            from imgae_dx.config import HttpConfig

            http_cfg = HttpConfig()
        first = self.resolve_archive()
        return HttpRangeReader(
            first.url, identity=self.identity, http_cfg=http_cfg, resolve_url=self.resolve_archive
        )

    def verify(self) -> ResolvedURL:
        """Check credentials, network and the target by resolving the archive (no body is read).

        For a competition this also checks that the user has accepted its rules.

        Raises:
            CredentialsError: credentials missing or rejected (401; 403 for a dataset).
            KaggleRulesNotAcceptedError: (competition) its rules are not accepted (403).
            KaggleNetworkError: Kaggle unreachable.
            KaggleNotFoundError: the dataset or competition does not exist (404).
            SourceError: anything else (5xx past the retry budget, no redirect).
        """
        return self.resolve_archive()
