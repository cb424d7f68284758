"""Train-step throughput of every model: images/s per precision (fp32, bf16, fp16 + GradScaler),
memory format (channels_last or not) and eager vs ``torch.compile``. Prints one JSON object (with
the device name) to stdout.

    python benchmarks/model_bench.py                       # 128², batch 128, all models, all modes
    python benchmarks/model_bench.py --device cpu --tiny --batch-size 4 --steps 2 --warmup 1

``--tiny`` swaps in narrow widths (same depth and blocks) to prove the harness on a CPU; its
figures are not the models' throughput.

A step is the trainer's :class:`~imgae_dx.training.step.TrainStep` (U-Net: noise + forward +
backward + Adam; RA: both alternating updates; AE: forward + backward + Adam; with fp16 the
GradScaler's scale/unscale/step/update), including its one device sync for the returned losses —
what the trainer pays per batch. Data is a fixed random batch already on the
device (the data path has its own benchmark).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time

import torch

from imgae_dx.models import create_model, create_objective
from imgae_dx.training.precision import resolve_precision
from imgae_dx.training.step import TrainStep


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"CPU {line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


TINY = {
    "unet": {"base_channels": 8, "groups": 4},
    "ra": {"channels": [8, 16, 32, 32, 32], "zdim": 32},
    "ae": {"channels": [8, 16, 32, 32]},
}


def bench_one(name: str, dev: torch.device, size: int, batch: int, precision: str, compiled: bool,
              steps: int, warmup: int, compile_mode: str | None, tiny: bool = False,
              channels_last: bool = False, compile_backend: str | None = None) -> dict:
    """One (model, precision, memory format, compile) cell: images/s of the trainer's step."""
    torch.manual_seed(0)
    model = create_model(name, size, **(TINY[name] if tiny else {})).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    obj = create_objective(name, model)  # after .to(dev): fused Adam on CUDA
    if compiled:
        obj.compile(**({"mode": compile_mode} if compile_mode else {}),
                    **({"backend": compile_backend} if compile_backend else {}))
    amp = {"fp32": "off", "bf16": "bf16", "fp16": "fp16"}[precision]
    step = TrainStep(obj, resolve_precision(amp, dev), grad_clip=1.0,
                     generator=torch.Generator(device=dev).manual_seed(0))
    x = torch.rand(batch, 1, size, size, device=dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for _ in range(warmup):
        step(x)
    _sync(dev)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        out = step(x)
    _sync(dev)
    dt = time.perf_counter() - t0
    res = {
        "model": name, "precision": step.precision.name, "channels_last": channels_last,
        "compiled": compiled, "images_per_s": round(steps * batch / dt, 1),
        "step_ms": round(1000 * dt / steps, 2), "warmup_s": round(warm_s, 2),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "loss": round(out["loss"], 5), "finite": bool(math.isfinite(out["loss"])),
    }
    if "loss_scale" in out:
        res["loss_scale"] = out["loss_scale"]
    if dev.type == "cuda":
        res["peak_mem_gb"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="unet,ra,ae")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5, help="steps before timing (compile happens here)")
    ap.add_argument("--precisions", default="fp32,bf16", help="any of fp32, bf16, fp16")
    ap.add_argument("--channels-last", default="on", help="on and/or off (memory format)")
    ap.add_argument("--compile", default="eager,compile", help="eager and/or compile")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--tiny", action="store_true", help="narrow widths: proves the harness only")
    args = ap.parse_args(argv)
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                       else ("cpu" if args.device == "auto" else args.device))
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    results = []
    cells = [(n, p, cl == "on", m == "compile") for n in args.models.split(",")
             for p in args.precisions.split(",") for cl in args.channels_last.split(",")
             for m in args.compile.split(",")]
    for name, precision, cl, compiled in cells:
        try:
            r = bench_one(name, dev, args.image_size, args.batch_size, precision, compiled,
                          args.steps, args.warmup, args.compile_mode, args.tiny, channels_last=cl)
        except Exception as e:  # report and go on: one failing mode must not hide others
            r = {"model": name, "precision": precision, "channels_last": cl, "compiled": compiled,
                 "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        print(json.dumps(r), file=sys.stderr, flush=True)
        results.append(r)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        torch._dynamo.reset()
    print(json.dumps({
        "device": device_name(dev), "torch": torch.__version__, "image_size": args.image_size,
        "batch_size": args.batch_size, "steps": args.steps, "tf32": dev.type == "cuda",
        "tiny": args.tiny,
        "results": results,
    }, indent=1))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
