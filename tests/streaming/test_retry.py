"""RetryPolicy: full-jitter backoff, Retry-After, budget exhaustion."""

from __future__ import annotations

import email.utils
import time

import pytest

from imgae_dx.config import HttpConfig
from imgae_dx.errors import SourceError
from imgae_dx.streaming.retry import (
    MAX_RETRY_AFTER_S,
    RetryPolicy,
    TransientError,
    parse_retry_after,
)


def test_delay_bounds_and_seeded_jitter() -> None:
    p = RetryPolicy(retries=5, backoff_s=0.5, backoff_max_s=3.0, seed=1)
    q = RetryPolicy(retries=5, backoff_s=0.5, backoff_max_s=3.0, seed=1)
    for attempt in range(10):
        d = p.delay(attempt)
        assert 0.0 <= d <= min(3.0, 0.5 * 2**attempt)
        assert d == q.delay(attempt)
    ds = [RetryPolicy(backoff_s=1, backoff_max_s=100, seed=s).delay(3) for s in range(50)]
    assert len(set(ds)) > 40 and max(ds) <= 8.0  # full jitter: spread over [0, 8]


def test_retry_after_is_a_floor_and_capped() -> None:
    p = RetryPolicy(backoff_s=0.01, backoff_max_s=0.02, seed=0)
    assert p.delay(0, retry_after=2.0) == 2.0
    assert p.delay(0, retry_after=10_000) == MAX_RETRY_AFTER_S


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-4") == 0.0
    now = time.time()
    date = email.utils.formatdate(now + 20, usegmt=True)
    assert 18 <= parse_retry_after(date, now=now) <= 21
    assert parse_retry_after(email.utils.formatdate(now - 100, usegmt=True), now=now) == 0.0


def test_call_retries_then_succeeds_and_counts() -> None:
    slept: list[float] = []
    p = RetryPolicy(retries=3, backoff_s=0.1, backoff_max_s=1, seed=0, sleep=slept.append)
    calls = {"n": 0}
    seen: list[int] = []

    def fn() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise TransientError("HTTP 503", retry_after=0.7 if calls["n"] == 2 else None)
        return "ok"

    assert p.call(fn, source="http://h/x", what="bytes 0-9", on_retry=lambda a, e: seen.append(a)) == "ok"
    assert seen == [0, 1] and len(slept) == 2 and slept[1] >= 0.7


def test_budget_exhausted_names_source_range_and_cause() -> None:
    p = RetryPolicy(retries=2, backoff_s=0, backoff_max_s=1, sleep=lambda s: None)
    n = {"k": 0}

    def fn() -> None:
        n["k"] += 1
        raise TransientError("connection reset")

    with pytest.raises(SourceError) as ei:
        p.call(fn, source="https://host/data.zip", what="bytes 10-19")
    msg = str(ei.value)
    assert n["k"] == 3
    assert "https://host/data.zip" in msg and "bytes 10-19" in msg and "connection reset" in msg
    assert "3 tries" in msg


def test_other_exceptions_pass_through_and_from_config() -> None:
    p = RetryPolicy.from_config(HttpConfig(retries=1, backoff_s=0.1, backoff_max_s=0.2))
    assert (p.retries, p.backoff_s, p.backoff_max_s) == (1, 0.1, 0.2)

    def boom() -> None:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        p.call(boom, source="s", what="w")
