"""``imgae-dx stream``: run the data path alone (no training) — a dry run before a long job.

Opens the source (credentials, signed URL, archive index), builds the dataset's index (``--dataset``,
else NIH or the detected layout), then streams every chosen stage × split through
:class:`~imgae_dx.data.dataset.StreamingDataset` exactly as
training would (range requests, decode, resize, cache, memory budget), with a progress bar on
stderr. Prints a human summary, or with ``--json`` one object (the contract in docs/design.md)::

    {"images": {"train": N, "val": N, "test": N}, "skipped": N, "bytes_fetched": N,
     "requests": N, "images_per_s": X, "first_batch_s": X, "peak_rss_mb": X}

``images`` holds the splits asked for (``all`` = the three). ``first_batch_s`` counts from the
moment the source is opened; ``images_per_s`` is images over the streaming wall time (the index
build excluded); ``peak_rss_mb`` is the process's high-water mark.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

SPLITS = ("train", "val", "test")


def run(args: argparse.Namespace) -> int:
    """Stream the chosen stages and splits; print the summary. Returns the exit code."""
    import logging

    from imgae_dx.config import load_config

    if not args.json:  # which dataset, what its index skipped: one line each on stderr
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    overrides: dict[str, Any] = {
        "source": args.source,
        "data.dataset": getattr(args, "dataset", None),
        "stages": args.stages,
        "data.image_size": args.image_size,
    }
    cfg = load_config(args.config, overrides)
    if args.limit is not None and args.limit < 1:
        from imgae_dx.errors import UserError

        raise UserError(f"--limit must be at least 1, got {args.limit}")
    summary = stream(cfg, split=args.split, limit=args.limit, progress=not args.json)
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_summary(summary, cfg.source))
    return 0


def stream(cfg: Any, *, split: str = "all", limit: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the data path over ``cfg.stages`` and the split(s); returns the summary dict (``--json``)."""
    from tqdm.auto import tqdm

    from imgae_dx.data.dataset import StreamingDataset, make_cache
    from imgae_dx.data.datasets import open_dataset
    from imgae_dx.data.memory import MB, MemoryManager, peak_rss_bytes
    from imgae_dx.streaming.sources import open_archive

    splits = list(SPLITS) if split == "all" else [split]
    t_open = time.perf_counter()
    archive = open_archive(cfg.source, cfg.data)
    images = {s: 0 for s in splits}
    totals = {"skipped": 0, "bytes_fetched": 0, "requests": 0}
    first_batch_s: float | None = None
    try:
        index = open_dataset(archive, cfg.data, cfg.seed, quiet=not progress)
        stages = index.resolve_stages(cfg.stages)
        memory = MemoryManager(cfg.data.memory_budget_mb)
        cache = make_cache(cfg.data, archive=archive)
        plans = [
            (stage, s, StreamingDataset(archive, index, stage, s, cfg.data, seed=cfg.seed,
                                        batch_size=cfg.training.batch_size, cache=cache,
                                        memory=memory, drop_last=False))
            for stage in stages for s in splits
        ]
        planned = sum(len(ds) for _, _, ds in plans)
        total = planned if limit is None else min(limit, planned)
        bar = tqdm(total=total, unit="img", desc="stream", disable=None if progress else True,
                   file=sys.stderr)
        t_stream = time.perf_counter()
        done = 0
        try:
            for i, (stage, s, ds) in enumerate(plans):
                bar.set_postfix_str(f"{stage}/{s}")
                for batch in ds.batches():
                    take = len(batch) if limit is None else min(len(batch), limit - done)
                    if first_batch_s is None:
                        first_batch_s = time.perf_counter() - t_open
                    images[s] += take
                    done += take
                    bar.update(take)
                    if limit is not None and done >= limit:
                        break
                st = ds.stats()
                for k in totals:
                    totals[k] += int(st[k])
                ds.close()
                memory.check()
                last_of_stage = i + 1 == len(plans) or plans[i + 1][0] != stage
                if last_of_stage:
                    memory.cleanup_stage(stage)
                if limit is not None and done >= limit:
                    break
        finally:
            bar.close()
            if cache is not None:
                cache.close()
        elapsed = time.perf_counter() - t_stream
    finally:
        archive.close()
    n = sum(images.values())
    return {
        "images": images,
        "skipped": totals["skipped"],
        "bytes_fetched": totals["bytes_fetched"],
        "requests": totals["requests"],
        "images_per_s": round(n / elapsed, 2) if elapsed > 0 else 0.0,
        "first_batch_s": round(first_batch_s, 3) if first_batch_s is not None else None,
        "peak_rss_mb": round(peak_rss_bytes() / MB, 1),
    }


def format_summary(s: dict[str, Any], source: str) -> str:
    """Human-readable lines for the summary dict."""
    n = sum(s["images"].values())
    per = ", ".join(f"{k} {v:,}" for k, v in s["images"].items())
    req = s["requests"]
    lines = [
        f"streamed {n:,} images from {source} ({per})",
        f"  skipped (undecodable): {s['skipped']:,}",
        f"  fetched: {s['bytes_fetched'] / 1e6:,.1f} MB in {req:,} range requests"
        + (f" ({n / req:.1f} images per request)" if req else ""),
        f"  speed: {s['images_per_s']:,.1f} images/s; first batch after "
        + (f"{s['first_batch_s']:.2f} s" if s["first_batch_s"] is not None else "- (no batch)"),
        f"  peak memory (RSS): {s['peak_rss_mb']:,.0f} MB",
    ]
    return "\n".join(lines)
