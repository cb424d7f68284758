"""How ImgAE-Dx's time and memory grow with the number of stages and with images per stage.

Each configuration runs in its own process (so its peak RSS is its own), streaming every image of
the selected stages over loopback HTTP (``RangeServer``) into 128² float batches of 32, stage after
stage as the trainer does (one cache per stage, ``MemoryManager.cleanup_stage`` when a stage ends),
with the default 512 MB pipeline budget and 2 decode threads. Printed as a Markdown table and
written as JSON.

    python benchmarks/scaling_bench.py      # archives in benchmarks/out/{b3x300,a1000}/data.zip

Rows: 1, 2, 3 stages of a 3 × 300-image archive; then 100, 300, 1000 images of one stage of the
1,000-image archive. Columns: images, wall s, images/s, peak RSS, RSS above the imports, RSS
after each stage, bytes fetched.

``--cache persistent`` keeps the decoded images in a persistent cache on disk (a fresh folder per
row) instead of the RAM cache: RAM then holds one 16 MB write buffer whatever the stage size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BATCH = 32


def child(url: str, stages: int, limit: int | None, size: int, workers: int, cache_mode: str) -> dict:
    from imgae_dx.config import DataConfig
    from imgae_dx.data.dataset import StreamingNIHDataset, make_cache
    from imgae_dx.data.datasets.nih import NIHIndex
    from imgae_dx.data.memory import MB, MemoryManager, peak_rss_bytes, rss_bytes
    from imgae_dx.streaming.sources import open_archive

    base = peak_rss_bytes() / MB
    with tempfile.TemporaryDirectory() as idx:
        cfg = DataConfig(image_size=size, view="all", decode_workers=workers, index_cache_dir=idx,
                         cache=cache_mode)
        mm = MemoryManager(cfg.memory_budget_mb)
        t0 = time.perf_counter()
        archive = open_archive(url, cfg)
        nih = NIHIndex.from_archive(archive)
        n = 0
        after = []
        for stage in nih.stages()[:stages]:
            members = archive.index.names_with_prefix(f"{stage}/images/")[:limit]
            cache = make_cache(cfg, archive=archive)
            ds = StreamingNIHDataset(archive, nih, stage, "train", cfg, seed=0, batch_size=BATCH,
                                     cache=cache, memory=mm, drop_last=False, members=members)
            for b in ds.batches():
                n += len(b)
            mm.cleanup_stage(stage)
            ds.close()
            if cache is not None:
                cache.close()
            after.append(round(rss_bytes() / MB, 1))
        wall = time.perf_counter() - t0
        st = archive.stats()
        archive.close()
    return {"images": n, "wall_s": wall, "images_per_s": n / wall, "peak_rss_mb": peak_rss_bytes() / MB,
            "import_rss_mb": base, "rss_after_stage_mb": after, "bytes_fetched": st["bytes_fetched"],
            "requests": st["requests"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stages-archive", type=Path, default=HERE / "out" / "b3x300" / "data.zip")
    ap.add_argument("--stage-archive", type=Path, default=HERE / "out" / "a1000" / "data.zip")
    ap.add_argument("--per-stage", default="100,300,1000")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cache", choices=["memory", "persistent"], default="memory", help="data.cache")
    ap.add_argument("--json", type=Path, default=HERE / "out" / "scaling_bench.json")
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_url")
    ap.add_argument("--_stages", type=int, default=1)
    ap.add_argument("--_limit", type=int, default=0)
    args = ap.parse_args(argv)
    if args._child:
        print(json.dumps(child(args._url, args._stages, args._limit or None, args.image_size, args.workers,
                               args.cache)))
        return 0

    from imgae_dx.testing import RangeServer
    from imgae_dx.testing.sample import write_sample_archive

    if not args.stages_archive.is_file():
        write_sample_archive(args.stages_archive.parent, images_per_stage=300, stages=3, seed=1)
    if not args.stage_archive.is_file():
        write_sample_archive(args.stage_archive.parent, images_per_stage=1000, stages=1, seed=0)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENCV_NUM_THREADS": "1"}
    me = [sys.executable, str(Path(__file__).resolve()), "--_child", "--image-size", str(args.image_size),
          "--workers", str(args.workers), "--cache", args.cache]
    plan = [(f"{k} stage(s) × 300", args.stages_archive, k, 0) for k in (1, 2, 3)]
    plan += [(f"1 stage × {n}", args.stage_archive, 1, n) for n in map(int, args.per_stage.split(","))]
    rows = []
    for label, archive, k, limit in plan:
        print(f"{label}…", file=sys.stderr)
        with RangeServer(archive) as srv:
            p = subprocess.run([*me, "--_url", srv.url, "--_stages", str(k), "--_limit", str(limit)],
                               capture_output=True, text=True, env=env, timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(p.stderr[-3000:])
        r = json.loads(p.stdout.strip().splitlines()[-1])
        r["label"] = label
        rows.append(r)
    out = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "loadavg": os.getloadavg(),
           "nproc": os.cpu_count(), "cache": args.cache, "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    head = ("run", "images", "wall s", "images/s", "peak RSS MB", "above imports MB",
            "RSS after each stage MB", "fetched MB")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["label"], str(r["images"]), f"{r['wall_s']:.1f}", f"{r['images_per_s']:.1f}",
            f"{r['peak_rss_mb']:.0f}", f"{r['peak_rss_mb'] - r['import_rss_mb']:.0f}",
            ", ".join(f"{v:.0f}" for v in r["rss_after_stage_mb"]), f"{r['bytes_fetched'] / 1e6:.0f}",
        ]) + " |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
