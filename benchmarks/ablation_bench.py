"""Ablation: why the U-Net is trained as a *denoising* autoencoder.

A U-Net with skip connections trained to reconstruct its clean input learns (close to) the
identity: it reconstructs abnormal images almost perfectly, so the residual carries little signal.
The same U-Net trained with coarse noise (the DAE) must restore the image from its context, and
its residual separates abnormal from normal images better. This script trains, on normal images of
the synthetic sample archive (``imgae_dx.testing.sample``) at 64², the variants

    unet_skips_no_noise   skip connections, noise_std 0     (the identity trap)
    unet_skips_dae        skip connections, coarse noise    (the shipped default)
    unet_no_skips         no skip connections, no noise      (the other way out)

and prints JSON: per variant the validation MSE, the reconstruction MSE/PSNR of abnormal test
images and AUROC (normal vs abnormal test images, patient-disjoint official test list) for the
mean-L1 and top-1 % scores.

    python benchmarks/ablation_bench.py                 # ~10 min on 2 CPU cores
    python benchmarks/ablation_bench.py --steps 100 --images-per-stage 80   # quick look
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from imgae_dx.config import AnomalyConfig
from imgae_dx.data.decode import decode_png
from imgae_dx.models import create_model, create_objective
from imgae_dx.models.anomaly import anomaly_map, image_score
from imgae_dx.training.precision import resolve_precision
from imgae_dx.training.step import TrainStep


def load_split(zip_path: Path, size: int, view: str = "all") -> dict[str, torch.Tensor]:
    """train/val normal images (train_val_list) and test normal/abnormal (test_list), N×1×S×S.

    ``view``: "PA", "AP" or "all" — the view-position cohort (a strong confound when mixed).
    """
    with zipfile.ZipFile(zip_path) as zf:
        members = {Path(n).name: n for n in zf.namelist() if n.endswith(".png")}
        rows = list(csv.reader(io.StringIO(zf.read("Data_Entry_2017.csv").decode())))[1:]
        test = set(zf.read("test_list.txt").decode().split())
        out: dict[str, list[np.ndarray]] = {"train": [], "test_normal": [], "test_abnormal": []}
        for row in rows:  # columns by position (the header is malformed)
            if not row or row[0] not in members or (view != "all" and row[6].strip() != view):
                continue
            normal = row[1].strip() == "No Finding"
            if row[0] in test:
                key = "test_normal" if normal else "test_abnormal"
            elif normal:
                key = "train"
            else:
                continue  # abnormal training-patient images are never used
            out[key].append(decode_png(zf.read(members[row[0]]), size))
    t = {k: torch.from_numpy(np.stack(v).astype(np.float32) / 255.0).unsqueeze(1)
         for k, v in out.items()}
    n_val = max(8, t["train"].shape[0] // 8)
    t["val"], t["train"] = t["train"][:n_val], t["train"][n_val:]
    return t


def run_variant(name: str, overrides: dict, data: dict[str, torch.Tensor], steps: int, batch: int,
                seed: int) -> dict:
    torch.manual_seed(seed)
    model = create_model("unet", data["train"].shape[-1], **overrides)
    obj = create_objective("unet", model)
    g = torch.Generator().manual_seed(seed)
    step = TrainStep(obj, resolve_precision("off", "cpu"), grad_clip=1.0, generator=g)
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, data["train"].shape[0], (batch,), generator=g)
        step(data["train"][idx])
    train_s = time.perf_counter() - t0
    model.eval()
    res: dict = {"variant": name, "overrides": overrides, "train_s": round(train_s, 1)}
    with torch.no_grad():
        res["val_mse"] = round(float(((model(data["val"]) - data["val"]) ** 2).mean()), 6)
        recon = {k: model(data[k]) for k in ("test_normal", "test_abnormal")}
    for k, r in recon.items():
        mse = float(((r - data[k]) ** 2).mean())
        res[f"{k}_mse"] = round(mse, 6)
        res[f"{k}_psnr_db"] = round(10 * math.log10(1.0 / max(mse, 1e-12)), 2)
    res["abnormal_over_normal_mse"] = round(res["test_abnormal_mse"] / res["test_normal_mse"], 3)
    labels = np.r_[np.zeros(len(data["test_normal"])), np.ones(len(data["test_abnormal"]))]
    for score in ("mean", "topk"):
        cfg = AnomalyConfig(map="l1", score=score, topk_percent=1.0)
        s = torch.cat([image_score(anomaly_map(data[k], recon[k], cfg), cfg)
                       for k in ("test_normal", "test_abnormal")]).numpy()
        res[f"auroc_l1_{score}"] = round(float(roc_auc_score(labels, s)), 4)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="U-Net skip/noise ablation on sample data")
    ap.add_argument("--images-per-stage", type=int, default=200)
    ap.add_argument("--stages", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--base-channels", type=int, default=16)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--noise-resolution", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--view", default="all", choices=["PA", "AP", "all"])
    ap.add_argument("--variants", default="unet_skips_no_noise,unet_skips_dae,unet_no_skips")
    ap.add_argument("--archive", type=Path, default=None, help="reuse an existing sample data.zip")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.archive
        if path is None:
            from imgae_dx.testing.sample import write_sample_archive

            path = write_sample_archive(tmp, images_per_stage=args.images_per_stage,
                                        stages=args.stages, seed=args.seed, image_px=256)
        data = load_split(Path(path), args.image_size, args.view)
    base = {"base_channels": args.base_channels, "groups": 8 if args.base_channels % 8 == 0 else 4,
            "depth": args.depth, "optim": {"lr": args.lr}}
    variants = {
        "unet_skips_no_noise": {**base, "skip_connections": True, "noise_std": 0.0},
        "unet_skips_dae": {**base, "skip_connections": True, "noise_std": 0.2,
                           "noise_resolution": args.noise_resolution},
        "unet_no_skips": {**base, "skip_connections": False, "noise_std": 0.0},
    }
    results = []
    for n in args.variants.split(","):
        results.append(run_variant(n, variants[n], data, args.steps, args.batch_size, args.seed))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(json.dumps({
        "data": {k: int(v.shape[0]) for k, v in data.items()}, "image_size": args.image_size,
        "steps": args.steps, "batch_size": args.batch_size, "view": args.view, "device": "cpu",
        "results": results,
    }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
