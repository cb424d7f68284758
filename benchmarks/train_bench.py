"""Trainer benchmark (issue 4 acceptance). Prints one JSON object (device named).

Scenarios (``--scenario``, default ``acceptance,one_stream``):

* ``acceptance``: ``imgae-dx train --model all --image-size 64 --epochs-per-stage 1`` over a
  3-stage sample archive (300 images per stage, 1024 px PNGs like NIH's), run as a subprocess of
  the real command line, packaged default model widths: ``wall_s`` (target ≤ 300 s on 2 CPU
  cores) and whether the run folder (docs/design.md) is complete.
* ``one_stream``: on a cold stream (a fresh trainer: nothing in the image cache; the archive file
  may sit in the OS page cache), the wall time of ``--model all`` against each single model:
  ``ratio_all_vs_slowest_single`` (target ≤ 1.2), and ``ratio_all_vs_sum_of_singles`` (what
  decoding the stream once per model would cost), and ``compute_bound_ratio``: Σ ÷ slowest of the
  models' bare train steps (``model_bench.py``, same size, batch and widths), the lowest ratio
  any data path can reach where the model steps, not decoding, take the time.
* ``gpu`` (CUDA; ``--tiny`` runs it on the CPU as a harness check): one stage trained for several
  epochs at 128² in bf16; from the warm cache (epochs ≥ 2) the trainer's images/s against the
  bare train step of ``model_bench.py`` for the same models, batch and precision (target ≥ 0.9),
  and the cold first epoch's images/s next to the decode ceiling (``stream_bench.py``'s pure
  decode + resize of the same stage on as many threads as the trainer decodes with).

The archive is generated first (not timed) unless ``--archive`` names one.

    python benchmarks/train_bench.py                                   # CPU figures
    python benchmarks/train_bench.py --scenario one_stream --tiny      # decode-bound one_stream
    python benchmarks/train_bench.py --scenario gpu --batch-size 64    # on a CUDA machine
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

import torch

sys.path.insert(0, str(Path(__file__).parent))
from model_bench import TINY, bench_one, device_name  # noqa: E402

from imgae_dx.run.records import Record, TrainRecord, ValRecord, read_records  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUN_FOLDER = ("config.yaml", "metrics.jsonl", "plots/live.png")


def _archive(args: argparse.Namespace, tmp: Path, images: int, stages: int, px: int) -> Path:
    if args.archive:
        return Path(args.archive)
    from imgae_dx.testing.sample import write_sample_archive

    folder = tmp / f"sample_{stages}x{images}_{px}"
    if (folder / "data.zip").exists():
        return folder / "data.zip"
    t0 = time.perf_counter()
    p = write_sample_archive(folder, images_per_stage=images,
                             stages=stages, seed=0, image_px=px, progress=False)
    print(f"sample archive {p} written in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return p


def _records(run: Path) -> list[Record]:
    return read_records(run / "metrics.jsonl")


def acceptance(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    archive = _archive(args, tmp, args.images_per_stage, 3, 1024)
    out = tmp / "acceptance_run"
    cmd = [sys.executable, "-m", "imgae_dx", "train", "--source", str(archive), "--out", str(out),
           "--model", "all", "--image-size", "64", "--epochs-per-stage", "1", "--stages", "all",
           "--device", args.device]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"train failed ({done.returncode}): {done.stderr[-3000:]}")
    recs = _records(out)
    train = [r for r in recs if isinstance(r, TrainRecord)]
    missing = [p for p in RUN_FOLDER if not (out / p).exists()]
    for m in ("unet", "ra", "ae"):
        for k in (1, 2, 3):
            if not (out / "checkpoints" / m / f"stage_{k}.pt").exists():
                missing.append(f"checkpoints/{m}/stage_{k}.pt")
        if not (out / "checkpoints" / m / "last.pt").exists():
            missing.append(f"checkpoints/{m}/last.pt")
    return {
        "command": "imgae-dx " + " ".join(cmd[3:]),
        "images_per_stage_in_archive": args.images_per_stage,
        "wall_s": round(wall, 1),
        "target_wall_s": 300,
        "steps": max((r.step for r in train), default=0),
        "train_images": max((r.images_seen for r in train), default=0),
        "val_records": sum(1 for r in recs if isinstance(r, ValRecord)),
        "peak_rss_mb": max((r.rss_mb or 0 for r in recs), default=0),
        "run_folder_missing": missing,
        "ok": not missing and wall <= 300,
    }


def _train(archive: Path, out: Path, models: list[str], args: argparse.Namespace,
           **over: Any) -> tuple[float, list[Record]]:
    from imgae_dx.config import load_config
    from imgae_dx.training.streaming_trainer import StreamingTrainer

    cfg = load_config(overrides={
        "source": str(archive), "out": str(out), "models": models, "stages": "all",
        "data.image_size": args.image_size, "training.epochs_per_stage": 1,
        "training.device": args.device, "logging.progress": False,
        **({"data.decode_workers": args.decode_workers} if args.decode_workers else {}), **over,
    })
    t0 = time.perf_counter()
    StreamingTrainer(cfg).train_progressive_stages()
    return time.perf_counter() - t0, _records(out)


#: narrow widths (model_bench.py's --tiny): models cost little next to decoding, as on a GPU
TINY_WIDTHS = {f"model.{m}.{k}": v for m, kw in TINY.items() for k, v in kw.items()}


def one_stream(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    archive = _archive(args, tmp, args.images_per_stage, 3, 1024)
    walls: dict[str, float] = {}
    over = TINY_WIDTHS if args.tiny else {}
    for models in (["unet"], ["ra"], ["ae"], ["unet", "ra", "ae"]):
        key = "all" if len(models) > 1 else models[0]
        wall, _ = _train(archive, tmp / f"one_stream_{key}", models, args, **over)
        walls[key] = round(wall, 2)
        print(f"one_stream {key}: {wall:.1f} s", file=sys.stderr)
    slowest = max(walls[m] for m in ("unet", "ra", "ae"))
    singles = sum(walls[m] for m in ("unet", "ra", "ae"))
    ratio = walls["all"] / slowest
    step_ms = _bare_step_ms(args)
    return {
        "image_size": args.image_size,
        "model_widths": "tiny (model_bench --tiny)" if args.tiny else "packaged defaults",
        "wall_s": walls,
        "ratio_all_vs_slowest_single": round(ratio, 3),
        "ratio_all_vs_sum_of_singles": round(walls["all"] / singles, 3),
        "bare_step_ms": step_ms,
        "compute_bound_ratio": round(sum(step_ms.values()) / max(step_ms.values()), 3),
        "target_ratio": 1.2,
        "ok": ratio <= 1.2,
    }


def _bare_step_ms(args: argparse.Namespace) -> dict[str, float]:
    """model_bench's bare train step per model, same device, size, batch and widths.

    With the data already in memory, ``--model all`` cannot beat the sum of its models' steps,
    so Σ step ÷ slowest step is the lowest ratio any data path could reach on this machine.
    """
    from imgae_dx.config import load_config

    batch = load_config().training.batch_size
    dev = torch.device(args.device if args.device != "auto" else
                       ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = "bf16" if dev.type == "cuda" else "fp32"
    return {m: bench_one(m, dev, args.image_size, batch, precision, False, args.bare_steps or 5, 1,
                         None, tiny=args.tiny, channels_last=dev.type == "cuda")["step_ms"]
            for m in ("unet", "ra", "ae")}


def gpu(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Warm-cache trainer vs bare train step, and the cold epoch vs the decode ceiling.

    Meant for a CUDA machine (bf16 + channels_last). ``--tiny`` without CUDA runs the same
    harness on the CPU (fp32, narrow widths) to check it, not to measure it.
    """
    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        return {"skipped": "no CUDA device (add --tiny to check the harness on the CPU)"}
    from stream_bench import _ceiling

    from imgae_dx.config import load_config
    from imgae_dx.streaming.sources import open_archive
    from imgae_dx.training.streaming_trainer import StreamingTrainer

    dev = torch.device("cuda" if cuda else "cpu")
    size = args.gpu_image_size
    archive = _archive(args, tmp, args.gpu_images, 1, 1024)
    models = ["unet", "ra", "ae"]
    out = tmp / "gpu_run"
    cfg = load_config(overrides={
        "source": str(archive), "out": str(out), "models": models, "stages": "all",
        "data.image_size": size, "data.view": "all", "data.decode_workers": os.cpu_count() or 2,
        "data.memory_budget_mb": 4096, "training.epochs_per_stage": args.gpu_epochs,
        "training.batch_size": args.batch_size, "training.device": dev.type,
        "training.amp": "bf16" if cuda else "off", "training.channels_last": cuda,
        "training.log_every_steps": 5, "training.checkpoint_every_steps": 10**6,
        "logging.progress": False, **(TINY_WIDTHS if args.tiny else {}),
    })
    t0 = time.perf_counter()
    StreamingTrainer(cfg).train_progressive_stages()
    wall = time.perf_counter() - t0
    recs = [r for r in _records(out) if isinstance(r, TrainRecord) and r.model == "unet"]
    cold = [r.images_per_s for r in recs if r.epoch == 0][1:]  # first window holds start-up
    warm = [r.images_per_s for r in recs if r.epoch >= 1]
    # after the trainer: the same cudnn.benchmark / TF32 switches it set are still on
    bare = {m: bench_one(m, dev, size, args.batch_size, "bf16" if cuda else "fp32", False,
                         args.bare_steps or 20, 5, None, tiny=args.tiny, channels_last=cuda)
            for m in models}
    bare_all = 1.0 / sum(1.0 / bare[m]["images_per_s"] for m in models)
    warm_ips = sum(warm) / len(warm) if warm else float("nan")
    workers = cfg.data.decode_workers
    local = open_archive(str(archive), cfg.data)
    try:
        pngs = local.index.names_with_prefix("images_001/images/")[: args.ceiling_images].tolist()
        with ThreadPoolExecutor(workers) as pool:
            n, secs = _ceiling(local, pngs, size, pool)
    finally:
        local.close()
    cold_ips = sum(cold) / len(cold) if cold else float("nan")
    return {
        "card": torch.cuda.get_device_name(0) if cuda else "none: CPU harness check (--tiny)",
        "image_size": size, "batch_size": args.batch_size,
        "precision": "bf16+channels_last" if cuda else "fp32",
        "archive": str(archive), "epochs": args.gpu_epochs, "wall_s": round(wall, 1),
        "warm_trainer_images_per_s": round(warm_ips, 1),
        "bare_step_images_per_s": {m: bare[m]["images_per_s"] for m in models},
        "bare_all_models_images_per_s": round(bare_all, 1),
        "ratio_warm_vs_bare": round(warm_ips / bare_all, 3),
        "target_ratio": 0.9,
        "cold_epoch_images_per_s": round(cold_ips, 1),
        "decode_workers": workers,
        "decode_ceiling_images_per_s": round(n / secs, 1),
        "ratio_cold_vs_ceiling": round(cold_ips / (n / secs), 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="acceptance,one_stream",
                    help="comma list of acceptance, one_stream, gpu")
    ap.add_argument("--archive", default=None, help="use this archive instead of generating one")
    ap.add_argument("--images-per-stage", type=int, default=300)
    ap.add_argument("--image-size", type=int, default=64, help="one_stream resolution")
    ap.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--tiny", action="store_true",
                    help="one_stream with narrow model widths (decoding dominates, as on a GPU)")
    ap.add_argument("--batch-size", type=int, default=64, help="gpu scenario")
    ap.add_argument("--gpu-images", type=int, default=2000, help="gpu scenario: images in the stage")
    ap.add_argument("--gpu-epochs", type=int, default=3)
    ap.add_argument("--gpu-image-size", type=int, default=128)
    ap.add_argument("--ceiling-images", type=int, default=512,
                    help="gpu scenario: images decoded for the decode ceiling")
    ap.add_argument("--decode-workers", type=int, default=None,
                    help="one_stream: PNG-decode threads (default: the config's)")
    ap.add_argument("--bare-steps", type=int, default=None,
                    help="timed bare train steps per model (default: one_stream 5, gpu 20)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    dev = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    result: dict[str, Any] = {"device": device_name(dev), "cpu_count": os.cpu_count(),
                              "load_avg_1m_at_start": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(prefix="train_bench_", dir=args.workdir) as d:
        tmp = Path(d)
        for name in [s.strip() for s in args.scenario.split(",") if s.strip()]:
            fn = {"acceptance": acceptance, "one_stream": one_stream, "gpu": gpu}[name]
            result[name] = fn(args, tmp)
    result["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
