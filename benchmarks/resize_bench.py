"""The ``data.resize`` policies compared on real radiographs made non-square, with the PCA detector.

Which policy should non-square images (ZhangLab's pediatric JPEGs are 1.1–1.6 times wider than
tall) get: ``squash`` (the whole image, stretched), ``pad`` (aspect kept, black bands) or
``crop`` (centre square, the sides dropped)? Real NIH radiographs (``--source``: a folder with
``images/`` and ``images.csv`` as ``/work/shared/data/nih-real-dev`` has them; square) are made
non-square the two ways such images arise, each image with its own seeded width/height ratio in
``--aspect`` drawn independently of its class:

* ``cut``: the rows above and below a centred band are cut (a wide field of view whose top and
  bottom are missing: lung apices and bases partly outside);
* ``letterbox``: black columns added left and right (the whole chest, with margins).

Each policy brings them to ``--image-size``; the project's PCA detector (the shipped
``model.pca`` recipe: top-k components of training normals, k chosen on validation normals,
mean l1 residual) is fitted per view (AP and PA apart: views are confounded with the class) on a
seeded patient split — 60 % of the normal patients train, 10 % validate (k), the other 30 % and
every pneumonia patient test — and scored by AUROC (normal vs pneumonia), for ``--seeds`` seeds
(aspect draws and split together). ``square`` (the original images, no distortion) is the
reference every policy is compared with.

``--unet-steps N`` adds the demo's U-Net recipe (``configs/demo.yaml``: its width, noise and
scoring) trained ``N`` steps (batch ``--batch``, Adam, fp32 on the CPU, seeded) on the same
splits, for the views in ``--unet-views`` and the variants in ``--unet-variants``: short runs, a
second opinion on PCA's ranking.

    nice -n 10 python benchmarks/resize_bench.py --source /work/shared/data/nih-real-dev --seeds 0,1,2,3,4
    nice -n 10 python benchmarks/resize_bench.py --source /work/shared/data/nih-real-dev --seeds 0,1,2 \
        --unet-steps 300 --unet-views PA --unet-variants cut:squash,cut:pad,cut:crop

Prints one JSON object (and a Markdown table on stderr).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from imgae_dx.config import load_config
from imgae_dx.data.decode import PAD_VALUE, RESIZE_POLICIES, decode_gray, resize_image
from imgae_dx.models import create_model, create_objective
from imgae_dx.models.pca import PCAModel, fit_principal_components
from imgae_dx.training.precision import resolve_precision
from imgae_dx.training.step import TrainStep

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"

DISTORTIONS = ("cut", "letterbox")


def load(source: Path) -> tuple[list[np.ndarray], list[dict[str, str]]]:
    """The images (uint8 gray) and their ``images.csv`` rows, in the CSV's order."""
    with open(source / "images.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [decode_gray((source / "images" / r["image"]).read_bytes()) for r in rows], rows


def distort(img: np.ndarray, how: str, aspect: float) -> np.ndarray:
    """``img`` made ``aspect`` times wider than tall by cutting rows or adding black columns."""
    h, w = img.shape
    if how == "cut":
        keep = max(1, round(w / aspect))
        top = (h - keep) // 2
        return img[top:top + keep]
    width = round(h * aspect)
    out = np.full((h, width), PAD_VALUE, np.uint8)
    left = (width - w) // 2
    out[:, left:left + w] = img
    return out


def split(rows: list[dict[str, str]], idx: list[int], seed: int) -> tuple[list[int], list[int], list[int]]:
    """Patient-disjoint (train, val, test) image indices of ``idx``: normals' patients 60/10/30 %,
    every pneumonia image in test."""
    normal = sorted({rows[i]["patient_id"] for i in idx if rows[i]["class"] == "normal"})
    rng = np.random.default_rng(seed)
    order = [normal[j] for j in rng.permutation(len(normal))]
    n_tr, n_va = round(0.6 * len(order)), max(1, round(0.1 * len(order)))
    part = {p: "train" for p in order[:n_tr]} | {p: "val" for p in order[n_tr:n_tr + n_va]}
    sets: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for i in idx:
        where = part.get(rows[i]["patient_id"], "test")
        if rows[i]["class"] != "normal":
            if where != "test":  # a pneumonia image of a training patient would leak: drop it
                continue
        sets[where].append(i)
    return sets["train"], sets["val"], sets["test"]


def pca_auroc(imgs: list[np.ndarray], rows: list[dict[str, str]], parts: tuple[list[int], ...],
              size: int, cfg: Any) -> float:
    """AUROC of the shipped PCA recipe fitted on ``parts``' train/val, scored on its test."""
    train, val, test = parts

    def stack(ix: list[int]) -> torch.Tensor:
        return torch.from_numpy(np.stack([imgs[i] for i in ix]).astype(np.float32) / 255.0)

    model = PCAModel(size, cfg)
    fit_principal_components(model, stack(train).flatten(1), stack(val).flatten(1))
    scores = model.predict(stack(test)[:, None]).score.numpy()
    labels = [int(rows[i]["class"] != "normal") for i in test]
    return float(roc_auc_score(labels, scores))


def unet_auroc(imgs: list[np.ndarray], rows: list[dict[str, str]], parts: tuple[list[int], ...],
               size: int, cfg: Any, steps: int, batch: int, seed: int) -> float:
    """AUROC of the demo's U-Net recipe trained ``steps`` steps on ``parts``' train images."""
    train, _val, test = parts
    x = torch.from_numpy(np.stack([imgs[i] for i in train]).astype(np.float32) / 255.0)[:, None]
    torch.manual_seed(seed)
    model = create_model("unet", size, cfg)
    step = TrainStep(create_objective("unet", model, cfg), resolve_precision("off", "cpu"), grad_clip=1.0,
                     generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        step(x[torch.randint(0, x.shape[0], (batch,), generator=g)])
    model.eval()
    t = torch.from_numpy(np.stack([imgs[i] for i in test]).astype(np.float32) / 255.0)[:, None]
    scores = torch.cat([model.predict(t[j:j + 64]).score for j in range(0, len(t), 64)]).numpy()
    return float(roc_auc_score([int(rows[i]["class"] != "normal") for i in test], scores))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", type=Path, required=True, help="folder with images/ and images.csv")
    ap.add_argument("--image-size", type=int, default=64, help="model resolution")
    ap.add_argument("--aspect", type=lambda t: tuple(float(x) for x in t.split(",")), default=(1.1, 1.6),
                    help="range of width/height, MIN,MAX")
    ap.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")], default=[0, 1, 2],
                    help="seeds of the aspect draws and the split")
    ap.add_argument("--views", default="AP,PA", help="views scored apart")
    ap.add_argument("--unet-steps", type=int, default=0, help="also train the demo U-Net this many steps (0: no)")
    ap.add_argument("--unet-views", default="PA", help="views the U-Net runs on")
    ap.add_argument("--unet-variants", default="all",
                    help="DISTORTION:POLICY pairs the U-Net runs on (e.g. cut:squash,cut:crop; square:-), or all")
    ap.add_argument("--batch", type=int, default=16, help="U-Net batch size")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_config().model.pca
    unet_cfg = load_config(DEMO).model.unet
    size = args.image_size
    imgs, rows = load(args.source)
    views = args.views.split(",")
    results: dict[tuple[str, str, str], list[float]] = {}
    for seed in args.seeds:
        rng = np.random.default_rng(1000 + seed)
        aspects = rng.uniform(*args.aspect, size=len(imgs))
        for view in views:
            parts = split(rows, [i for i, r in enumerate(rows) if r["view"] == view], seed)
            unet = args.unet_steps > 0 and view in args.unet_views.split(",")
            variants = [("square", "-", [resize_image(im, size, "squash") for im in imgs])]
            for how in DISTORTIONS:
                bent = [distort(im, how, a) for im, a in zip(imgs, aspects, strict=True)]
                variants += [(how, p, [resize_image(b, size, p) for b in bent]) for p in RESIZE_POLICIES]
            for how, policy, out in variants:
                results.setdefault(("pca", how, policy, view), []).append(pca_auroc(out, rows, parts, size, cfg))
                if unet and (args.unet_variants == "all" or f"{how}:{policy}" in args.unet_variants.split(",")):
                    results.setdefault(("unet", how, policy, view), []).append(
                        unet_auroc(out, rows, parts, size, unet_cfg, args.unet_steps, args.batch, seed))
    table = []
    for (model, how, policy, view), aucs in results.items():
        ref = results.get((model, "square", "-", view), [float("nan")] * len(aucs))
        table.append({"model": model, "distortion": how, "policy": policy, "view": view,
                      "aurocs": [round(a, 4) for a in aucs],
                      "mean": round(statistics.fmean(aucs), 4),
                      "sd": round(statistics.stdev(aucs), 4) if len(aucs) > 1 else 0.0,
                      "vs_square": round(statistics.fmean(a - b for a, b in zip(aucs, ref, strict=True)), 4)})
    out = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "source": str(args.source), "images": len(imgs),
           "image_size": size, "aspect": list(args.aspect), "seeds": args.seeds,
           "pca": {"max_components": cfg.max_components, "explained_variance": cfg.explained_variance,
                   "map": cfg.anomaly.map, "score": cfg.anomaly.score},
           "unet_steps": args.unet_steps, "rows": table}
    lines = ["| model | distortion | policy | view | AUROC mean ± sd | − square (paired) | per seed |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['distortion']} | {r['policy']} | {r['view']} | {r['mean']:.3f} ± {r['sd']:.3f} | "
              f"{r['vs_square']:+.3f} | {', '.join(f'{a:.3f}' for a in r['aurocs'])} |" for r in table]
    print("\n".join(lines), file=sys.stderr)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
