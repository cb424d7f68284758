"""RSNA's view scan: reading every training DICOM's header over HTTP, then the cache.

``rsna``'s views are in each DICOM's header only (``ViewPosition``), so the first opening of an
archive reads the first 4 KB of every training image (:func:`imgae_dx.data.datasets.heads.dicom_fields`)
and caches the views by archive version. This measures that scan over the loopback Range server
with an emulated link (``--mbps`` bandwidth, ``--rtt-ms`` round trip), on an RSNA-layout zip of
``--members`` DICOMs with real RSNA-style headers (:func:`imgae_dx.testing.sample.dicom.rsna_dicom`)
padded to ``--member-kb`` (RSNA's are ~130 KB), deflated like Kaggle's:

* ``bridged`` — the shipped settings (``data.gap_bridge_kb`` 256, ``max_request_mb`` 16,
  ``requests_in_flight`` 4): heads closer than 256 KB are read through, so on RSNA's members the
  scan reads the training images once in ~16 MB requests;
* ``per_member`` — ``gap_bridge_kb`` 0: one small request per header (what the scan would cost
  without bridging);
* ``cached`` — a second opening with the cache of the first: no header is read.

Reported per case: requests, MB fetched, seconds (the whole ``open_dataset``: CSVs, headers,
index). Prints one JSON object.

    nice -n 10 python benchmarks/header_scan_bench.py --members 3000 --mbps 100 --rtt-ms 40
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from imgae_dx.config import DataConfig
from imgae_dx.data.datasets import open_dataset
from imgae_dx.streaming.sources import open_archive
from imgae_dx.testing.range_server import Link, RangeServer
from imgae_dx.testing.sample.dicom import rsna_dicom


def write_archive(path: Path, members: int, member_kb: float, seed: int = 0) -> Path:
    """An RSNA-layout zip: ``members`` Normal patients, half PA, half AP, padded DICOMs."""
    rng = np.random.default_rng(seed)
    img = (rng.random((64, 64)) * 255).astype(np.uint8)
    labels, classes = ["patientId,x,y,width,height,Target"], ["patientId,class"]
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(members):
            pid = str(uuid.UUID(bytes=rng.bytes(16), version=4))
            data = rsna_dicom(img, pid, view="PA" if i % 2 else "AP")
            pad = rng.integers(0, 256, max(0, int(member_kb * 1024) - len(data)), dtype=np.uint8).tobytes()
            zf.writestr(f"stage_2_train_images/{pid}.dcm", data + pad, compress_type=zipfile.ZIP_DEFLATED,
                        compresslevel=1)
            labels.append(f"{pid},,,,,0")
            classes.append(f"{pid},Normal")
        zf.writestr("stage_2_train_labels.csv", "\n".join(labels) + "\n")
        zf.writestr("stage_2_detailed_class_info.csv", "\n".join(classes) + "\n")
    return path


def scan(url: str, cfg: DataConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    with open_archive(url, cfg) as a:
        before = a.stats()
        ix = open_dataset(a, cfg, 0, quiet=True)
        after = a.stats()
    return {"images": len(ix), "views": sorted(set(ix.view.tolist())),
            "requests": after["requests"] - before["requests"],
            "mb": round((after["bytes_fetched"] - before["bytes_fetched"]) / 1e6, 1),
            "seconds": round(time.perf_counter() - t0, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--members", type=int, default=3000, help="training DICOMs in the archive")
    ap.add_argument("--member-kb", type=float, default=130.0, help="size of each member (RSNA: ~130 KB)")
    ap.add_argument("--mbps", type=float, default=100.0, help="emulated bandwidth, MB/s")
    ap.add_argument("--rtt-ms", type=float, default=40.0, help="emulated round trip, ms")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="imgae_header_scan_") as tmp:
        path = write_archive(Path(tmp) / "rsna.zip", args.members, args.member_kb)
        link = Link(bandwidth_bytes_per_s=args.mbps * 1e6, rtt_s=args.rtt_ms / 1e3)
        out: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "loadavg": os.getloadavg(),
                               "members": args.members, "member_kb": args.member_kb,
                               "archive_mb": round(path.stat().st_size / 1e6, 1), "mbps": args.mbps,
                               "rtt_ms": args.rtt_ms}
        with RangeServer(path, link=link) as srv:
            for case, extra in (("bridged", {}), ("per_member", {"gap_bridge_kb": 0})):
                cfg = DataConfig(dataset="rsna", view="all", index_cache_dir=str(Path(tmp) / case), **extra)
                out[case] = scan(srv.url, cfg)
                if case == "bridged":
                    out["cached"] = scan(srv.url, cfg)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
