"""Cold streaming over an emulated network link: how prefetch depth and request size hide latency.

The sample archive is served by :class:`~imgae_dx.testing.range_server.RangeServer` in its own
process, emulating a link (``Link``: a round-trip time before every response, one more on a new
connection, and one bandwidth shared by all responses; MB = 10⁶ bytes). For every combination
of ``data.requests_in_flight`` and ``data.max_request_mb`` one cold pass streams every image of
the first stage into 128² tensors (cache off, fresh dataset), and is compared with what bounds
it:

* ``link_bound`` = bandwidth ÷ bytes fetched per image (images/s the link can carry);
* ``ceiling`` = decode + resize alone on the same images with the same threads (in memory);
* ``vs_bound`` = images/s ÷ min(link_bound, ceiling). Target: ≥ 0.9 at 30 ms, 100 MB/s.

    python benchmarks/link_bench.py --archive benchmarks/out/b3x300/data.zip
    python benchmarks/link_bench.py --rtt-ms 30 --mbps 100,50 --in-flight 1,2,4,8 --request-mb 1,4,16

Prints one JSON object (and a Markdown table on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream_bench import _ceiling, _ServerProcess  # noqa: E402  (the sibling benchmark)

from imgae_dx.config import DataConfig  # noqa: E402
from imgae_dx.data.dataset import StreamingNIHDataset  # noqa: E402
from imgae_dx.data.datasets.nih import NIHIndex  # noqa: E402
from imgae_dx.streaming.sources import open_archive  # noqa: E402

TARGET = 0.9


def cold_pass(archive: Any, nih: NIHIndex, cfg: DataConfig, stage: str, members: Any) -> dict[str, float]:
    """One cold pass over ``members`` with ``cfg``'s prefetch settings; images/s and bytes."""
    ds = StreamingNIHDataset(archive, nih, stage, "train", cfg, seed=0, batch_size=32, cache=None,
                             drop_last=False, members=members)
    t = time.perf_counter()
    n = sum(len(b) for b in ds.batches())
    wall = time.perf_counter() - t
    st = ds.stats()
    ds.close()
    return {"images": n, "wall_s": round(wall, 3), "images_per_s": round(n / wall, 1),
            "bytes_fetched": int(st["bytes_fetched"]), "requests": int(st["requests"])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--archive", type=Path, default=None, help="sample archive (default: generate one)")
    ap.add_argument("--images", type=int, default=300, help="images of the stage when generating")
    ap.add_argument("--limit", type=int, default=0, help="stream only the first N images of the stage")
    ap.add_argument("--rtt-ms", type=float, default=30.0)
    ap.add_argument("--mbps", default="100,50", help="bandwidths to emulate, MB/s")
    ap.add_argument("--in-flight", default="1,2,4,8", help="data.requests_in_flight values")
    ap.add_argument("--request-mb", default="1,4,16", help="data.max_request_mb values")
    ap.add_argument("--workers", type=int, default=2, help="decode threads (and ceiling threads)")
    ap.add_argument("--image-size", type=int, default=128)
    args = ap.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="imgae_link_bench_")
    path = args.archive
    if path is None:
        from imgae_dx.testing.sample import write_sample_archive

        path = write_sample_archive(tmp.name, images_per_stage=args.images, stages=1, seed=0,
                                    image_px=1024, progress=False)
    base = DataConfig(image_size=args.image_size, view="all", decode_workers=args.workers,
                      memory_budget_mb=1024, index_cache_dir=str(Path(tmp.name) / "idx"))
    rows: list[dict[str, Any]] = []
    try:
        local = open_archive(str(path), base)
        stage = NIHIndex.from_archive(local).stages()[0]
        members = local.index.names_with_prefix(f"{stage}/images/")
        if args.limit:
            members = members[:args.limit]
        with ThreadPoolExecutor(args.workers) as pool:
            n, secs = _ceiling(local, members.tolist(), args.image_size, pool)
        ceiling = n / secs
        for mbps in (float(x) for x in args.mbps.split(",")):
            with _ServerProcess(path, args.rtt_ms, mbps) as srv:
                archive = open_archive(srv.url, base)
                try:
                    nih = NIHIndex.from_archive(archive)
                    for depth in (int(x) for x in args.in_flight.split(",")):
                        for req_mb in (float(x) for x in args.request_mb.split(",")):
                            cfg = base.model_copy(update={"requests_in_flight": depth,
                                                          "max_request_mb": req_mb})
                            r = cold_pass(archive, nih, cfg, stage, members)
                            link_bound = mbps * 1e6 / (r["bytes_fetched"] / r["images"])
                            bound = min(link_bound, ceiling)
                            rows.append({"rtt_ms": args.rtt_ms, "mbps": mbps, "in_flight": depth,
                                         "request_mb": req_mb, **r,
                                         "link_bound": round(link_bound, 1),
                                         "vs_bound": round(r["images_per_s"] / bound, 3)})
                            print(f"{mbps:g} MB/s, {depth} in flight, {req_mb:g} MB: "
                                  f"{r['images_per_s']} images/s ({rows[-1]['vs_bound']} of bound)",
                                  file=sys.stderr)
                finally:
                    archive.close()
        local.close()
    finally:
        tmp.cleanup()
    best = {}
    for r in rows:
        k = str(r["mbps"])
        if k not in best or r["vs_bound"] > best[k]["vs_bound"]:
            best[k] = r
    out = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "loadavg": os.getloadavg(),
           "nproc": os.cpu_count(), "archive": str(path), "stage": stage, "images": len(members),
           "workers": args.workers, "ceiling_images_per_s": round(ceiling, 1), "target": TARGET,
           "rows": rows, "best": best,
           "meets_target": {k: v["vs_bound"] >= TARGET for k, v in best.items()}}
    head = "| RTT ms | MB/s | in flight | request MB | images/s | link bound | vs min(link, ceiling) | requests |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['rtt_ms']:g} | {r['mbps']:g} | {r['in_flight']} | {r['request_mb']:g} | "
              f"{r['images_per_s']} | {r['link_bound']} | {r['vs_bound']} | {r['requests']} |" for r in rows]
    print("\n".join(lines), file=sys.stderr)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
