"""PersistentImageCache: outlives the object and the process, keyed, bounded, shared, distrustful."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from imgae_dx.config import ConfigError, DataConfig
from imgae_dx.data.dataset import StreamingNIHDataset, make_cache
from imgae_dx.data.datasets.nih import NIHIndex
from imgae_dx.data.persistent_cache import (
    SEGMENT_SUFFIX,
    STALE_TMP_S,
    CacheKey,
    PersistentImageCache,
)
from imgae_dx.streaming.sources import open_archive

S = 16
N = 500
KEY = CacheKey(identity="file:/data.zip", version='"etag-1"', size=123456, image_size=S, decoder="d1")
SRC_CRC = (np.arange(N, dtype=np.uint32) * 2654435761) & 0xFFFFFFFF


def _img(m: int, size: int = S) -> np.ndarray:
    """A deterministic image per member (what any process decoding member m would get)."""
    return ((np.arange(size * size, dtype=np.uint32).reshape(size, size) * (m + 3) + m) % 251).astype(np.uint8)


def _cache(root: Path, key: CacheKey = KEY, *, max_bytes: int = 1 << 30, ram_images: int = 64,
           crc: np.ndarray | None = SRC_CRC) -> PersistentImageCache:
    return PersistentImageCache(root, key, n_members=N, source_crc=crc, max_bytes=max_bytes,
                                ram_bytes=ram_images * key.image_size ** 2, quiet=True)


def _segments(root: Path, key: CacheKey = KEY) -> list[Path]:
    return sorted((root / key.folder).glob(f"seg-*{SEGMENT_SUFFIX}"))


def test_survives_the_object_and_reads_back_exactly(tmp_path):
    c = _cache(tmp_path)
    for m in range(150):
        assert c.put(m, _img(m))
    assert 7 in c and 149 in c and 150 not in c
    assert np.array_equal(c.get(149), _img(149))  # still buffered: served from RAM
    assert len(_segments(tmp_path)) == 2  # 2 × 64 published, 22 buffered
    c.close()
    assert len(_segments(tmp_path)) == 3
    again = _cache(tmp_path)
    assert len(again) == 150 and np.array_equal(again.members(), np.arange(150))
    for m in (0, 63, 64, 149):
        assert np.array_equal(again.get(m), _img(m))
    assert again.get(150) is None
    assert again.stats()["hits"] == 4 and again.stats()["misses"] == 1


def test_put_checks_shape_and_member(tmp_path):
    c = _cache(tmp_path)
    with pytest.raises(ValueError, match="uint8 16×16"):
        c.put(1, np.zeros((S, S + 1), np.uint8))
    with pytest.raises(ValueError, match="uint8 16×16"):
        c.put(1, np.zeros((S, S), np.float32))
    with pytest.raises(ValueError, match="not in the archive index"):
        c.put(N, _img(0))
    assert c.get(-1) is None and -1 not in c and "3" not in c


def test_other_keys_see_nothing(tmp_path):
    c = _cache(tmp_path)
    for m in range(10):
        c.put(m, _img(m))
    c.close()
    for other in (CacheKey(KEY.identity, '"etag-2"', KEY.size, S, KEY.decoder),
                  CacheKey(KEY.identity, KEY.version, KEY.size, S, "d2"),
                  CacheKey("https://other/data.zip", KEY.version, KEY.size, S, KEY.decoder)):
        assert len(_cache(tmp_path, other)) == 0
    assert len(_cache(tmp_path)) == 10


def test_foreign_segment_is_rejected_and_deleted(tmp_path):
    other = CacheKey(KEY.identity, '"etag-2"', KEY.size, S, KEY.decoder)
    c = _cache(tmp_path, other)
    for m in range(10):
        c.put(m, _img(m) ^ 0xFF)
    c.close()
    (tmp_path / KEY.folder).mkdir()
    intruder = tmp_path / KEY.folder / _segments(tmp_path, other)[0].name
    shutil.copy(_segments(tmp_path, other)[0], intruder)
    mine = _cache(tmp_path)
    assert len(mine) == 0 and not intruder.exists() and mine.stats()["rejected"] == 1


def test_source_crc_mismatch_is_foreign(tmp_path):
    c = _cache(tmp_path)
    for m in range(10):
        c.put(m, _img(m))
    c.close()
    changed = SRC_CRC.copy()
    changed[3] ^= 1  # member 3 now has other bytes in the archive
    assert len(_cache(tmp_path, crc=changed)) == 0
    assert _segments(tmp_path) == []  # deleted: rebuilt when streamed again


@pytest.mark.parametrize("damage", ["payload", "header", "truncated", "garbage"])
def test_corrupt_file_is_detected_and_rebuilt(tmp_path, damage):
    c = _cache(tmp_path)
    for m in range(64):
        c.put(m, _img(m))  # one full segment
    c.close()
    seg = _segments(tmp_path)[0]
    data = bytearray(seg.read_bytes())
    if damage == "payload":
        data[-5 * S * S] ^= 0x10  # inside image 59
    elif damage == "header":
        data[70] ^= 0x01  # a member id
    elif damage == "truncated":
        del data[-100:]
    else:
        data[:] = os.urandom(len(data))
    seg.write_bytes(bytes(data))
    again = _cache(tmp_path)
    if damage == "payload":  # found on read: every image is checked against its CRC-32
        assert len(again) == 64
        assert np.array_equal(again.get(58), _img(58))
        assert again.get(59) is None
        assert not seg.exists() and again.stats()["rejected"] == 1
        assert 59 not in again and len(again) == 63  # the others, verified, are buffered again
        assert np.array_equal(again.get(60), _img(60))
        again.put(59, _img(59))
    else:
        assert len(again) == 0 and not seg.exists() and again.stats()["rejected"] == 1
    for m in range(64):  # streamed and decoded again: the cache is rebuilt
        again.put(m, _img(m))
    again.close()
    rebuilt = _cache(tmp_path)
    assert len(rebuilt) == 64 and all(np.array_equal(rebuilt.get(m), _img(m)) for m in range(64))


def test_stale_temp_files_are_swept(tmp_path):
    folder = tmp_path / KEY.folder
    folder.mkdir()
    old = folder / ".seg-1-2-3.imgs.abc.tmp"
    new = folder / ".seg-4-5-6.imgs.def.tmp"
    for p in (old, new):
        p.write_bytes(b"half a segment")
    past = time.time() - STALE_TMP_S - 10
    os.utime(old, (past, past))
    _cache(tmp_path)
    assert not old.exists() and new.exists()  # a live writer's temp file is left alone


def test_eviction_rule(tmp_path):
    seg = 64 * S * S + 56 + 16 * 64 + 4  # one full segment on disk
    bound = 5 * seg
    a = _cache(tmp_path, max_bytes=bound)
    for m in range(3 * 64):
        a.put(m, _img(m))
    a.close()
    a_segs = _segments(tmp_path)
    for i, p in enumerate(a_segs):  # make their ages explicit: oldest first
        os.utime(p, (1000 + i, 1000 + i))
    other = CacheKey(KEY.identity, '"etag-2"', KEY.size, S, KEY.decoder)
    b = _cache(tmp_path, other, max_bytes=bound)
    for m in range(4 * 64):  # 3 segments fit beside A's only after evicting A's 2 oldest
        assert b.put(m, _img(m))
    b.flush()
    assert [p.exists() for p in a_segs] == [False, False, True]
    for m in range(4 * 64, 6 * 64):  # B evicts A's last one, then stops: its own stay
        b.put(m, _img(m))
    b.flush()
    assert b.full and not b.put(499, _img(499))
    assert _segments(tmp_path) == []
    kept = _cache(tmp_path, other, max_bytes=bound)
    assert len(kept) == 5 * 64 and np.array_equal(kept.members(), np.arange(5 * 64))
    total = sum(p.stat().st_size for p in tmp_path.rglob(f"seg-*{SEGMENT_SUFFIX}"))
    assert total <= bound


def test_a_failed_write_stops_caching_but_not_reading(tmp_path, monkeypatch):
    c = _cache(tmp_path)
    for m in range(64):
        c.put(m, _img(m))
    import imgae_dx.data.persistent_cache as pc

    def no_space(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pc, "atomic_open", no_space)
    for m in range(64, 128):
        c.put(m, _img(m))  # the 64th put tries to publish
    assert c.full and not c.put(200, _img(200)) and c.nbytes == 0
    assert np.array_equal(c.get(5), _img(5)) and c.get(100) is None


def _writer(root: str, lo: int, hi: int, seed: int) -> None:
    c = _cache(Path(root), ram_images=16)
    rng = np.random.default_rng(seed)
    for m in rng.permutation(np.arange(lo, hi)).tolist():
        c.put(m, _img(m))
    c.close()


def _reader(root: str, until: float, out: mp.Queue) -> None:
    c = _cache(Path(root), ram_images=16)
    seen = bad = 0
    while time.monotonic() < until:
        c.refresh()
        for m in c.members().tolist():
            img = c.get(m)
            if img is not None:
                seen += 1
                bad += not np.array_equal(img, _img(m))
    out.put((seen, bad, c.stats()["rejected"]))


def test_two_processes_write_one_reads_concurrently(tmp_path):
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), 0, 300, 1)),
             ctx.Process(target=_writer, args=(str(tmp_path), 200, 500, 2)),
             ctx.Process(target=_reader, args=(str(tmp_path), time.monotonic() + 3.0, q))]
    for p in procs:
        p.start()
    seen, bad, rejected = q.get(timeout=120)
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert bad == 0 and rejected == 0  # never a torn or mixed image
    assert seen > 0
    c = _cache(tmp_path)
    assert len(c) == N and all(np.array_equal(c.get(m), _img(m)) for m in range(N))
    assert not list((tmp_path / KEY.folder).glob(".*.tmp"))


# ------------------------------------------------------------------------------ with the dataset
def _cfg(tmp_path: Path, **kw) -> DataConfig:
    base = dict(image_size=32, view="all", decode_workers=2, cache="persistent",
                cache_dir=str(tmp_path / "images"), index_cache_dir=str(tmp_path / "idx"),
                max_request_mb=1.0, shuffle_buffer=16)
    return DataConfig(**{**base, **kw})


def _stream_stage(path: Path, cfg: DataConfig) -> tuple[list[int], np.ndarray, dict, int]:
    """A fresh archive, index, cache and dataset (as a new process builds them); one pass."""
    archive = open_archive(str(path), cfg)
    try:
        nih = NIHIndex.from_archive(archive)
        cache = make_cache(cfg, archive=archive)
        ds = StreamingNIHDataset(archive, nih, "images_002", "train", cfg, seed=3, batch_size=4,
                                 cache=cache, drop_last=False,
                                 members=archive.index.names_with_prefix("images_002/images/"))
        before = archive.reader.stats.snapshot()["bytes_fetched"]
        members, images = [], []
        for b in ds.batches():
            members += b.members.tolist()
            images.append(b.images.numpy())
        fetched = archive.reader.stats.snapshot()["bytes_fetched"] - before
        cache.close()
        return members, np.concatenate(images), ds.stats(), fetched
    finally:
        archive.close()


def test_second_process_reads_the_stage_without_fetching(small_archive, tmp_path):
    cfg = _cfg(tmp_path)
    m1, x1, st1, fetched1 = _stream_stage(small_archive, cfg)
    assert fetched1 > 0 and st1["cache_misses"] == len(m1) == 40
    m2, x2, st2, fetched2 = _stream_stage(small_archive, cfg)
    assert fetched2 == 0 and st2["bytes_fetched"] == 0  # not one byte read from the source
    assert st2["cache_hits"] == 40
    assert m2 == m1 and np.array_equal(x2, x1)  # same order, same pixels
    # a corrupted cache file is not trusted: found, deleted, and the stage streamed again
    seg = next((tmp_path / "images").rglob(f"seg-*{SEGMENT_SUFFIX}"))
    data = bytearray(seg.read_bytes())
    data[-1] ^= 0xFF
    seg.write_bytes(bytes(data))
    m3, x3, st3, fetched3 = _stream_stage(small_archive, cfg)
    assert m3 == m1 and np.array_equal(x3, x1) and fetched3 > 0
    m4, x4, _, fetched4 = _stream_stage(small_archive, cfg)  # rebuilt by that pass
    assert fetched4 == 0 and m4 == m1 and np.array_equal(x4, x1)


def test_make_cache_persistent_needs_the_archive(tmp_path):
    with pytest.raises(ConfigError, match="no archive to key the cache by"):
        make_cache(_cfg(tmp_path))
