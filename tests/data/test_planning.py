"""The epoch plan (pure functions): shuffle buffer, balanced requests, equal shares per rank."""

from __future__ import annotations

import numpy as np

from imgae_dx.data.planning import (
    MIN_REQUESTS_PER_SHARE,
    balanced_requests,
    deal_shares,
    seeded_rng,
    share_order,
    shuffle_buffer_order,
)
from imgae_dx.streaming.fetcher import RangeRequest


class _Spans:
    """An archive index of ``n`` members of ``size`` bytes each, back to back."""

    def __init__(self, n: int, size: int = 1000) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def spans(self, ids):
        ids = np.asarray(ids, dtype=np.int64)
        return ids * self.size, (ids + 1) * self.size


def test_shuffle_buffer_order_is_bounded_permutation():
    rng = np.random.default_rng(0)
    out = shuffle_buffer_order(500, 16, rng)
    assert sorted(out.tolist()) == list(range(500))
    assert all(out[p] <= max(2 * p + 1, p + 16) for p in range(500))
    assert out.tolist() != list(range(500))


def test_seeded_rng_is_a_pure_function_of_its_parts():
    a = seeded_rng(7, "images_001", "train", 0).random(4)
    assert np.array_equal(a, seeded_rng(7, "images_001", "train", 0).random(4))
    assert not np.array_equal(a, seeded_rng(7, "images_001", "train", 1).random(4))


def test_balanced_requests_give_every_share_enough_requests():
    index = _Spans(200)
    reqs = balanced_requests(index, np.arange(200), 1 << 30, 0, shares=3)
    assert len(reqs) >= MIN_REQUESTS_PER_SHARE * 3
    assert np.array_equal(np.concatenate([r.members for r in reqs]), np.arange(200))


def test_deal_shares_gives_every_rank_the_same_whole_batches():
    reqs = [RangeRequest(i * 10, i * 10 + 10, np.arange(i * 10, i * 10 + n)) for i, n in
            enumerate([7, 3, 9, 1, 5, 8, 2, 6])]
    shares = deal_shares(reqs, seed=1, stage="s", split="train", epoch=0, world_size=3, workers=2,
                         batch_size=2, drop_last=True)
    per_rank = [sum(c for _, c in rank) for rank in shares]
    assert len(set(per_rank)) == 1 and per_rank[0] % 2 == 0 and per_rank[0] > 0
    loose = deal_shares(reqs, seed=1, stage="s", split="train", epoch=0, world_size=3, workers=1,
                        batch_size=2, drop_last=False)
    assert len({rank[0][1] for rank in loose}) == 1
    # a pure function of its inputs: another epoch deals another permutation
    other = deal_shares(reqs, seed=1, stage="s", split="train", epoch=1, world_size=3, workers=2,
                        batch_size=2, drop_last=True)
    assert [[[r.start for r in q] for q, _ in rank] for rank in shares] != \
           [[[r.start for r in q] for q, _ in rank] for rank in other]


def test_share_order_cuts_to_the_count_and_permutes_within_it():
    index = _Spans(30)
    reqs = [RangeRequest(0, 10_000, np.arange(10)), RangeRequest(10_000, 20_000, np.arange(10, 20))]
    share = share_order(index, reqs, 13, seed=3, stage="s", split="val", epoch=0, rank=0,
                        world_size=1, worker=0, shuffle_buffer=4)
    assert sorted(share.order.tolist()) == list(range(13))
    assert [len(r.members) for r in share.requests] == [10, 3]
    assert share.requests[1].end == 13_000  # narrowed to the members it keeps
