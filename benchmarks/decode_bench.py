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

``--format jpeg``: the JPEG path of :func:`decode_image` (DCT-scaled decode at the model's scale,
then the resize policy) against OpenCV's full decode + the same resize (``INTER_AREA``), on
JPEGs made from real radiographs: each PNG of ``--source`` (a folder or a zip) is upscaled
(bicubic) to a random long side in ``--px`` and a width/height in ``--aspect`` (ZhangLab's
pediatric JPEGs are 1000–2000 px, wider than tall) and encoded at ``--quality``. Both paths run
on the same bytes, alternated image by image for ``--reps`` rounds, one thread; reported per resize
policy: ms per image, the speed ratio (full ÷ fast) of each round, and the mean |Δ| gray levels
between the two outputs (mean over images of each image's mean; the worst image's too). The
DCT-scaling rule is compared as well: ``--margins`` (the decoded side kept ≥ margin × the
resized side; the shipped :data:`~imgae_dx.data.decode.JPEG_SCALE_MARGIN` is marked).

    nice -n 0 python benchmarks/decode_bench.py --format jpeg \
        --source /work/shared/data/nih-real-dev/images --jpeg-images 200 --reps 3

``--format dicom``: RSNA-like DICOMs (:func:`imgae_dx.testing.sample.dicom.rsna_dicom`:
``--dicom-px``² 8-bit MONOCHROME2 without window, JPEG Baseline at ``--quality`` and uncompressed)
made from the same radiographs (upscaled): the fast path of :func:`decode_image` (stored values;
JPEG frames DCT-scaled at the model's scale) against the pydicom reader
(:func:`imgae_dx.data.dicom.decode_dicom`) + ``INTER_AREA``, alternated per image as above.

    nice -n 0 python benchmarks/decode_bench.py --format dicom \
        --source /work/shared/data/nih-real-dev/images --jpeg-images 100 --reps 3

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

from imgae_dx.data import jpeg, png_split
from imgae_dx.data.decode import (
    JPEG_SCALE_MARGIN,
    RESIZE_POLICIES,
    decode_gray,
    decode_image,
    decode_png,
    resize_image,
)

FILTERS = {"none": cv2.IMWRITE_PNG_FILTER_NONE, "sub": cv2.IMWRITE_PNG_FILTER_SUB,
           "up": cv2.IMWRITE_PNG_FILTER_UP, "avg": cv2.IMWRITE_PNG_FILTER_AVG,
           "paeth": cv2.IMWRITE_PNG_FILTER_PAETH}
TARGET_SPEEDUP_SAMPLE = 1.8
TARGET_JPEG_RATIO = 3.0  # fast ÷ full decode + INTER_AREA, 1024–2000 px → 128 px
TARGET_JPEG_DELTA = 1.5  # mean |Δ| gray levels


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


# ----------------------------------------------------------------------------- JPEG
def radiographs(source: Path, limit: int) -> list[np.ndarray]:
    """The first ``limit`` PNGs (sorted names) of a folder or zip archive, as uint8 gray."""
    if source.is_dir():
        blobs = (p.read_bytes() for p in sorted(source.rglob("*.png")))
    else:
        z = zipfile.ZipFile(source)
        blobs = (z.read(n) for n in sorted(z.namelist()) if n.endswith(".png"))
    out = []
    for b in blobs:
        out.append(decode_gray(b))
        if len(out) == limit:
            break
    if not out:
        raise SystemExit(f"no PNG in {source}")
    return out


def enlarge(imgs: list[np.ndarray], px: tuple[int, int], aspect: tuple[float, float],
            seed: int) -> list[np.ndarray]:
    """Each image upscaled (bicubic) to a random long side in ``px`` and width/height in ``aspect``."""
    rng = np.random.default_rng(seed)
    out = []
    for img in imgs:
        w = int(rng.integers(px[0], px[1] + 1))
        h = int(round(w / rng.uniform(*aspect)))
        out.append(cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC))
    return out


def _full_jpeg(data: bytes, size: int, policy: str) -> np.ndarray:
    """The baseline: OpenCV's full-size decode, then the same resize policy (INTER_AREA)."""
    return resize_image(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE), size, policy)


def _margin_jpeg(data: bytes, size: int, policy: str, margin: float) -> np.ndarray:
    """The fast path with another DCT-scaling margin (what ``JPEG_SCALE_MARGIN`` chooses)."""
    keep = int(np.ceil(margin * size))
    img = jpeg.decode_jpeg_gray(data, max_side=8192, keep_short=keep)
    return resize_image(img, size, policy)


def compare(items: list[bytes], fast: Any, full: Any, reps: int) -> dict[str, Any]:
    """``full`` and ``fast`` alternated image by image (both see the same machine load), over
    ``items``, ``reps`` rounds: ms/image per path, the ratio of each round, and |Δ|."""
    deltas = [float(np.abs(fast(b).astype(np.int16) - full(b)).mean()) for b in items]  # also warms up
    t_full, t_fast = [], []
    clock = time.perf_counter
    for _ in range(reps):
        a = b = 0.0
        for item in items:
            t0 = clock()
            full(item)
            t1 = clock()
            fast(item)
            a, b = a + t1 - t0, b + clock() - t1
        t_full.append(a / len(items))
        t_fast.append(b / len(items))
    ratios = [a / b for a, b in zip(t_full, t_fast, strict=True)]
    return {"full_ms": round(statistics.median(t_full) * 1e3, 3),
            "fast_ms": round(statistics.median(t_fast) * 1e3, 3),
            "ratios": [round(r, 2) for r in ratios], "ratio": round(statistics.median(ratios), 2),
            "mean_abs_delta": round(statistics.fmean(deltas), 3), "worst_image_delta": round(max(deltas), 3)}


def jpeg_main(args: argparse.Namespace) -> dict[str, Any]:
    if args.source is None:
        raise SystemExit("--format jpeg needs --source (a folder or zip of radiograph PNGs)")
    size = args.image_size
    big = enlarge(radiographs(args.source, args.jpeg_images), args.px, args.aspect, args.seed)
    items = [cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, args.quality])[1].tobytes() for im in big]
    scales = [jpeg.dct_scale(jpeg.jpeg_header(b), size) for b in items]
    rows = []
    for policy in RESIZE_POLICIES:
        r = compare(items, lambda b, p=policy: decode_image(b, size, resize=p),
                    lambda b, p=policy: _full_jpeg(b, size, p), args.reps)
        rows.append({"policy": policy, "margin": JPEG_SCALE_MARGIN, "shipped": True, **r})
    for m in args.margins:
        if m != JPEG_SCALE_MARGIN:
            r = compare(items, lambda b, m=m: _margin_jpeg(b, size, "squash", m),
                        lambda b: _full_jpeg(b, size, "squash"), args.reps)
            rows.append({"policy": "squash", "margin": m, "shipped": False, **r})
    return {
        "format": "jpeg", "images": len(items), "image_size": size,
        "px": [min(max(im.shape) for im in big), max(max(im.shape) for im in big)],
        "aspect": [round(min(im.shape[1] / im.shape[0] for im in big), 2),
                   round(max(im.shape[1] / im.shape[0] for im in big), 2)],
        "quality": args.quality, "mean_kb": round(sum(map(len, items)) / len(items) / 1024, 1),
        "dct_scales_squash": {str(n): scales.count(n) for n in sorted(set(scales))},
        "source": str(args.source), "reps": args.reps, "rows": rows, **_goals(rows[0]),
    }


def _goals(head: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets and whether ``head`` (the shipped path's row) meets them."""
    return {"target": {"ratio": TARGET_JPEG_RATIO, "mean_abs_delta": TARGET_JPEG_DELTA},
            "meets_target": {"ratio": head["ratio"] >= TARGET_JPEG_RATIO,
                             "mean_abs_delta": head["mean_abs_delta"] <= TARGET_JPEG_DELTA}}


def ratio_table(rows: list[dict[str, Any]], first: dict[str, Any], baseline: str) -> str:
    """Markdown: the ``first`` columns (header → row formatter), then times, ratios and Δ."""
    head = [*first, f"{baseline} ms/img", "fast ms/img", "ratio (median)", "ratios per round",
            "mean abs Δ", "worst image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([*(f(r) for f in first.values()), str(r["full_ms"]), str(r["fast_ms"]),
                                 f"{r['ratio']}×", ", ".join(f"{x}×" for x in r["ratios"]),
                                 str(r["mean_abs_delta"]), str(r["worst_image_delta"])]) + " |" for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- DICOM
def dicom_main(args: argparse.Namespace) -> dict[str, Any]:
    from imgae_dx.data.dicom import decode_dicom
    from imgae_dx.testing.sample.dicom import rsna_dicom

    if args.source is None:
        raise SystemExit("--format dicom needs --source (a folder or zip of radiograph PNGs)")
    size, side = args.image_size, args.dicom_px
    big = [cv2.resize(im, (side, side), interpolation=cv2.INTER_CUBIC)
           for im in radiographs(args.source, args.jpeg_images)]
    rows = []
    for kind, quality in (("JPEG Baseline", args.quality), ("uncompressed", None)):
        items = [rsna_dicom(im, f"bench-{i:05d}", quality=quality) for i, im in enumerate(big)]
        r = compare(items, lambda b: decode_image(b, size),
                    lambda b: resize_image(decode_dicom(b, max_side=8192), size, "squash"), args.reps)
        rows.append({"syntax": kind, "mean_kb": round(sum(map(len, items)) / len(items) / 1024, 1), **r})
    return {
        "format": "dicom", "images": len(big), "image_size": size, "px": side, "quality": args.quality,
        "source": str(args.source), "reps": args.reps, "rows": rows, **_goals(rows[0]),
    }


# ----------------------------------------------------------------------------- main
def _pair(kind: type, text: str) -> tuple[Any, Any]:
    a, b = (kind(x) for x in text.split(","))
    return a, b


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--format", choices=("png", "jpeg", "dicom"), default="png",
                    help="png: libpng vs the split decoder; jpeg: DCT-scaled vs full decode; "
                    "dicom: the fast path vs the pydicom reader")
    ap.add_argument("--archive", type=Path, default=None, help="png: sample archive (default: generate one)")
    ap.add_argument("--images", type=int, default=200, help="png: gray PNG members of the archive to decode")
    ap.add_argument("--filter-images", type=int, default=12, help="png: images re-encoded per filter type")
    ap.add_argument("--threads", default="1,2", help="png: decode thread counts")
    ap.add_argument("--reps", type=int, default=5, help="timed rounds (alternating the two paths)")
    ap.add_argument("--image-size", type=int, default=128, help="model resolution")
    ap.add_argument("--source", type=Path, default=None,
                    help="jpeg: folder or zip of radiograph PNGs the JPEGs are made from")
    ap.add_argument("--jpeg-images", type=int, default=200, help="jpeg, dicom: images made")
    ap.add_argument("--dicom-px", type=int, default=1024, help="dicom: side of the square frames (RSNA: 1024)")
    ap.add_argument("--px", type=lambda t: _pair(int, t), default=(1024, 2000),
                    help="jpeg: range of the long side, MIN,MAX pixels")
    ap.add_argument("--aspect", type=lambda t: _pair(float, t), default=(1.1, 1.6),
                    help="jpeg: range of width/height, MIN,MAX")
    ap.add_argument("--quality", type=int, default=90, help="jpeg, dicom: JPEG encoder quality")
    ap.add_argument("--margins", type=lambda t: [float(x) for x in t.split(",")], default=[1.0, 1.5, 2.0],
                    help="jpeg: DCT-scaling margins compared (squash)")
    ap.add_argument("--seed", type=int, default=0, help="jpeg: sizes drawn")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)  # decoding threads are ours; OpenCV's own pool would skew 1 vs N
    if args.format == "jpeg":
        out = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "loadavg": os.getloadavg(),
               "nproc": os.cpu_count(), "cv2": cv2.__version__, **jpeg_main(args)}
        print(ratio_table(out["rows"], {"policy": lambda r: r["policy"], "DCT margin": lambda r: (
            f"{r['margin']:g}" + (" (shipped)" if r["shipped"] else ""))}, "full decode + area"), file=sys.stderr)
        print(json.dumps(out, indent=2))
        return 0
    if args.format == "dicom":
        out = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "loadavg": os.getloadavg(),
               "nproc": os.cpu_count(), "cv2": cv2.__version__, **dicom_main(args)}
        print(ratio_table(out["rows"], {"DICOM transfer syntax": lambda r: r["syntax"],
                                        "KB": lambda r: str(r["mean_kb"])}, "pydicom reader + area"), file=sys.stderr)
        print(json.dumps(out, indent=2))
        return 0
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
