"""The plan of one epoch of a streamed split: requests, their shares per rank/worker, the order.

Pure functions of ids, offsets and seeds (no I/O, no state), the way mosaic-streaming keeps its
``partition/`` and ``shuffle/`` beside its dataset. :class:`~imgae_dx.data.dataset.StreamingDataset`
calls them in this order::

    members ─ balanced_requests ─▶ canonical RangeRequests (offset order)
      ─ deal_shares (seeded permutation; request j → rank j % world, worker (j // world) % workers;
        equal per-rank counts) ─▶ (requests, count) per rank and worker
      ─ share_order (cut to the count; seeded bounded shuffle buffer) ─▶ Share(requests, order)

Everything a rank yields in an epoch is fixed here: a pure function of ``(seed, stage, split,
epoch, rank, world_size)`` and the worker count, never of decode threads or timing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgae_dx.streaming.fetcher import RangeRequest, coalesce

#: Smallest number of requests per (rank, worker) the planner aims for (load balance of tiny splits).
MIN_REQUESTS_PER_SHARE = 4


@dataclass
class Share:
    """What one (rank, worker) reads in one epoch."""

    requests: list[RangeRequest]  # in input order (the last may be cut to the count)
    order: np.ndarray  # member ids in output order (len == count)


def seeded_rng(*parts: object) -> np.random.Generator:
    """A generator seeded by a stable hash of ``parts`` (same on every machine and Python)."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return np.random.default_rng(np.frombuffer(digest[:16], dtype=np.uint32))


def shuffle_buffer_order(n: int, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """Output order of a bounded shuffle buffer over inputs ``0..n-1`` (an int64 permutation).

    Inputs enter the buffer one by one; whenever it holds more than its current capacity, a
    randomly chosen held input is emitted. The capacity ramps up (half the inputs seen so far)
    to ``buffer``, so the first outputs do not wait for a full buffer (first-batch latency), and
    output ``p`` is always one of the inputs ``0..max(2p + 1, p + buffer)``: the stream needs a
    bounded number of images ahead. What is left at the end is emitted in random order.
    """
    cap_max = max(1, int(buffer))
    out = np.empty(n, dtype=np.int64)
    if n == 0:
        return out
    u = rng.random(n).tolist()
    held: list[int] = []
    k = 0
    for i in range(n):
        held.append(i)
        cap = min(cap_max, (i + 1) // 2)
        while len(held) > cap:
            j = int(u[k] * len(held))
            out[k] = held[j]
            held[j] = held[-1]
            held.pop()
            k += 1
    rest = np.asarray(held, dtype=np.int64)[rng.permutation(len(held))]
    out[k:] = rest
    return out


def sub_request(index: Any, req: RangeRequest, members: Sequence[int] | np.ndarray) -> RangeRequest:
    """``req`` narrowed to ``members`` (a subset of its members, offset order kept)."""
    ms = np.asarray(members, dtype=np.int64)
    if len(ms) == len(req.members):
        return req
    starts, ends = index.spans(ms)
    return RangeRequest(int(starts.min()), int(ends.max()), ms)


def balanced_requests(index: Any, members: np.ndarray, max_request_bytes: int, gap_bridge_bytes: int,
                      shares: int) -> list[RangeRequest]:
    """Requests over ``members`` in offset order, small enough that each of ``shares`` (ranks ×
    workers) gets at least :data:`MIN_REQUESTS_PER_SHARE` of them."""
    max_req = int(max_request_bytes)
    if len(members):
        starts, ends = index.spans(members)
        total = int((ends - starts).sum())
        balanced = total // (MIN_REQUESTS_PER_SHARE * shares)
        max_req = max(1, min(max_req, balanced))
    return coalesce(index, members, max_req, int(gap_bridge_bytes))


def deal_shares(requests: list[RangeRequest], *, seed: int, stage: str, split: str, epoch: int,
                world_size: int, workers: int, batch_size: int,
                drop_last: bool) -> list[list[tuple[list[RangeRequest], int]]]:
    """For every rank and worker: (its requests in dealing order, how many of their images it yields).

    The requests are permuted by ``(seed, stage, split, epoch)`` and dealt round-robin: request
    ``j`` → rank ``j % world_size``, worker ``(j // world_size) % workers``. Every rank yields the
    same number of images (DDP would hang on a short rank): with ``drop_last`` the same number of
    whole batches (a rank's surplus batches are taken from its fullest worker, lowest id first),
    else the smallest rank's count.
    """
    perm = seeded_rng(seed, stage, split, epoch, "requests").permutation(len(requests))
    world = world_size
    shares: list[list[list[RangeRequest]]] = [[[] for _ in range(workers)] for _ in range(world)]
    for j, k in enumerate(perm.tolist()):
        shares[j % world][(j // world) % workers].append(requests[k])
    n = [[sum(len(r.members) for r in shares[r][w]) for w in range(workers)] for r in range(world)]
    bs = batch_size
    if drop_last:
        batches = [[c // bs for c in row] for row in n]
        target = min(sum(row) for row in batches)
        counts = []
        for row in batches:
            row = list(row)
            extra = sum(row) - target
            while extra > 0:  # take batches from the worker holding most, lowest id first
                w = max(range(workers), key=lambda i: (row[i], -i))
                row[w] -= 1
                extra -= 1
            counts.append([b * bs for b in row])
    else:
        target = min(sum(row) for row in n)
        counts = []
        for row in n:
            left, out = target, []
            for c in row:
                out.append(min(c, left))
                left -= out[-1]
            counts.append(out)
    return [[(shares[r][w], counts[r][w]) for w in range(workers)] for r in range(world)]


def share_order(index: Any, requests: list[RangeRequest], count: int, *, seed: int, stage: str,
                split: str, epoch: int, rank: int, world_size: int, worker: int,
                shuffle_buffer: int) -> Share:
    """One (rank, worker)'s requests cut to ``count`` images, and their output order: the
    requests' members in input order through a seeded bounded shuffle buffer."""
    kept: list[RangeRequest] = []
    ids: list[np.ndarray] = []
    left = count
    for r in requests:
        if left <= 0:
            break
        take = r.members[:left] if len(r.members) > left else r.members
        kept.append(sub_request(index, r, take))
        ids.append(take)
        left -= len(take)
    inputs = np.concatenate(ids) if ids else np.empty(0, np.int64)
    rng = seeded_rng(seed, stage, split, epoch, rank, world_size, worker, "shuffle")
    order = inputs[shuffle_buffer_order(len(inputs), shuffle_buffer, rng)]
    return Share(kept, order)
