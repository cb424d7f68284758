"""Decode ceiling: libpng (``cv2.imdecode``) vs the split decoder, per filter type, per thread count.

Images: the 8-bit gray PNG members of a sample archive (1024 px like NIH's; RGBA members are
left out: both decoders hand them to libpng), and the first few of them re-encoded by OpenCV
with one PNG filter type for every row (None, Sub, Up, Average, Paeth), so the cost of each
filter shows. Both decoders are timed on the same bytes, interleaved (cv2, split, cv2, split …
for ``--reps`` rounds; the median is kept), with 1, 2, … threads decoding disjoint images.

Two operations: ``decode`` (PNG bytes → uint8 H×W, ``decode_gray``) and ``ceiling`` (→ 128²
with area resize, ``decode_png``: what one image costs the streaming pipeline on top of
fetching, the speed it cannot beat). Reported: ms per image (wall time ÷ images, so with 2
threads it is half the per-thread cost when threads scale) and ``speedup`` = cv2 ÷ split.

    python benchmarks/decode_bench.py --archive benchmarks/out/a1000/data.zip --images 300
    python benchmarks/decode_bench.py --threads 1,2,16          # on a 16-core machine

Prints one JSON object (and a Markdown table on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from imgae_dx.data import png_split
from imgae_dx.data.decode import decode_gray, decode_png

FILTERS = {"none": cv2.IMWRITE_PNG_FILTER_NONE, "sub": cv2.IMWRITE_PNG_FILTER_SUB,
           "up": cv2.IMWRITE_PNG_FILTER_UP, "avg": cv2.IMWRITE_PNG_FILTER_AVG,
           "paeth": cv2.IMWRITE_PNG_FILTER_PAETH}
TARGET_SPEEDUP_SAMPLE = 1.8


def gray_members(archive: Path, limit: int) -> list[bytes]:
    """The first ``limit`` 8-bit gray PNG members of a zip archive."""
    out: list[bytes] = []
    with zipfile.ZipFile(archive) as z:
        for name in z.namelist():
            if not name.endswith(".png"):
                continue
            data = z.read(name)
            if data[24:26] == b"\x08\x00" and data[28] == 0:  # depth 8, gray, not interlaced
                out.append(data)
                if len(out) == limit:
                    break
    return out


def filter_sets(pngs: list[bytes], n: int) -> dict[str, list[bytes]]:
    """``n`` images re-encoded with one filter type on every row, per filter type."""
    imgs = [decode_gray(p, decoder="cv2") for p in pngs[:n]]
    sets = {}
    for name, flag in FILTERS.items():
        sets[name] = [cv2.imencode(".png", im, [cv2.IMWRITE_PNG_FILTER, flag])[1].tobytes()
                      for im in imgs]
    return sets


def _time(fn: Any, items: list[bytes], pool: ThreadPoolExecutor | None) -> float:
    """Seconds to run ``fn`` over ``items`` (on ``pool``'s threads when given)."""
    t = time.perf_counter()
    if pool is None:
        for it in items:
            fn(it)
    else:
        list(pool.map(fn, items))
    return time.perf_counter() - t


def measure(sets: dict[str, list[bytes]], threads: list[int], reps: int, image_size: int) -> list[dict]:
    ops = {
        "decode": {"cv2": lambda b: decode_gray(b, decoder="cv2"), "split": lambda b: decode_gray(b)},
        "ceiling": {"cv2": lambda b: decode_png(b, image_size, decoder="cv2"),
                    "split": lambda b: decode_png(b, image_size)},
    }
    pools = {k: ThreadPoolExecutor(k) for k in threads if k > 1}
    for p in pools.values():  # start the threads before timing
        list(p.map(time.sleep, [0.001] * len(threads) * 4))
    rows = []
    for set_name, items in sets.items():
        for op, fns in ops.items():
            for k in threads:
                samples: dict[str, list[float]] = {"cv2": [], "split": []}
                for _ in range(reps):
                    for dec in ("cv2", "split"):
                        samples[dec].append(_time(fns[dec], items, pools.get(k)) / len(items))
                cv2_ms = statistics.median(samples["cv2"]) * 1e3
                split_ms = statistics.median(samples["split"]) * 1e3
                rows.append({"set": set_name, "op": op, "threads": k, "images": len(items),
                             "mean_kb": round(sum(map(len, items)) / len(items) / 1024, 1),
                             "cv2_ms": round(cv2_ms, 4), "split_ms": round(split_ms, 4),
                             "speedup": round(cv2_ms / split_ms, 2)})
    for p in pools.values():
        p.shutdown()
    return rows


def scaling(rows: list[dict]) -> dict[str, float]:
    """Split decoder: images/s with the most threads ÷ with 1 (``ceiling`` on the sample)."""
    r = {x["threads"]: x["split_ms"] for x in rows if x["set"] == "sample" and x["op"] == "ceiling"}
    lo, hi = min(r), max(r)
    return {f"{hi}_vs_{lo}_threads": round(r[lo] / r[hi], 2)} if hi != lo else {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--archive", type=Path, default=None, help="sample archive (default: generate one)")
    ap.add_argument("--images", type=int, default=200, help="gray PNG members of the archive to decode")
    ap.add_argument("--filter-images", type=int, default=12, help="images re-encoded per filter type")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--image-size", type=int, default=128)
    args = ap.parse_args(argv)
    if not png_split.available():
        print(json.dumps({"skipped": f"split decoder unavailable: {png_split.why_unavailable()}"}))
        return 1
    tmp = None
    path = args.archive
    if path is None:
        from imgae_dx.testing.sample import write_sample_archive

        tmp = tempfile.TemporaryDirectory(prefix="imgae_decode_bench_")
        path = write_sample_archive(tmp.name, images_per_stage=args.images, stages=1, seed=0,
                                    image_px=1024, progress=False)
    try:
        cv2.setNumThreads(1)  # decoding threads are ours; OpenCV's own pool would skew 1 vs N
        pngs = gray_members(path, args.images)
        sets = {"sample": pngs, **filter_sets(pngs, args.filter_images)}
        threads = [int(t) for t in args.threads.split(",")]
        rows = measure(sets, threads, args.reps, args.image_size)
    finally:
        if tmp is not None:
            tmp.cleanup()
    sample = {r["threads"]: r["speedup"] for r in rows if r["set"] == "sample" and r["op"] == "ceiling"}
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "loadavg": os.getloadavg(), "nproc": os.cpu_count(),
        "archive": str(path), "image_px": int(cv2.imdecode(np.frombuffer(pngs[0], np.uint8), 0).shape[0]),
        "reps": args.reps, "rows": rows, "split_thread_scaling": scaling(rows),
        "target": {"sample_ceiling_speedup": TARGET_SPEEDUP_SAMPLE},
        "meets_target": {str(k): v >= TARGET_SPEEDUP_SAMPLE for k, v in sample.items()},
    }
    head = "| set | op | threads | images | KB | cv2 ms/img | split ms/img | speedup |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['set']} | {r['op']} | {r['threads']} | {r['images']} | {r['mean_kb']} | "
              f"{r['cv2_ms']} | {r['split_ms']} | {r['speedup']}× |" for r in rows]
    print("\n".join(lines), file=sys.stderr)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
