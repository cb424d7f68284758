"""ImageCache: RAM up to the budget, then a growing disk shard; counters; clear; speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from imgae_dx.data.cache import ImageCache


def _img(i: int, size: int = 16) -> np.ndarray:
    return np.full((size, size), i % 251, np.uint8) + np.eye(size, dtype=np.uint8)


def test_memory_mode_spills_to_disk_beyond_budget(tmp_path):
    c = ImageCache(16, budget_bytes=10 * 256, mode="memory", disk_dir=tmp_path, chunk_images=4)
    for i in range(25):
        assert c.put(i, _img(i))
    assert len(c) == 25
    assert c.nbytes <= 10 * 256  # RAM never above the budget
    assert c.stats()["disk_images"] == 15
    assert c.disk_path is not None and c.disk_path.parent == tmp_path
    assert c.disk_nbytes >= 15 * 256
    for i in range(25):
        np.testing.assert_array_equal(c.get(i), _img(i))
    assert c.hits == 25 and c.misses == 0
    assert c.get(999) is None and c.misses == 1
    assert 3 in c and 999 not in c


def test_ram_views_are_read_only():
    c = ImageCache(16, budget_bytes=1 << 20)
    c.put(1, _img(1))
    v = c.get(1)
    with pytest.raises(ValueError):
        v[0, 0] = 7


def test_disk_mode_keeps_no_ram(tmp_path):
    c = ImageCache(16, budget_bytes=1 << 20, mode="disk", disk_dir=tmp_path, chunk_images=3)
    for i in range(10):
        c.put(i, _img(i))
    assert c.nbytes == 0
    assert c.disk_nbytes >= 10 * 256
    for i in range(10):
        np.testing.assert_array_equal(c.get(i), _img(i))


def test_off_mode_stores_nothing():
    c = ImageCache(16, budget_bytes=1 << 20, mode="off")
    assert not c.put(1, _img(1))
    assert c.get(1) is None and c.misses == 1 and len(c) == 0 and c.nbytes == 0


def test_put_is_idempotent_and_checks_shape():
    c = ImageCache(16, budget_bytes=1 << 20)
    c.put(5, _img(5))
    c.put(5, _img(6))  # already present: first image kept
    np.testing.assert_array_equal(c.get(5), _img(5))
    with pytest.raises(ValueError, match="uint8 16×16"):
        c.put(6, np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="uint8 16×16"):
        c.put(6, np.zeros((16, 16), np.float32))
    with pytest.raises(ValueError, match="mode"):
        ImageCache(16, 0, mode="ram")  # type: ignore[arg-type]


def test_clear_frees_ram_and_deletes_shard(tmp_path):
    c = ImageCache(16, budget_bytes=4 * 256, disk_dir=tmp_path, chunk_images=2)
    for i in range(9):
        c.put(i, _img(i))
    shard = c.disk_path
    assert shard is not None and shard.exists()
    c.clear()
    assert len(c) == 0 and c.nbytes == 0 and c.disk_nbytes == 0
    assert not shard.exists()
    assert c.get(0) is None
    c.put(0, _img(0))  # still usable
    np.testing.assert_array_equal(c.get(0), _img(0))


def test_private_tmpdir_removed_on_clear():
    c = ImageCache(16, budget_bytes=0, mode="memory", chunk_images=2)
    c.put(1, _img(1))
    shard = c.disk_path
    assert shard is not None and shard.exists()
    c.clear()
    assert not shard.parent.exists()


def test_reads_over_ten_thousand_per_second(tmp_path):
    size, n = 128, 2000
    c = ImageCache(size, budget_bytes=(n // 2) * size * size, disk_dir=tmp_path)
    img = np.arange(size * size, dtype=np.uint8).reshape(size, size)
    for i in range(n):
        c.put(i, img)
    t = time.perf_counter()
    rounds = 3
    for _ in range(rounds):
        for i in range(n):
            c.get(i)
    rate = rounds * n / (time.perf_counter() - t)
    assert rate > 1e4, rate
