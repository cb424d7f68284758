"""Retry policy for remote reads: exponential backoff with full jitter, ``Retry-After`` honoured.

A read attempt signals a transient failure by raising :class:`TransientError` (connection reset,
timeout, short body, HTTP 5xx, HTTP 429). :meth:`RetryPolicy.call` retries it up to
``retries`` times, sleeping ``uniform(0, min(backoff_max_s, backoff_s * 2**attempt))`` between
tries (full jitter), or at least the server's ``Retry-After`` when one was given. Past the budget
it raises :class:`~imgae_dx.errors.SourceError` naming the source (URL already redacted by the
caller), the byte range and the last cause. Any other exception passes through untouched.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from imgae_dx.errors import SourceError

T = TypeVar("T")

#: Longest wait a ``Retry-After`` header can impose, whatever the server says (seconds).
MAX_RETRY_AFTER_S = 300.0


class TransientError(Exception):
    """A failure worth retrying. ``cause`` is a short human description (no secrets)."""

    def __init__(self, cause: str, retry_after: float | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.retry_after = retry_after


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date.

    Returns ``None`` when absent or unparsable; never negative; capped at ``MAX_RETRY_AFTER_S``.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        secs = float(value)
    except ValueError:
        try:
            dt = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if dt is None:
            return None
        secs = dt.timestamp() - (time.time() if now is None else now)
    if secs != secs:  # NaN
        return None
    return float(min(max(secs, 0.0), MAX_RETRY_AFTER_S))


class RetryPolicy:
    """Exponential backoff with full jitter.

    Args:
        retries: retries after the first try (total tries = retries + 1).
        backoff_s: base delay; the cap for try ``k`` (0-based) is ``backoff_s * 2**k``.
        backoff_max_s: upper bound of one jittered delay.
        seed: seeds the jitter RNG (reproducible tests); ``None`` = system entropy.
        sleep: the sleep function (tests may inject one).
    """

    def __init__(
        self,
        retries: int = 8,
        backoff_s: float = 0.25,
        backoff_max_s: float = 30.0,
        *,
        seed: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if retries < 0 or backoff_s < 0 or backoff_max_s < 0:
            raise ValueError("retries, backoff_s and backoff_max_s must be >= 0")
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.backoff_max_s = float(backoff_max_s)
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._sleep = sleep

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state.pop("_rng_lock", None)
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._rng_lock = threading.Lock()

    @classmethod
    def from_config(cls, http_cfg: object, *, seed: int | None = None) -> RetryPolicy:
        """Build from an :class:`imgae_dx.config.HttpConfig` (``retries``, ``backoff_s``, ``backoff_max_s``)."""
        return cls(
            retries=http_cfg.retries,  # type: ignore[attr-defined]
            backoff_s=http_cfg.backoff_s,  # type: ignore[attr-defined]
            backoff_max_s=http_cfg.backoff_max_s,  # type: ignore[attr-defined]
            seed=seed,
        )

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based).

        Full jitter: uniform in ``[0, min(backoff_max_s, backoff_s * 2**attempt)]``; a server's
        ``Retry-After`` is a floor (capped at ``MAX_RETRY_AFTER_S``).
        """
        cap = min(self.backoff_max_s, self.backoff_s * (2.0 ** min(attempt, 60)))
        with self._rng_lock:
            d = self._rng.uniform(0.0, cap) if cap > 0 else 0.0
        if retry_after is not None:
            d = max(d, min(retry_after, MAX_RETRY_AFTER_S))
        return d

    def call(
        self,
        fn: Callable[[], T],
        *,
        source: str,
        what: str,
        on_retry: Callable[[int, TransientError], None] | None = None,
    ) -> T:
        """Run ``fn`` and retry it on :class:`TransientError`.

        Args:
            fn: one attempt.
            source: secret-free name of the source (a redacted URL) for the final error.
            what: what was being read, e.g. ``"bytes 0-1023"``.
            on_retry: called with (attempt, error) before each retry's sleep (stats, logging).

        Raises:
            SourceError: after ``retries + 1`` failed tries, naming source, range and last cause.
        """
        attempt = 0
        while True:
            try:
                return fn()
            except TransientError as e:
                if attempt >= self.retries:
                    raise SourceError(
                        f"giving up on {source} ({what}) after {attempt + 1} tries; last error: "
                        f"{e.cause}. Check the network or the source, or raise data.http.retries."
                    ) from None
                if on_retry is not None:
                    on_retry(attempt, e)
                self._sleep(self.delay(attempt, e.retry_after))
                attempt += 1
