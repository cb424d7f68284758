"""ReplayDataset: several stages from the decode-once cache, deterministic, resumable, equal ranks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imgae_dx.config import DataConfig
from imgae_dx.data.dataset import StreamingNIHDataset, make_cache
from imgae_dx.data.datasets.nih import NIHIndex
from imgae_dx.data.replay import ReplayDataset
from imgae_dx.errors import CheckpointError
from imgae_dx.streaming.sources import open_archive

STAGES = ["images_001", "images_002"]


def _cfg(tmp_path: Path) -> DataConfig:
    return DataConfig(image_size=32, view="all", decode_workers=2, cache="persistent",
                      cache_dir=str(tmp_path / "images"), index_cache_dir=str(tmp_path / "idx"),
                      max_request_mb=1.0, shuffle_buffer=16)


class _Run:
    """What one process opens: archive, index, persistent cache."""

    def __init__(self, path: Path, cfg: DataConfig) -> None:
        self.cfg = cfg
        self.archive = open_archive(str(path), cfg)
        self.nih = NIHIndex.from_archive(self.archive)
        self.cache = make_cache(cfg, archive=self.archive)

    def replay(self, **kw) -> ReplayDataset:
        args = dict(seed=5, batch_size=4)
        return ReplayDataset(self.archive, self.nih, STAGES, "train", self.cfg, cache=self.cache,
                             **{**args, **kw})

    def fetched(self) -> int:
        return int(self.archive.reader.stats.snapshot()["bytes_fetched"])

    def close(self) -> None:
        self.cache.close()
        self.archive.close()


def _stream_stages(run: _Run) -> dict[int, np.ndarray]:
    """The trainer's first pass over each stage: streamed, decoded, cached."""
    seen = {}
    for stage in STAGES:
        ds = StreamingNIHDataset(run.archive, run.nih, stage, "train", run.cfg, seed=5, batch_size=4,
                                 cache=run.cache, drop_last=False)
        for b in ds.batches():
            for m, x in zip(b.members.tolist(), b.images.numpy(), strict=True):
                seen[m] = x
    return seen


def _epoch(ds: ReplayDataset) -> tuple[list[int], list[np.ndarray]]:
    members, images = [], []
    for b in ds.batches():
        members += b.members.tolist()
        images += list(b.images.numpy())
    return members, images


@pytest.fixture
def streamed(small_archive, tmp_path):
    cfg = _cfg(tmp_path)
    run = _Run(small_archive, cfg)
    seen = _stream_stages(run)
    run.close()
    return cfg, seen


def test_replays_cached_stages_without_fetching(small_archive, streamed):
    cfg, seen = streamed
    run = _Run(small_archive, cfg)  # a new process: fresh archive and cache objects
    ds = run.replay()
    before = run.fetched()
    members, images = _epoch(ds)
    assert run.fetched() == before and ds.stats()["bytes_fetched"] == 0
    assert ds.stats()["cache_hits"] == len(members) == len(ds) == ds.num_batches() * 4
    assert members == ds.order().tolist()
    assert set(members) <= set(seen) and len(set(members)) == len(members)
    assert len(members) >= len(seen) - 3  # all but the drop_last remainder
    for m, x in zip(members, images, strict=True):
        assert np.array_equal(x, seen[m])  # the stream's pixels
    assert {run.nih.record(m).stage for m in members} == set(STAGES)
    run.close()


def test_order_is_a_pure_function_and_ranks_are_equal(small_archive, streamed):
    cfg, seen = streamed
    run = _Run(small_archive, cfg)
    a, b = run.replay(), run.replay()
    assert np.array_equal(a.order(0), b.order(0))
    assert not np.array_equal(a.order(0), a.order(1))
    assert not np.array_equal(a.order(0), run.replay(seed=6).order(0))
    for world in (2, 3):
        ranks = [run.replay(rank=r, world_size=world) for r in range(world)]
        assert len({r.num_batches() for r in ranks}) == 1
        orders = [r.order(0) for r in ranks]
        union = np.concatenate(orders)
        assert len(np.unique(union)) == len(union)  # disjoint
        assert [_epoch(r)[0] for r in ranks] == [o.tolist() for o in orders]
    run.close()


def test_resume_mid_epoch_continues_exactly(small_archive, streamed):
    cfg, _ = streamed
    run = _Run(small_archive, cfg)
    ds = run.replay()
    ds.set_epoch(2)
    full, _ = _epoch(_set_epoch(run.replay(), 2))
    it = ds.batches()
    head = [m for _ in range(3) for m in next(it).members.tolist()]
    state = ds.state_dict()
    assert state["position"] == 12 and state["epoch"] == 2
    run.close()
    again = _Run(small_archive, cfg)
    resumed = again.replay()
    resumed.load_state_dict(state)
    tail, _ = _epoch(resumed)
    assert head + tail == full
    with pytest.raises(CheckpointError, match="different plan"):
        again.replay(seed=9).load_state_dict(state)
    with pytest.raises(CheckpointError, match="different plan"):
        ReplayDataset(again.archive, again.nih, STAGES[:1], "train", cfg, cache=again.cache, seed=5,
                      batch_size=4).load_state_dict(state)
    again.close()


def _set_epoch(ds: ReplayDataset, epoch: int) -> ReplayDataset:
    ds.set_epoch(epoch)
    return ds


def test_images_missing_from_the_cache_are_streamed_and_cached(small_archive, streamed, tmp_path):
    cfg, seen = streamed
    empty = DataConfig(**{**cfg.model_dump(), "cache_dir": str(tmp_path / "empty")})
    run = _Run(small_archive, empty)
    ds = run.replay()
    members, images = _epoch(ds)
    assert ds.stats()["streamed"] == len(members) and ds.stats()["bytes_fetched"] > 0
    assert ds.stats()["requests"] < len(members)  # each window's misses coalesced
    for m, x in zip(members, images, strict=True):
        assert np.array_equal(x, seen[m])
    run.close()
    run = _Run(small_archive, empty)
    before = run.fetched()
    assert _epoch(run.replay())[0] == members and run.fetched() == before
    run.close()


def test_undecodable_member_is_replaced_deterministically(small_archive, streamed):
    cfg, _ = streamed
    run = _Run(small_archive, cfg)
    csv = run.archive.index.find("Data_Entry_2017.csv")  # not a PNG: fails to decode
    members = np.append(run.replay().members, csv)
    one = run.replay(members=members, drop_last=False)
    got, _ = _epoch(one)
    assert one.stats()["skipped"] == 1 and csv not in got and len(got) == len(members)
    two = run.replay(members=members, drop_last=False)
    assert _epoch(two)[0] == got
    run.close()
