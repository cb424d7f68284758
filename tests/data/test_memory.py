"""MemoryManager: consumers vs budget, warning naming the largest, stage cleanup, report."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from imgae_dx.data.cache import ImageCache
from imgae_dx.data.memory import MB, MemoryBudgetWarning, MemoryManager, peak_rss_bytes, rss_bytes


def test_within_budget_no_warning():
    m = MemoryManager(10)
    m.register("a", lambda: 1 * MB)
    m.register("b", lambda: 2 * MB)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert m.check()
    assert m.tracked_bytes() == 3 * MB


def test_over_budget_warns_naming_largest(caplog):
    m = MemoryManager(4)
    m.register("shuffle_buffer", lambda: 1 * MB)
    m.register("cache", lambda: 5 * MB)
    with pytest.warns(MemoryBudgetWarning, match=r"largest consumer: cache \(5\.0 MB\)"):
        assert not m.check()
    assert "over the 4 MB budget" in caplog.text
    assert m.warnings_issued == 1


def test_rss_limit_checked():
    m = MemoryManager(1000, rss_limit_mb=1)  # any Python process is above 1 MB
    with pytest.warns(MemoryBudgetWarning, match="process RSS"):
        assert not m.check()


def test_failing_consumer_counts_zero():
    m = MemoryManager(1)
    m.register("broken", lambda: 1 // 0)
    assert m.usage() == {"broken": 0}
    assert m.check()


def test_cleanup_stage_frees_only_that_stage():
    freed = []
    m = MemoryManager(100)
    m.register("cache:images_001", lambda: 3 * MB, stage="images_001", free=lambda: freed.append(1))
    m.register("cache:images_002", lambda: 2 * MB, stage="images_002", free=lambda: freed.append(2))
    m.register("global", lambda: 1 * MB)
    assert m.cleanup_stage("images_001") == 3 * MB
    assert freed == [1]
    assert sorted(m.consumers) == ["cache:images_002", "global"]
    assert m.cleanup_stage("nothing") == 0


def test_cleanup_returns_cache_memory_to_os():
    size = 128
    c = ImageCache(size, budget_bytes=200 * MB)
    m = MemoryManager(512)
    m.register("cache", lambda: c.nbytes, stage="s1", free=c.clear)
    img = np.full((size, size), 7, np.uint8)
    base = rss_bytes()
    for i in range(6000):  # ~98 MB
        c.put(i, img)
    grown = rss_bytes()
    assert grown - base > 60 * MB
    m.cleanup_stage("s1")
    assert c.nbytes == 0
    assert rss_bytes() - base < 20 * MB


def test_report_fields():
    m = MemoryManager(64)
    m.register("x", lambda: 2 * MB)
    r = m.report()
    assert r["budget_mb"] == 64.0 and r["tracked_mb"] == 2.0
    assert r["consumers_mb"] == {"x": 2.0}
    assert r["rss_mb"] > 0 and r["peak_rss_mb"] >= r["rss_mb"] - 1
    assert peak_rss_bytes() >= rss_bytes() // 2
    with pytest.raises(ValueError):
        MemoryManager(0)


def test_heap_fragmentation_limit_is_idempotent():
    import sys

    from imgae_dx.data.memory import limit_heap_fragmentation

    first = limit_heap_fragmentation()
    assert limit_heap_fragmentation() == first
    if sys.platform.startswith("linux"):
        assert first
