"""ImgAE-Dx streaming vs the loaders users would otherwise pick, on the same images.

Same images (one sample-archive stage of ≥ 1,000 PNGs at 1024 px), same output (B×1×128×128
float tensors, batches of 32), two decoding cores each, run side by side, each loader in its own
process so its peak RSS is its own:

(a) ImgAE-Dx: ``StreamingNIHDataset`` over loopback HTTP (``RangeServer``) — cold (nothing cached,
    index read over HTTP), then warm (second epoch, from the preprocessed-image cache). One
    process, ``data.decode_workers`` = 2 threads.
(b) torchxrayvision's ``NIH_Dataset`` over the extracted folder (``XRayCenterCrop`` +
    ``XRayResizer(128)``; skimage engine = its default, and cv2 engine), ``DataLoader`` with 2
    worker processes. Runs in the benchmark venv (``benchmarks/.venv-bench``: torch 2.14.1,
    torchvision 0.29.1, torchxrayvision), never in the project's environment.
(c) The seed's naive approach: the whole stage archive downloaded over HTTP into a ``BytesIO``,
    read with ``zipfile`` and PIL, one process.

Reported per loader: images/s (images ÷ wall time from start, opening included), time to first
batch, peak RSS (main process; largest worker for (b)), bytes read, and the ratios.

    python benchmarks/compare_loaders.py                     # archive in benchmarks/out/a1000
    python benchmarks/compare_loaders.py --images 1000 --json benchmarks/out/compare.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BATCH = 32
STAGE = "images_001"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------ children
def child_imgae(url: str, size: int, workers: int, limit: int, max_request_mb: float = 16.0,
                in_flight: int = 4) -> dict:
    """(a): cold epoch then warm epoch of StreamingNIHDataset over HTTP."""
    from imgae_dx.config import DataConfig
    from imgae_dx.data.dataset import StreamingNIHDataset, make_cache
    from imgae_dx.data.datasets.nih import NIHIndex
    from imgae_dx.streaming.sources import open_archive

    base = _rss_mb()  # interpreter + torch + cv2 + the package, before any data
    with tempfile.TemporaryDirectory() as idx:
        cfg = DataConfig(image_size=size, view="all", decode_workers=workers, cache="memory",
                         index_cache_dir=idx, max_request_mb=max_request_mb,
                         requests_in_flight=in_flight)
        t0 = time.perf_counter()
        archive = open_archive(url, cfg)
        nih = NIHIndex.from_archive(archive)
        members = archive.index.names_with_prefix(f"{STAGE}/images/")[:limit]
        ds = StreamingNIHDataset(archive, nih, STAGE, "train", cfg, seed=0, batch_size=BATCH,
                                 cache=make_cache(cfg), drop_last=False, members=members)
        first = None
        n = 0
        for b in ds.batches():
            assert b.images.shape[1:] == (1, size, size) and b.images.dtype.__str__() == "torch.float32"
            if first is None:
                first = time.perf_counter() - t0
            n += len(b)
        cold_s = time.perf_counter() - t0
        st = ds.stats()
        cold_bytes = archive.stats()["bytes_fetched"]
        rss_cold = _rss_mb()
        ds.set_epoch(1)
        t1 = time.perf_counter()
        wfirst = None
        wn = 0
        for b in ds.batches():
            if wfirst is None:
                wfirst = time.perf_counter() - t1
            wn += len(b)
        warm_s = time.perf_counter() - t1
        out = {
            "cold": {"images": n, "wall_s": cold_s, "images_per_s": n / cold_s, "first_batch_s": first,
                     "bytes_read": cold_bytes, "requests": archive.stats()["requests"],
                     "peak_rss_mb": rss_cold, "import_rss_mb": base, "skipped": st["skipped"]},
            "warm": {"images": wn, "wall_s": warm_s, "images_per_s": wn / warm_s, "first_batch_s": wfirst,
                     "bytes_read": archive.stats()["bytes_fetched"] - cold_bytes,
                     "peak_rss_mb": _rss_mb(), "import_rss_mb": base, "cache_hits": ds.stats()["cache_hits"] - st["cache_hits"]},
        }
        archive.close()
        return out


def child_naive(url: str, size: int, limit: int) -> dict:
    """(c): the seed's approach — whole archive into BytesIO, zipfile + PIL, one process."""
    import io

    import numpy as np
    import requests
    import torch
    from PIL import Image

    base = _rss_mb()
    t0 = time.perf_counter()
    resp = requests.get(url, timeout=600)
    resp.raise_for_status()
    buf = io.BytesIO(resp.content)
    nbytes = len(resp.content)
    zf = zipfile.ZipFile(buf)
    names = sorted(n for n in zf.namelist() if n.startswith(f"{STAGE}/images/") and n.endswith(".png"))[:limit]
    first = None
    n = 0
    batch = []
    for name in names:
        img = Image.open(io.BytesIO(zf.read(name))).convert("L").resize((size, size))
        batch.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None])
        if len(batch) == BATCH or name == names[-1]:
            x = torch.stack(batch)
            assert x.shape[1:] == (1, size, size)
            if first is None:
                first = time.perf_counter() - t0
            n += len(batch)
            batch = []
    wall = time.perf_counter() - t0
    return {"images": n, "wall_s": wall, "images_per_s": n / wall, "first_batch_s": first,
            "bytes_read": nbytes, "peak_rss_mb": _rss_mb(), "import_rss_mb": base}


XRV_CHILD = r"""
import json, os, resource, sys, time
import torch, torchvision, torchxrayvision as xrv
t0 = time.perf_counter()  # after the imports, like the other loaders
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
imgpath, csvpath, bbox, size, workers, limit, engine = sys.argv[1:8]
size, workers, limit = int(size), int(workers), int(limit)
torch.set_num_threads(1)
tf = torchvision.transforms.Compose([xrv.datasets.XRayCenterCrop(),
                                     xrv.datasets.XRayResizer(size, engine=engine)])
ds = xrv.datasets.NIH_Dataset(imgpath=imgpath, csvpath=csvpath, bbox_list_path=bbox,
                              views=["PA", "AP"], transform=tf, unique_patients=False)
sub = torch.utils.data.Subset(ds, range(min(limit, len(ds))))
dl = torch.utils.data.DataLoader(sub, batch_size=BATCH_SIZE, num_workers=workers)
first, n, nbytes = None, 0, os.path.getsize(csvpath)
for b in dl:
    x = b["img"].float()
    assert tuple(x.shape[1:]) == (1, size, size), x.shape
    if first is None:
        first = time.perf_counter() - t0
    n += x.shape[0]
for i in range(len(sub)):
    nbytes += os.path.getsize(os.path.join(imgpath, ds.csv["Image Index"].iloc[i]))
wall = time.perf_counter() - t0
print(json.dumps({"images": n, "wall_s": wall, "images_per_s": n / wall, "first_batch_s": first,
                  "bytes_read": nbytes,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "import_rss_mb": base,
                  "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "versions": {"torchxrayvision": xrv.__version__, "torch": torch.__version__}}))
""".replace("BATCH_SIZE", str(BATCH))


# ------------------------------------------------------------------------------ set-up
def ensure_archive(path: Path, images: int) -> Path:
    if not path.is_file():
        from imgae_dx.testing.sample import write_sample_archive

        print(f"writing {path} ({images} images at 1024 px; a few minutes)…", file=sys.stderr)
        write_sample_archive(path.parent, images_per_stage=images, stages=1, seed=0, image_px=1024)
    return path


def extract_folder(archive: Path, limit: int) -> tuple[Path, Path, Path]:
    """Extracted images folder + a Data_Entry csv of just those images (xrv reads the csv whole)."""
    root = archive.parent / "extracted"
    imgdir = root / STAGE / "images"
    with zipfile.ZipFile(archive) as zf:
        names = sorted(n for n in zf.namelist() if n.startswith(f"{STAGE}/images/") and n.endswith(".png"))[:limit]
        if not imgdir.is_dir() or len(list(imgdir.iterdir())) < len(names):
            zf.extractall(root, members=names)
        have = {Path(n).name for n in names}
        lines = zf.read("Data_Entry_2017.csv").decode().splitlines()
        rows = [ln for ln in lines[1:] if ln.split(",", 1)[0] in have]
        csv = root / "Data_Entry_2017.csv"
        csv.write_text("\n".join([lines[0], *rows]) + "\n")
        bbox = root / "BBox_List_2017.csv"
        bbox.write_bytes(zf.read("BBox_List_2017.csv"))
    return imgdir, csv, bbox


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0.0
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    except (OSError, ValueError, IndexError):
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gb": round(mem, 1),
            "loadavg": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "python": platform.python_version()}


def _run_child(cmd: list[str], timeout: float) -> dict:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "OPENCV_NUM_THREADS": "1"})
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archive", type=Path, default=HERE / "out" / "a1000" / "data.zip")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--bench-python", default=str(HERE / ".venv-bench" / "bin" / "python"))
    ap.add_argument("--loaders", default="a,b,c", help="subset of a,b,c")
    ap.add_argument("--xrv-engines", default="skimage,cv2")
    ap.add_argument("--json", type=Path, default=HERE / "out" / "compare_loaders.json")
    ap.add_argument("--lowmem", action="store_true",
                    help="also run (a) with data.max_request_mb=4, data.requests_in_flight=2")
    ap.add_argument("--_child", choices=["a", "c"], help=argparse.SUPPRESS)
    ap.add_argument("--_mrm", type=float, default=16.0, help=argparse.SUPPRESS)
    ap.add_argument("--_inflight", type=int, default=4, help=argparse.SUPPRESS)
    ap.add_argument("--_url", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child == "a":
        print(json.dumps(child_imgae(args._url, args.image_size, args.workers, args.images,
                                     args._mrm, args._inflight)))
        return 0
    if args._child == "c":
        print(json.dumps(child_naive(args._url, args.image_size, args.images)))
        return 0

    from imgae_dx.testing import RangeServer

    archive = ensure_archive(args.archive, args.images)
    loaders = set(args.loaders.split(","))
    res: dict = {"machine": machine(), "archive": str(archive), "archive_bytes": archive.stat().st_size,
                 "images": args.images, "image_size": args.image_size, "workers": args.workers,
                 "command": " ".join([Path(sys.executable).name, *sys.argv])}
    me = [sys.executable, str(Path(__file__).resolve())]
    common = ["--image-size", str(args.image_size), "--workers", str(args.workers), "--images", str(args.images)]
    with RangeServer(archive) as srv:
        if "a" in loaders:
            print("(a) ImgAE-Dx streaming…", file=sys.stderr)
            res["imgae_dx"] = _run_child([*me, "--_child", "a", "--_url", srv.url, *common], 1800)
            if args.lowmem:
                print("(a') ImgAE-Dx streaming, 4 MB requests, 2 in flight…", file=sys.stderr)
                res["imgae_dx_lowmem"] = _run_child([*me, "--_child", "a", "--_url", srv.url, *common,
                                                     "--_mrm", "4", "--_inflight", "2"], 1800)
        if "c" in loaders:
            print("(c) naive BytesIO + zipfile + PIL…", file=sys.stderr)
            res["naive"] = _run_child([*me, "--_child", "c", "--_url", srv.url, *common], 1800)
    if "b" in loaders:
        if not Path(args.bench_python).is_file():
            res["torchxrayvision"] = {"error": f"no benchmark venv at {args.bench_python}"}
        else:
            imgdir, csv, bbox = extract_folder(archive, args.images)
            for engine in args.xrv_engines.split(","):
                print(f"(b) torchxrayvision NIH_Dataset ({engine})…", file=sys.stderr)
                res[f"torchxrayvision_{engine}"] = _run_child(
                    [args.bench_python, "-c", XRV_CHILD, str(imgdir), str(csv), str(bbox),
                     str(args.image_size), str(args.workers), str(args.images), engine], 3600)
    res["ratios"] = ratios(res)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2))
    print(table(res))
    print(json.dumps(res["ratios"], indent=2))
    return 0


def ratios(res: dict) -> dict:
    out: dict = {}
    a = res.get("imgae_dx", {})
    cold, warm = a.get("cold"), a.get("warm")
    for key in ("torchxrayvision_skimage", "torchxrayvision_cv2"):
        b = res.get(key)
        if cold and b and "images_per_s" in b:
            out[f"imgae_cold_vs_{key}_images_per_s"] = cold["images_per_s"] / b["images_per_s"]
    c = res.get("naive")
    if cold and c:
        out["naive_vs_imgae_cold_peak_rss"] = c["peak_rss_mb"] / cold["peak_rss_mb"]
        if "import_rss_mb" in c and "import_rss_mb" in cold:
            out["naive_vs_imgae_cold_rss_above_imports"] = (
                (c["peak_rss_mb"] - c["import_rss_mb"]) / max(1e-9, cold["peak_rss_mb"] - cold["import_rss_mb"]))
            # the most any loader in this process could reach: one holding nothing past its imports
            out["naive_vs_imports_alone_peak_rss"] = c["peak_rss_mb"] / cold["import_rss_mb"]
        out["imgae_cold_vs_naive_images_per_s"] = cold["images_per_s"] / c["images_per_s"]
        out["naive_vs_imgae_first_batch_s"] = c["first_batch_s"] / cold["first_batch_s"]
    lo = (res.get("imgae_dx_lowmem") or {}).get("cold")
    if lo and c:
        out["naive_vs_imgae_lowmem_peak_rss"] = c["peak_rss_mb"] / lo["peak_rss_mb"]
    if cold and warm:
        out["warm_vs_cold_images_per_s"] = warm["images_per_s"] / cold["images_per_s"]
    return out


def table(res: dict) -> str:
    rows = [("loader", "images/s", "first batch s", "peak RSS MB", "RSS above imports MB", "bytes read MB")]
    a = res.get("imgae_dx", {})
    named = [("ImgAE-Dx cold (HTTP)", a.get("cold")), ("ImgAE-Dx warm (cache)", a.get("warm"))]
    lo = res.get("imgae_dx_lowmem")
    if lo:
        named.append(("ImgAE-Dx cold, 4 MB × 2 in flight", lo.get("cold")))
    for key in ("torchxrayvision_skimage", "torchxrayvision_cv2"):
        named.append((key.replace("_", " "), res.get(key)))
    named.append(("naive BytesIO+zipfile+PIL", res.get("naive")))
    for name, r in named:
        if not r or "images_per_s" not in r:
            continue
        rss = f"{r['peak_rss_mb']:.0f}"
        if "worker_peak_rss_mb" in r:
            rss += f" (+ workers ≤{r['worker_peak_rss_mb']:.0f} each)"
        above = f"{r['peak_rss_mb'] - r['import_rss_mb']:.0f}" if "import_rss_mb" in r else "-"
        rows.append((name, f"{r['images_per_s']:.1f}", f"{r['first_batch_s']:.2f}", rss, above,
                     f"{r['bytes_read'] / 1e6:.1f}"))
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
