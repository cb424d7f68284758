"""StreamingNIHDataset on a real sample archive: order, sharding, resume, cache, faults, memory."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from imgae_dx.config import DataConfig, HttpConfig
from imgae_dx.data.cache import ImageCache
from imgae_dx.data.dataset import (
    CRC_REREADS,
    StreamingNIHDataset,
    make_cache,
    pipeline_budget,
    shuffle_buffer_order,
)
from imgae_dx.data.memory import MemoryManager
from imgae_dx.data.nih_index import NIHIndex
from imgae_dx.errors import CheckpointError
from imgae_dx.streaming.sources import open_archive

STAGE = "images_001"


def _cfg(**kw) -> DataConfig:
    base = dict(image_size=64, view="all", max_request_mb=0.25, shuffle_buffer=8, decode_workers=2,
                requests_in_flight=2, memory_budget_mb=64, http=HttpConfig(backoff_s=0.01, backoff_max_s=0.05))
    base.update(kw)
    return DataConfig(**base)


@pytest.fixture(scope="module")
def opened(small_archive):
    cfg = _cfg()
    archive = open_archive(str(small_archive), cfg)
    nih = NIHIndex.from_archive(archive)
    yield archive, nih
    archive.close()


def _stage_members(archive, stage: str = STAGE) -> np.ndarray:
    """Every image of a stage: splits of the 40-image sample stages are too small to shard."""
    return archive.index.names_with_prefix(f"{stage}/images/")


def _ds(opened, split="train", *, cfg=None, stage=STAGE, **kw) -> StreamingNIHDataset:
    """A dataset over all images of the stage (``split=None``) or over a real split."""
    archive, nih = opened
    kw.setdefault("seed", 7)
    kw.setdefault("batch_size", 2)
    if split is None or split == "train":
        kw.setdefault("members", _stage_members(archive, stage))
        split = "train"
    return StreamingNIHDataset(archive, nih, stage, split, cfg or _cfg(), **kw)


def _members(batches) -> list[int]:
    return [int(m) for b in batches for m in b.members]


def _run(ds) -> tuple[list[int], torch.Tensor]:
    bs = list(ds.batches())
    imgs = torch.cat([b.images for b in bs]) if bs else torch.empty(0)
    return _members(bs), imgs


# ----------------------------------------------------------------------------- order
def test_shuffle_buffer_order_is_bounded_permutation():
    rng = np.random.default_rng(0)
    out = shuffle_buffer_order(500, 16, rng)
    assert sorted(out.tolist()) == list(range(500))
    assert all(out[p] <= max(2 * p + 1, p + 16) for p in range(500))
    assert out.tolist() != list(range(500))


def test_batches_shapes_labels_and_ids(opened):
    ds = _ds(opened, "test")
    archive, nih = opened
    bs = list(ds.batches())
    assert len(bs) == ds.num_batches() > 0
    b = bs[0]
    assert b.images.shape == (2, 1, 64, 64) and b.images.dtype == torch.float32
    assert 0.0 <= float(b.images.min()) and float(b.images.max()) <= 1.0 and float(b.images.std()) > 0
    for m, iid, lab in zip(b.members.tolist(), b.image_ids, b.labels.tolist(), strict=True):
        rec = nih.record(m)
        assert rec.image == iid and rec.label == lab
        assert archive.index.name(m).endswith(iid)
    # per-sample iteration gives the same order and pixels
    samples = list(ds)
    assert [s["member"] for s in samples] == _members(bs)
    assert torch.equal(samples[0]["image"], b.images[0])


def test_order_independent_of_decode_workers_and_matches_plan(opened):
    m1, x1 = _run(_ds(opened, cfg=_cfg(decode_workers=1, requests_in_flight=1)))
    m3, x3 = _run(_ds(opened, cfg=_cfg(decode_workers=3, requests_in_flight=5)))
    assert m1 == m3 and torch.equal(x1, x3)
    assert m1 == _ds(opened).order().tolist()
    assert len(set(m1)) == len(m1)


def test_epochs_differ_and_repeat(opened):
    ds = _ds(opened, drop_last=False)
    e0 = _run(ds)[0]
    ds.set_epoch(1)
    e1 = _run(ds)[0]
    ds.set_epoch(0)
    assert _run(ds)[0] == e0
    assert e0 != e1 and sorted(e0) == sorted(e1) == sorted(ds.members.tolist())


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_disjoint_with_equal_batch_counts(opened, world):
    cfg = _cfg(max_request_mb=0.1)
    runs = [_run(_ds(opened, cfg=cfg, rank=r, world_size=world))[0] for r in range(world)]
    counts = [_ds(opened, cfg=cfg, rank=r, world_size=world).num_batches() for r in range(world)]
    assert len(set(counts)) == 1 and counts[0] > 0
    assert all(len(r) == counts[0] * 2 for r in runs)
    flat = [m for r in runs for m in r]
    assert len(flat) == len(set(flat))  # disjoint
    assert set(flat) <= set(_ds(opened).members.tolist())


# ----------------------------------------------------------------------------- resume
def test_resume_mid_epoch_with_other_decode_workers(opened):
    cfg1 = _cfg(decode_workers=1)
    full, full_x = _run(_ds(opened, cfg=cfg1, batch_size=2))
    assert len(full) >= 8
    ds = _ds(opened, cfg=cfg1)
    ds.set_epoch(0)
    it = ds.batches()
    head = [next(it) for _ in range(3)]
    state = ds.state_dict()
    assert state["position"] == 6
    it.close()
    resumed = _ds(opened, cfg=_cfg(decode_workers=3))
    resumed.load_state_dict(state)
    resumed.set_epoch(state["epoch"])
    tail = list(resumed.batches())
    got = _members(head) + _members(tail)
    assert got == full and len(set(got)) == len(got)
    assert torch.equal(torch.cat([b.images for b in head + tail]), full_x)
    assert resumed.stats()["images"] == len(full) - 6
    # the consumed prefix is not fetched again (beyond what shares a request with the rest)
    assert resumed.stats()["cache_misses"] == len(full) - 6


def test_resume_refuses_other_plan(opened):
    state = _ds(opened).state_dict()
    with pytest.raises(CheckpointError, match="world"):
        _ds(opened, world_size=2).load_state_dict(state)
    with pytest.raises(CheckpointError, match="seed"):
        _ds(opened, seed=8).load_state_dict(state)
    with pytest.raises(CheckpointError, match="split"):
        _ds(opened, "val").load_state_dict(state)
    # only the order matters: another image size or decode thread count is fine
    _ds(opened, cfg=_cfg(image_size=32, decode_workers=4)).load_state_dict(state)


def test_finished_epoch_state_resumes_to_nothing(opened):
    ds = _ds(opened)
    n = len(_run(ds)[0])
    state = ds.state_dict()
    assert state["position"] == n
    again = _ds(opened)
    again.load_state_dict(state)
    assert list(again.batches()) == []
    assert len(_run(again)[0]) == n  # iterating once more replays the epoch


# ----------------------------------------------------------------------------- cache
def test_second_epoch_reads_cache_without_fetching(opened):
    cfg = _cfg()
    cache = ImageCache(64, 1 << 20)
    ds = _ds(opened, cfg=cfg, cache=cache, drop_last=False)
    e0 = _run(ds)
    s0 = ds.stats()
    assert s0["bytes_fetched"] > 0 and s0["cache_hits"] == 0
    ds.set_epoch(1)
    e1 = _run(ds)
    s1 = ds.stats()
    assert s1["bytes_fetched"] == s0["bytes_fetched"] and s1["requests"] == s0["requests"]
    assert s1["cache_hits"] == len(e1[0]) == len(e0[0])
    # same pixels whichever way they were obtained
    by_member0 = {m: e0[1][i] for i, m in enumerate(e0[0])}
    for i, m in enumerate(e1[0]):
        assert torch.equal(e1[1][i], by_member0[m])


def test_drop_last_epochs_fetch_only_unseen_members(opened):
    cache = ImageCache(64, 1 << 20, mode="disk")
    ds = _ds(opened, cache=cache, batch_size=3)
    e0 = set(_run(ds)[0])
    b0 = ds.stats()["cache_misses"]
    ds.set_epoch(1)
    e1 = set(_run(ds)[0])
    assert ds.stats()["cache_misses"] - b0 == len(e1 - e0)
    assert cache.nbytes == 0 and cache.disk_nbytes > 0


# ----------------------------------------------------------------------------- corruption
def _corrupt_copy(src: Path, dst_dir: Path, truncated: list[str], bad_crc: list[str]) -> Path:
    """Rewrite the archive with some PNGs truncated (valid zip CRC) and some bytes flipped (bad CRC)."""
    dst = dst_dir / "data.zip"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename in truncated:
                data = data[: len(data) // 2]
            zout.writestr(info, data, compress_type=zipfile.ZIP_STORED)
    raw = bytearray(dst.read_bytes())
    with zipfile.ZipFile(dst) as z:
        for name in bad_crc:
            info = z.getinfo(name)
            data_start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
            raw[data_start + info.compress_size // 2] ^= 0xFF
    dst.write_bytes(bytes(raw))
    return dst


@pytest.mark.parametrize("world", [1, 2])
def test_corrupt_members_skipped_counted_counts_equal(opened, small_archive, tmp_path, world):
    archive, nih = opened
    cfg = _cfg(max_request_mb=0.1)
    order = _ds(opened, cfg=cfg, batch_size=2).order().tolist()
    trunc = [archive.index.name(m) for m in order[1:3]]
    crc = [archive.index.name(m) for m in order[4:5]]
    bad_path = _corrupt_copy(Path(small_archive), tmp_path, trunc, crc)
    bad = open_archive(str(bad_path), cfg)
    try:
        bad_nih = NIHIndex.from_archive(bad)
        bad_ids = {bad.index.find(n) for n in trunc + crc}
        runs, stats, counts = [], [], []
        for r in range(world):
            ds = StreamingNIHDataset(bad, bad_nih, STAGE, "train", cfg, seed=7, batch_size=2,
                                     rank=r, world_size=world, members=_stage_members(bad))
            runs.append(_run(ds)[0])
            stats.append(ds.stats())
            counts.append(ds.num_batches())
        assert len(set(counts)) == 1 and all(len(r) == counts[0] * 2 for r in runs)
        planned = {m for r in range(world) for m in _plan_order(bad, bad_nih, cfg, r, world)}
        assert sum(s["skipped"] for s in stats) == len(bad_ids & planned) > 0
        assert not bad_ids & {m for r in runs for m in r}  # stand-ins are good images
        crc_id = bad.index.find(crc[0])
        assert sum(s["crc_rereads"] for s in stats) == (CRC_REREADS if crc_id in planned else 0)
        # deterministic: a second pass gives the very same stream
        again = StreamingNIHDataset(bad, bad_nih, STAGE, "train", cfg, seed=7, batch_size=2,
                                    rank=0, world_size=world, members=_stage_members(bad))
        assert _run(again)[0] == runs[0]
    finally:
        bad.close()


def _plan_order(archive, nih, cfg, rank, world):
    ds = StreamingNIHDataset(archive, nih, STAGE, "train", cfg, seed=7, batch_size=2, rank=rank,
                             world_size=world, members=_stage_members(archive))
    return ds.order().tolist()


# ----------------------------------------------------------------------------- memory
def test_memory_bounded_and_registered(opened):
    cfg = _cfg(memory_budget_mb=8, max_request_mb=0.25, requests_in_flight=2, shuffle_buffer=8,
               cache="memory")
    mm = MemoryManager(cfg.memory_budget_mb)
    cache = make_cache(cfg)
    assert cache is not None and cache.budget_bytes == pipeline_budget(cfg)["cache"]
    ds = _ds(opened, cfg=cfg, cache=cache, memory=mm, batch_size=1)
    peak_window = 0
    for _b in ds.batches():
        usage = mm.usage()
        assert sum(usage.values()) <= mm.budget_bytes
        win = next(v for k, v in usage.items() if k.endswith(":window"))
        peak_window = max(peak_window, win)
        assert mm.check()
    assert 0 < peak_window <= (8 + 256) * 64 * 64
    assert len(cache) > 0
    assert mm.cleanup_stage(STAGE) >= 0
    assert len(cache) == 0 and mm.consumers == []


def test_budget_too_small_is_a_clear_error():
    from imgae_dx.config import ConfigError

    with pytest.raises(ConfigError, match="memory_budget_mb"):
        pipeline_budget(_cfg(memory_budget_mb=1, max_request_mb=16))
    assert make_cache(_cfg(cache="off")) is None


# ----------------------------------------------------------------------------- DataLoader
def test_dataloader_workers_cover_rank_share(opened):
    ds = _ds(opened, "test", batch_size=2, drop_last=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    got = [int(m) for b in loader for m in b["member"]]
    assert len(got) == len(set(got)) and len(got) % 2 == 0 and len(got) > 0
    assert set(got) <= set(ds.members.tolist())


# ----------------------------------------------------------------------------- faults
def _digest(x: torch.Tensor) -> str:
    return hashlib.sha256(x.numpy().tobytes()).hexdigest()


def _stream_over_http(path: Path, cfg: DataConfig, faults) -> tuple[list[int], list[str], dict, dict]:
    """Every stage × split of the archive served over loopback HTTP: members, pixel digests, counts."""
    from imgae_dx.testing.range_server import RangeServer

    with RangeServer(path, faults=faults) as srv:
        archive = open_archive(srv.url, cfg)
        try:
            nih = NIHIndex.from_archive(archive)
            members, digests, totals = [], [], {"crc_rereads": 0, "skipped": 0}
            for stage in nih.stages():
                for split in ("train", "val", "test"):
                    ds = StreamingNIHDataset(archive, nih, stage, split, cfg, seed=3, batch_size=2)
                    m, x = _run(ds)
                    members += m
                    digests.append(_digest(x))
                    for k in totals:
                        totals[k] += ds.stats()[k]
            return members, digests, srv.counts(), totals
        finally:
            archive.close()


def test_faulty_server_three_stages_same_images(small_archive, tmp_path):
    """Acceptance: 1 request in 20 faulted (resets, short/slow bodies, 5xx, 429, corrupt bytes)."""
    from imgae_dx.testing.range_server import Faults

    copy = tmp_path / "data.zip"
    shutil.copy(small_archive, copy)
    cfg = _cfg(max_request_mb=0.05, index_cache_dir=str(tmp_path / "idx"))
    clean = _stream_over_http(copy, cfg, None)
    faulty = _stream_over_http(copy, cfg, Faults.uniform(1 / 20, seed=5, corrupt=True))
    assert len(clean[0]) > 20
    assert faulty[0] == clean[0] and faulty[1] == clean[1]
    assert sum(faulty[2]["faults"].values()) >= 3
    assert faulty[3]["skipped"] == clean[3]["skipped"] == 0


def test_bytes_corrupted_in_transit_are_refetched(small_archive, tmp_path):
    from imgae_dx.testing.range_server import Faults

    copy = tmp_path / "data.zip"
    shutil.copy(small_archive, copy)
    cfg = _cfg(max_request_mb=0.05, index_cache_dir=str(tmp_path / "idx"))
    clean = _stream_over_http(copy, cfg, None)
    faulty = _stream_over_http(copy, cfg, Faults(corrupt=0.12, seed=2, apply_to_tail=False))
    # the server's fault RNG is drawn in request-arrival order, so how many land varies (2-3 here)
    corrupted = faulty[2]["faults"].get("corrupt", 0)
    assert corrupted >= 1
    assert faulty[3]["crc_rereads"] >= 1 and faulty[3]["skipped"] == 0
    assert faulty[0] == clean[0] and faulty[1] == clean[1]


# ----------------------------------------------------------------------------- formats, resize
def _with_jpegs(src: Path, dst_dir: Path, names: list[str]) -> tuple[Path, dict[str, bytes]]:
    """Copy of the archive where ``names`` hold non-square JPEGs (their .png names kept: the
    format is told by content)."""
    import cv2

    rng = np.random.default_rng(3)
    jpegs = {}
    for k, name in enumerate(names):
        img = cv2.GaussianBlur(rng.integers(0, 256, (90 + 20 * k, 160), dtype=np.uint8), (0, 0), 3)
        jpegs[name] = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    dst = dst_dir / "data.zip"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, jpegs.get(info.filename, zin.read(info)), compress_type=zipfile.ZIP_STORED)
    return dst, jpegs


def test_jpeg_members_decoded_with_the_configured_resize_policy(small_archive, tmp_path):
    from imgae_dx.data.decode import decode_image
    from imgae_dx.data.persistent_cache import PersistentImageCache

    with zipfile.ZipFile(small_archive) as z:
        names = sorted(n for n in z.namelist() if n.startswith(f"{STAGE}/images/"))[:3]
    path, jpegs = _with_jpegs(Path(small_archive), tmp_path, names)
    archive = open_archive(str(path), _cfg())
    try:
        nih = NIHIndex.from_archive(archive)
        ids = {archive.index.find(n): n for n in names}
        folders = set()
        for policy in ("squash", "pad", "crop"):
            cfg = _cfg(resize=policy, cache="persistent", cache_dir=str(tmp_path / "cache"))
            cache = make_cache(cfg, archive=archive)
            assert isinstance(cache, PersistentImageCache)
            folders.add(cache.folder)
            for attempt in ("cold", "cached"):
                ds = StreamingNIHDataset(archive, nih, STAGE, "train", cfg, seed=7, batch_size=2,
                                         members=list(ids), cache=cache, drop_last=False)
                members, imgs = _run(ds)
                assert ds.stats()["skipped"] == 0
                for i, m in enumerate(members):
                    want = decode_image(jpegs[ids[m]], 64, resize=policy)
                    assert torch.equal(imgs[i, 0], torch.from_numpy(want).float() / 255), (policy, attempt)
                if attempt == "cold":
                    cache.flush()
                else:
                    assert ds.stats()["cache_hits"] == len(ids)
            cache.close()
        assert len(folders) == 3  # one cache folder per policy: images of different preprocessing never mix
    finally:
        archive.close()
