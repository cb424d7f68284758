"""The GPU check: every CUDA path of the training engine in one command, one table at the end.

    python benchmarks/gpu_check.py --out gpu_check.json      # on one H100/H200: about 8 minutes
    python benchmarks/gpu_check.py --cpu-smoke               # the same code paths on the CPU (CI)

Sections (``--sections``, default all):

* ``matrix`` — the trainer's :class:`~imgae_dx.training.step.TrainStep` for U-Net, RA and AE at
  128² (batch 128) in every precision (fp32, bf16, fp16 with a GradScaler) × memory format
  (channels_last off/on) eager, and with ``torch.compile`` for the precisions in
  ``--compile-precisions`` (channels_last on; each compile costs a minute or so). A cell passes
  when its steps raise nothing and the losses are finite. The compiled bf16 cells are also the
  bare-step throughput targets: U-Net ≥ 5,000 and RA ≥ 2,500 images/s on an H100/H200.
* ``ddp`` — ``torchrun`` with 2 processes over a loopback sample archive served by HTTP byte ranges
  (the real streaming path): NCCL on 2 GPUs, gloo with both ranks on the one GPU otherwise (NCCL
  refuses two ranks on one device). Passes when both ranks end with identical weights (and rank 0's
  checkpoint holds them).
* ``trainer`` — ``train_bench.py --scenario gpu`` at 128²: the trainer from the warm cache against
  the bare step (target ≥ 0.9), and the cold epoch against the decode ceiling at as many threads as
  the machine has cores.

``--cpu-smoke`` runs every section on the CPU with narrow widths, 32² images, one step per cell,
gloo, and ``torch.compile(backend="eager")`` (Dynamo's tracing without Inductor's C++ build), so
the script cannot rot between the sessions that have a GPU. Nothing is downloaded: the device
machine needs only what ``benchmarks/RESULTS.md`` says to carry (pydantic's wheels).
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
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from model_bench import TINY, bench_one, device_name  # noqa: E402

#: bare-step targets on an H100/H200 at 128², bf16 + channels_last, compiled (images/s)
TARGETS = {"unet": 5000.0, "ra": 2500.0}


# ------------------------------------------------------------------------------ sections
def matrix(args: argparse.Namespace, dev: torch.device) -> list[dict[str, Any]]:
    rows = []
    models = ("unet", "ra", "ae")
    cells = [(m, p, cl, False) for m in models for p in ("fp32", "bf16", "fp16") for cl in (False, True)]
    cells += [(m, p, True, True) for m in models for p in args.compile_precisions.split(",") if p]
    for name, precision, cl, compiled in cells:
        t0 = time.perf_counter()
        try:
            r = bench_one(name, dev, args.image_size, args.batch_size, precision, compiled,
                          args.compiled_steps if compiled else args.steps, args.warmup,
                          None, tiny=args.cpu_smoke, channels_last=cl,
                          compile_backend="eager" if args.cpu_smoke else None)
            ok = bool(r["finite"])
        except Exception as e:  # one failing cell must not hide the others
            r = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            ok = False
        r.update(model=name, precision=precision, channels_last=cl, compiled=compiled, ok=ok,
                 cell_s=round(time.perf_counter() - t0, 1))
        target = TARGETS.get(name) if compiled and precision == "bf16" and not args.cpu_smoke else None
        if target is not None and ok:
            r["target_images_per_s"] = target
            r["target_met"] = r["images_per_s"] >= target
        print(json.dumps(r), file=sys.stderr, flush=True)
        rows.append(r)
        torch._dynamo.reset()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _write_archive(folder: Path, images: int, stages: int, px: int) -> Path:
    from imgae_dx.testing.sample import write_sample_archive

    return write_sample_archive(folder, images_per_stage=images, stages=stages, seed=0, image_px=px,
                                progress=False)


def ddp(args: argparse.Namespace, dev: torch.device, tmp: Path) -> dict[str, Any]:
    from imgae_dx.run.checkpoint import read_checkpoint, state_dict_digest
    from imgae_dx.testing.range_server import RangeServer

    archive = _write_archive(tmp / "ddp_sample", 120, 2, 128 if args.cpu_smoke else 256)
    gpus = torch.cuda.device_count() if dev.type == "cuda" else 0
    backend = "nccl" if gpus >= 2 else "gloo"
    out, res = tmp / "ddp_run", tmp / "ddp_res"
    res.mkdir()
    t0 = time.perf_counter()
    with RangeServer(archive) as server:
        over = {
            "source": server.url, "out": str(out), "models": ["unet", "ra", "ae"],
            "stages": ["images_001", "images_002"], "data.image_size": 32 if args.cpu_smoke else 64,
            "data.view": "all", "data.val_fraction": 0.3, "training.batch_size": 4,
            "training.epochs_per_stage": 1, "training.device": dev.type,
            "training.dist_backend": backend, "training.amp": "auto",
            "training.checkpoint_every_steps": 3, "logging.progress": False,
            "data.index_cache_dir": str(tmp / "idx"),
        }
        if args.cpu_smoke:
            over.update({f"model.{m}.{k}": v for m, kw in TINY.items() for k, v in kw.items()})
            over.update({"model.unet.depth": 3})
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(Path(__file__).resolve()), "--ddp-worker", json.dumps(over), str(res)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.ddp_timeout)
    row: dict[str, Any] = {"backend": backend, "gpus": gpus, "wall_s": round(time.perf_counter() - t0, 1)}
    if done.returncode != 0:
        row.update(ok=False, error=(done.stdout + done.stderr)[-1500:])
        return row
    ranks = [json.loads((res / f"rank{r}.json").read_text()) for r in (0, 1)]
    same = ranks[0]["digests"] == ranks[1]["digests"]
    saved = {m: state_dict_digest(read_checkpoint(out / "checkpoints" / m / "last.pt").model)
             for m in ranks[0]["digests"]}
    row.update(steps=ranks[0]["step"], precision=ranks[0]["precision"],
               identical_weights_across_ranks=same, checkpoint_holds_them=saved == ranks[0]["digests"],
               ok=same and saved == ranks[0]["digests"] and ranks[0]["step"] == ranks[1]["step"] > 0)
    return row


def ddp_worker(overrides_json: str, result_dir: str) -> int:
    """One rank of the ``ddp`` section (started by torchrun): train, then write this rank's digests."""
    from imgae_dx.config import load_config
    from imgae_dx.run.checkpoint import state_dict_digest
    from imgae_dx.training.streaming_trainer import StreamingTrainer

    tr = StreamingTrainer(load_config(overrides=json.loads(overrides_json)))
    res = tr.train_progressive_stages()
    rank = int(os.environ["RANK"])
    (Path(result_dir) / f"rank{rank}.json").write_text(json.dumps({
        "step": res.step, "precision": tr.precision.name,
        "digests": {n: state_dict_digest(m.state_dict()) for n, m in tr.models.items()}}))
    return 0


def trainer(args: argparse.Namespace, dev: torch.device, tmp: Path) -> dict[str, Any]:
    import train_bench

    ns = argparse.Namespace(
        archive=None, images_per_stage=0, image_size=64, device=dev.type,
        tiny=args.cpu_smoke, batch_size=4 if args.cpu_smoke else 64,
        gpu_images=40 if args.cpu_smoke else 2000, gpu_epochs=2, gpu_image_size=32 if args.cpu_smoke else 128,
        ceiling_images=16 if args.cpu_smoke else 512, decode_workers=None,
        bare_steps=2 if args.cpu_smoke else 20, workdir=str(tmp))
    r = train_bench.gpu(ns, tmp)
    r["ok"] = bool(args.cpu_smoke or r["ratio_warm_vs_bare"] >= r["target_ratio"])
    return r


# ------------------------------------------------------------------------------ report
def table(result: dict[str, Any]) -> str:
    lines = [f"GPU check on {result['device']} (torch {result['torch']}), {result['wall_s']} s",
             f"{'section':8} {'item':34} {'result':>30}  ok"]
    for r in result.get("matrix", []):
        item = (f"{r['model']} {r['precision']}{' +cl' if r['channels_last'] else ''}"
                f"{' compiled' if r['compiled'] else ''}")
        val = r.get("error") or f"{r['images_per_s']:.0f} img/s, loss {r['loss']:.4g}" + (
            f", scale {r['loss_scale']:.0f}" if "loss_scale" in r else "")
        if "target_images_per_s" in r:
            val += f" (target {r['target_images_per_s']:.0f})"
        ok = r["ok"] and r.get("target_met", True)
        lines.append(f"{'matrix':8} {item:34} {val[:60]:>30}  {'yes' if ok else 'NO'}")
    if "ddp" in result:
        d = result["ddp"]
        val = d.get("error", "")[-60:] or (f"{d['steps']} steps, {d['precision']}, identical "
                                           f"{d['identical_weights_across_ranks']}")
        lines.append(f"{'ddp':8} {'2 ranks, ' + d['backend']:34} {val:>30}  {'yes' if d['ok'] else 'NO'}")
    if "trainer" in result:
        t = result["trainer"]
        lines.append(f"{'trainer':8} {'warm cache / bare step':34} "
                     f"{t['ratio_warm_vs_bare']:>24.3f} (≥0.9)  {'yes' if t['ok'] else 'NO'}")
        lines.append(f"{'trainer':8} {'cold epoch / decode ceiling':34} {t['ratio_cold_vs_ceiling']:>30.3f}  "
                     f"({t['decode_workers']} threads, ceiling {t['decode_ceiling_images_per_s']} img/s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="run every section on the CPU, tiny")
    ap.add_argument("--sections", default="matrix,ddp,trainer")
    ap.add_argument("--compile-precisions", default="bf16,fp16",
                    help="precisions of the compiled cells (channels_last on); fp32 adds ~3 min")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="timed steps of an eager cell")
    ap.add_argument("--compiled-steps", type=int, default=None, help="timed steps of a compiled cell")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--ddp-timeout", type=int, default=300)
    ap.add_argument("--out", default=None, help="also write the result JSON here")
    ap.add_argument("--ddp-worker", nargs=2, metavar=("OVERRIDES_JSON", "RESULT_DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.ddp_worker:
        return ddp_worker(*args.ddp_worker)
    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu-smoke to check the harness on the CPU", file=sys.stderr)
        return 2
    dev = torch.device("cpu" if smoke else "cuda")
    for k, small, big in (("image_size", 32, 128), ("batch_size", 2, 128), ("steps", 1, 5),
                          ("compiled_steps", 1, 20), ("warmup", 1, 3)):
        if getattr(args, k) is None:
            setattr(args, k, small if smoke else big)
    if dev.type == "cuda":  # what the trainer sets for training.cudnn_benchmark / tf32
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    t0 = time.perf_counter()
    result: dict[str, Any] = {"device": device_name(dev), "torch": torch.__version__, "cpu_smoke": smoke}
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as d:
        tmp = Path(d)
        if "matrix" in sections:
            result["matrix"] = matrix(args, dev)
        if "ddp" in sections:
            result["ddp"] = ddp(args, dev, tmp)
        if "trainer" in sections:
            result["trainer"] = trainer(args, dev, tmp)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    ok = (all(r["ok"] and r.get("target_met", True) for r in result.get("matrix", []))
          and result.get("ddp", {}).get("ok", True) and result.get("trainer", {}).get("ok", True))
    result["ok"] = ok
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    print(table(result))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
