"""Streaming benchmark (issue 2 acceptance). Prints one JSON object.

A sample archive (``write_sample_archive``, 1024 px PNGs like NIH's; generated first, not timed)
is served over loopback HTTP by :class:`imgae_dx.testing.range_server.RangeServer` (in a separate
process, like a remote server: its threads do not compete for the client's GIL) and streamed
through :class:`StreamingNIHDataset` into 128² tensors with 2 decode workers. Measured in one run:

* ``cold_images_per_s``: first epoch of every stage (fetch + inflate/CRC + decode + resize);
* ``ceiling_images_per_s``: pure PNG decode + area resize of the same images' bytes (already in
  memory), on the same number of threads — the speed the pipeline cannot beat;
* ``warm_images_per_s``: a second epoch, served by the cache;
* ``first_batch_s``: first batch of the first stage, from iteration start (``..._incl_open_s``:
  from opening the URL, index build included);
* ``bytes_ratio``: bytes fetched / compressed bytes of the selected members;
* ``requests_per_image``: HTTP requests (retries included) per streamed image;
* ``peak_rss_mb_after_1_stage`` / ``..._3_stages``: process high-water mark with a 512 MB budget.

Two selections are measured: ``stage`` (every image of a stage, as a full pass over the archive
reads it; the headline) and ``train_split`` (the sparse default training split: normal PA images
of the training patients — interleaved with unwanted members, so fewer images per request).

``--decoder cv2`` decodes with libpng alone (pipeline and ceiling), ``auto`` (default) with the
split decoder; ``--link-rtt-ms`` / ``--link-mbps`` make the server emulate a network link
(:class:`~imgae_dx.testing.range_server.Link`; MB = 10⁶ bytes).

Usage: ``python benchmarks/stream_bench.py [--images-per-stage 200] [--stages 3] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from imgae_dx.config import DataConfig
from imgae_dx.data.dataset import StreamingNIHDataset, make_cache
from imgae_dx.data.datasets.nih import NIHIndex
from imgae_dx.data.decode import Decoder, decode_png
from imgae_dx.data.memory import MB, MemoryManager, peak_rss_bytes, rss_bytes
from imgae_dx.streaming.sources import open_archive
from imgae_dx.testing.sample import write_sample_archive

TARGETS = {
    "cold_vs_ceiling": 0.85,
    "warm_vs_cold": 20.0,
    "first_batch_s": 3.0,
    "bytes_ratio": 1.25,
    "requests_per_image": 1 / 20,
    "rss_growth_mb": 50.0,
}


def _ceiling(local: Any, members: list[int], size: int, pool: ThreadPoolExecutor,
             decoder: Decoder = "auto") -> tuple[int, float]:
    """(images, seconds) of decode_png alone over ``members``; raw bytes read (untimed) in chunks."""
    total_t = 0.0
    for lo in range(0, len(members), 32):
        raws = [local.read_member_id(m) for m in members[lo : lo + 32]]
        t = time.perf_counter()
        list(pool.map(lambda b: decode_png(b, size, decoder=decoder), raws))
        total_t += time.perf_counter() - t
        del raws
    return len(members), total_t


_SERVER = """
import sys
from imgae_dx.testing.range_server import Link, RangeServer
rtt_ms, mbps = float(sys.argv[2]), float(sys.argv[3])
link = Link(bandwidth_bytes_per_s=mbps * 1e6 if mbps > 0 else None, rtt_s=rtt_ms / 1000)
with RangeServer(sys.argv[1], link=link) as srv:
    print(srv.url, flush=True)
    sys.stdin.read()  # serve until the parent closes stdin
"""


class _ServerProcess:
    """RangeServer in its own process: the server's threads do not share the client's GIL.

    ``rtt_ms`` / ``mbps`` (MB = 10⁶ bytes; 0 = unlimited) emulate a network link.
    """

    def __init__(self, path: Path, rtt_ms: float = 0.0, mbps: float = 0.0) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(path), str(rtt_ms), str(mbps)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http"):
            raise RuntimeError("the range server did not start")

    def __enter__(self) -> _ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _selection(nih: NIHIndex, archive: Any, stage: str, which: str, cfg: DataConfig, seed: int) -> np.ndarray:
    if which == "stage":
        return archive.index.names_with_prefix(f"{stage}/images/")
    return nih.split(stage, "train", view="PA", val_fraction=cfg.val_fraction, seed=seed)


def run_selection(archive_path: Path, which: str, cfg: DataConfig, workers: int, seed: int,
                  batch_size: int, link: tuple[float, float] = (0.0, 0.0)) -> dict[str, Any]:
    """Stream every stage (cold epoch, warm epoch, cleanup) over HTTP; gather the figures."""
    out: dict[str, Any] = {}
    with _ServerProcess(archive_path, *link) as srv:
        t_open = time.perf_counter()
        archive = open_archive(srv.url, cfg)
        try:
            nih = NIHIndex.from_archive(archive)
            stages = nih.stages()
            memory = MemoryManager(cfg.memory_budget_mb)
            cache = make_cache(cfg, archive=archive)
            cold_n = cold_t = warm_n = warm_t = 0.0
            fetched = selected = 0
            http_requests = 0
            first_batch = first_incl_open = None
            ceil_n = ceil_t = 0.0
            local = open_archive(str(archive_path), DataConfig(index_cache_dir=cfg.index_cache_dir))
            pool = ThreadPoolExecutor(workers)
            list(pool.map(lambda _: time.sleep(0.01), range(workers)))  # start the ceiling's threads
            rss_after: list[float] = []
            for k, stage in enumerate(stages):
                members = _selection(nih, archive, stage, which, cfg, seed)
                ds = StreamingNIHDataset(archive, nih, stage, "train", cfg, seed=seed, batch_size=batch_size,
                                         cache=cache, memory=memory, drop_last=False, members=members)
                req0 = archive.reader.stats.snapshot()["requests"]
                t = time.perf_counter()
                n = 0
                for b in ds.batches():
                    if first_batch is None:
                        first_batch = time.perf_counter() - t
                        first_incl_open = time.perf_counter() - t_open
                    n += len(b)
                cold_t += time.perf_counter() - t
                cold_n += n
                http_requests += archive.reader.stats.snapshot()["requests"] - req0
                st = ds.stats()
                fetched += st["bytes_fetched"]
                selected += int(archive.index.comp_size[ds.members].sum())
                # the ceiling on the same images, right after: same machine load as the cold pass
                cn, ct = _ceiling(local, ds.members.tolist(), cfg.image_size, pool, cfg.png_decoder)
                ceil_n += cn
                ceil_t += ct
                ds.set_epoch(1)  # warm: everything is in the cache now
                t = time.perf_counter()
                n2 = sum(len(b) for b in ds.batches())
                warm_t += time.perf_counter() - t
                warm_n += n2
                if ds.stats()["bytes_fetched"] != st["bytes_fetched"]:
                    raise RuntimeError("the warm epoch fetched bytes: cache not used")
                ds.close()
                memory.cleanup_stage(stage)
                rss_after.append(peak_rss_bytes() / MB)
                out.setdefault("current_rss_mb_after_stage", []).append(round(rss_bytes() / MB, 1))
                if k == 0:
                    out["peak_rss_mb_after_1_stage"] = round(rss_after[0], 1)
            out["stages"] = len(stages)
            out["images"] = int(cold_n)
            out["cold_images_per_s"] = round(cold_n / cold_t, 1)
            out["warm_images_per_s"] = round(warm_n / warm_t, 1)
            out["first_batch_s"] = round(first_batch or 0.0, 3)
            out["first_batch_incl_open_s"] = round(first_incl_open or 0.0, 3)
            out["bytes_fetched"] = int(fetched)
            out["selected_compressed_bytes"] = int(selected)
            out["bytes_ratio"] = round(fetched / selected, 4) if selected else None
            out["http_requests"] = int(http_requests)
            out["requests_per_image"] = round(http_requests / cold_n, 4) if cold_n else None
            out["peak_rss_mb_after_3_stages"] = round(rss_after[-1], 1)
            out["rss_growth_mb"] = round(rss_after[-1] - rss_after[0], 1)
            out["ceiling_images_per_s"] = round(ceil_n / ceil_t, 1)
            if cache is not None:
                cache.close()
            pool.shutdown()
            local.close()
        finally:
            archive.close()
    out["cold_vs_ceiling"] = round(out["cold_images_per_s"] / out["ceiling_images_per_s"], 3)
    out["warm_vs_cold"] = round(out["warm_images_per_s"] / out["cold_images_per_s"], 1)
    return out


def _verdict(r: dict[str, Any]) -> dict[str, bool]:
    return {
        "cold_vs_ceiling": r["cold_vs_ceiling"] >= TARGETS["cold_vs_ceiling"],
        "warm_vs_cold": r["warm_vs_cold"] >= TARGETS["warm_vs_cold"],
        "first_batch_s": r["first_batch_s"] <= TARGETS["first_batch_s"],
        "bytes_ratio": r["bytes_ratio"] is not None and r["bytes_ratio"] <= TARGETS["bytes_ratio"],
        "requests_per_image": r["requests_per_image"] is not None
        and r["requests_per_image"] <= TARGETS["requests_per_image"],
        "rss_growth_mb": r["rss_growth_mb"] < TARGETS["rss_growth_mb"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images-per-stage", type=int, default=200)
    p.add_argument("--stages", type=int, default=3)
    p.add_argument("--workers", type=int, default=2, help="decode threads (and ceiling threads)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--archive", default=None, help="reuse this sample archive instead of generating one")
    p.add_argument("--selection", choices=["stage", "train_split", "both"], default="both")
    p.add_argument("--decoder", choices=["auto", "cv2"], default="auto", help="data.png_decoder")
    p.add_argument("--link-rtt-ms", type=float, default=0.0, help="emulated round-trip time")
    p.add_argument("--link-mbps", type=float, default=0.0, help="emulated bandwidth, MB/s (0: none)")
    args = p.parse_args(argv)

    tmp = None
    if args.archive:
        path = Path(args.archive)
        gen_s = 0.0
    else:
        tmp = tempfile.TemporaryDirectory(prefix="imgae_bench_")
        t = time.perf_counter()
        path = write_sample_archive(tmp.name, images_per_stage=args.images_per_stage, stages=args.stages,
                                    seed=0, image_px=1024, progress=False)
        gen_s = time.perf_counter() - t
    try:
        cfg = DataConfig(image_size=args.image_size, view="all", decode_workers=args.workers,
                         memory_budget_mb=512, png_decoder=args.decoder,
                         index_cache_dir=str(Path(tempfile.gettempdir()) / "imgae_bench_idx"))
        result: dict[str, Any] = {
            "archive": {"path": str(path), "bytes": path.stat().st_size, "generation_s": round(gen_s, 1),
                        "image_px": 1024},
            "cpu_count": os.cpu_count(),
            "decode_workers": args.workers,
            "image_size": args.image_size,
            "memory_budget_mb": cfg.memory_budget_mb,
            "decoder": args.decoder,
            "link": {"rtt_ms": args.link_rtt_ms, "mbps": args.link_mbps},
            "targets": TARGETS,
        }
        if args.selection == "both":  # one process per selection: peak RSS is per process
            for sel in ("stage", "train_split"):
                cmd = [sys.executable, __file__, "--archive", str(path), "--selection", sel,
                       "--workers", str(args.workers), "--image-size", str(args.image_size),
                       "--batch-size", str(args.batch_size), "--decoder", args.decoder,
                       "--link-rtt-ms", str(args.link_rtt_ms), "--link-mbps", str(args.link_mbps)]
                sub = subprocess.run(cmd, check=True, capture_output=True, text=True)
                result[sel] = json.loads(sub.stdout)[sel]
        else:
            r = run_selection(path, args.selection, cfg, args.workers, seed=42, batch_size=args.batch_size,
                              link=(args.link_rtt_ms, args.link_mbps))
            r["meets_target"] = _verdict(r)
            result[args.selection] = r
        print(json.dumps(result, indent=2))
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
