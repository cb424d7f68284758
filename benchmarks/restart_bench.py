"""A restarted run re-fetches nothing it had decoded: SIGKILL mid stage 2, then ``--resume``.

    python benchmarks/restart_bench.py                      # 3 stages × 300 images at 1024 px
    python benchmarks/restart_bench.py --smoke              # CI: 3 × 120 at 256 px

The archive is served over loopback HTTP by byte ranges (the real client path). Three runs of
``imgae-dx train`` (subprocesses, tiny widths, ``data.cache: persistent``): an uninterrupted
reference; a run killed with SIGKILL once its ``last.pt`` is in stage 2 past batch 2; and the
``--resume`` of that run. Every Range request the resumed process sends is mapped back to the
archive members it covers, so the bytes it fetched are counted per stage. Prints one JSON object:
the bytes re-fetched for the stages cached before the kill (target 0), those fetched for what was
left to stream, and whether the final weights equal the reference's bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

TINY = {
    "models": ["unet", "ae"], "data": {"image_size": 64, "view": "all", "val_fraction": 0.3,
                                       "cache": "persistent", "decode_workers": 2},
    "model": {"unet": {"depth": 3, "base_channels": 8, "groups": 4},
              "ae": {"channels": [8, 16, 16, 16], "latent_dim": 8}},
    "training": {"batch_size": 4, "epochs_per_stage": 1, "device": "cpu", "checkpoint_every_steps": 2,
                 "log_every_steps": 5},
    "logging": {"progress": False},
}


def _train(cfg: Path, url: str, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "imgae_dx", "train", "--config", str(cfg),
                             "--source", url, "--out", str(out), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def _bytes_by_stage(log: list[tuple[str, str, str, int]], archive: Path) -> dict[str, int]:
    """Bytes of the logged Range requests, attributed to the stage of the members they cover."""
    from imgae_dx.config import DataConfig
    from imgae_dx.streaming.sources import open_archive

    a = open_archive(str(archive), DataConfig())
    try:
        idx = a.index
        names = [idx.name(i) for i in range(len(idx))]
        starts, ends = idx.spans(np.arange(len(idx)))
    finally:
        a.close()
    out: dict[str, int] = {}
    for method, _, rng, status in log:
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", rng or "")
        if method != "GET" or status != 206 or not m:
            continue
        lo, hi = int(m.group(1)), int(m.group(2)) + 1
        hit = np.flatnonzero((starts < hi) & (ends > lo))
        stage = names[hit[0]].split("/", 1)[0] if hit.size and "/" in names[hit[0]] else "metadata"
        out[stage] = out.get(stage, 0) + (hi - lo)
    return out


def _stage_sizes(archive: Path) -> dict[str, int]:
    """Compressed bytes of each stage's members (for scale)."""
    from imgae_dx.config import DataConfig
    from imgae_dx.streaming.sources import open_archive

    with open_archive(str(archive), DataConfig()) as a:
        out: dict[str, int] = {}
        for i in range(len(a.index)):
            name = a.index.name(i)
            if "/" in name:
                s, e = a.index.span(i)
                out[name.split("/", 1)[0]] = out.get(name.split("/", 1)[0], 0) + e - s
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--images-per-stage", type=int, default=300)
    ap.add_argument("--image-px", type=int, default=1024)
    ap.add_argument("--timeout", type=int, default=900)
    args = ap.parse_args(argv)
    from imgae_dx.run.checkpoint import read_checkpoint, state_dict_digest
    from imgae_dx.testing.kill import sigkill_in_stage
    from imgae_dx.testing.range_server import RangeServer
    from imgae_dx.testing.sample import write_sample_archive

    n, px = (120, 256) if args.smoke else (args.images_per_stage, args.image_px)
    with tempfile.TemporaryDirectory(prefix="restart_bench_") as d:
        tmp = Path(d)
        archive = write_sample_archive(tmp / "sample", images_per_stage=n, stages=3, seed=0,
                                       image_px=px, progress=False)
        cfg = tmp / "tiny.yaml"
        cfg.write_text(yaml.safe_dump({**TINY, "data": {**TINY["data"], "index_cache_dir": str(tmp / "idx")}}))
        with RangeServer(archive) as server:
            ref = _train(cfg, server.url, tmp / "ref")
            assert ref.wait(args.timeout) == 0, ref.stderr.read().decode()[-2000:]
            run = tmp / "run"
            proc = _train(cfg, server.url, run)
            killed = sigkill_in_stage(proc, run, "images_002", min_batch=2, timeout=args.timeout,
                                      poll_s=0.02)
            proc.wait(60)
            if killed is None:
                print(json.dumps({"error": "the run ended before it could be killed in stage 2"}))
                return 1
            before = len(server.request_log())
            resumed = _train(cfg, server.url, run, "--resume")
            assert resumed.wait(args.timeout) == 0, resumed.stderr.read().decode()[-2000:]
            log = server.request_log()[before:]
        fetched = _bytes_by_stage(log, archive)
        same = all(
            state_dict_digest(read_checkpoint(tmp / "ref" / "checkpoints" / m / "last.pt").model)
            == state_dict_digest(read_checkpoint(run / "checkpoints" / m / "last.pt").model)
            for m in TINY["models"])
        stage_bytes = _stage_sizes(archive)
    result = {
        "archive": f"3 stages × {n} images at {px} px", "killed_at": killed,
        "resumed_fetched_bytes": fetched,
        "refetched_bytes_for_stage_1": fetched.get("images_001", 0),
        "target_refetched": 0,
        "stage_2_and_3_bytes_fetched": fetched.get("images_002", 0) + fetched.get("images_003", 0),
        "final_weights_identical": same,
        "ok": fetched.get("images_001", 0) == 0 and same,
        "stage_bytes_in_archive": stage_bytes,
    }
    print(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
