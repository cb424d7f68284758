"""The linear yardstick under each input normalisation, k and border mask, in seconds: which input
and scoring choices help on an archive, before spending training runs on the deep models.

    python benchmarks/pca_input_bench.py --archive DEV/data.zip [--view all] [--markdown]

Reads the archive's train / val / test splits (``data.view``, ``val_fraction`` 0.15, seed 0 as
``quality_bench.py --set data.view=all`` trains them) at 64 px through the project's decoder, fits
the project's :class:`~imgae_dx.models.pca.PCAModel` on the training normals for every
``model.pca.input.normalise`` × k (fixed k, or the explained-variance rule) and scores the test
split with the l1 and SSIM (11 px) maps, with and without ``anomaly.border`` 0.1. Prints one JSON
object: test AUROC per view position for each cell (and a Markdown table with ``--markdown``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import zipfile
from pathlib import Path

import numpy as np
import torch

NORMALISE = ("none", "equalise", "clahe", "robust")
KS = (2, 10, 50, None)  # None: the explained-variance rule (0.95, at most 128 components)


def load_split(archive: Path, split: str, view: str, size: int, seed: int = 0) -> tuple[np.ndarray, list]:
    """uint8 N×size×size images of one split and their records (project decoder and index)."""
    from imgae_dx.data.datasets.nih import NIHIndex
    from imgae_dx.data.decode import decode_png
    from imgae_dx.streaming.sources import open_archive

    src = open_archive(str(archive))
    try:
        index = NIHIndex.from_archive(src)
        ids = index.split("all", split, view=view, val_fraction=0.15, seed=seed)
        recs = [index.record(int(m)) for m in ids]
    finally:
        src.close()
    with zipfile.ZipFile(archive) as zf:
        names = {Path(n).name: n for n in zf.namelist() if n.endswith(".png")}
        return np.stack([decode_png(zf.read(names[r.image]), size) for r in recs]), recs


def per_view(scores: np.ndarray, recs: list) -> dict[str, float]:
    from imgae_dx.evaluation.metrics import auroc

    y = np.array([r.label for r in recs])
    v = np.array([r.view for r in recs])
    return {view: round(auroc(y[v == view], scores[v == view]), 4) for view in sorted(set(v.tolist()))
            if 0 < y[v == view].sum() < (v == view).sum()}


def main(argv: list[str] | None = None) -> int:
    from imgae_dx.config import AnomalyConfig
    from imgae_dx.models import create_model, fit_principal_components
    from imgae_dx.models.anomaly import anomaly_map, image_score

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archive", required=True, type=Path)
    ap.add_argument("--view", default="all", choices=["all", "PA", "AP"])
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    s = args.image_size

    def unit(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.float32) / 255)[:, None]

    train, _ = load_split(args.archive, "train", args.view, s)
    val, _ = load_split(args.archive, "val", args.view, s)
    test, recs = load_split(args.archive, "test", args.view, s)
    maps = {"l1": AnomalyConfig(map="l1"), "ssim": AnomalyConfig(map="ssim")}
    rows = []
    for norm, k in itertools.product(NORMALISE, KS):
        m = create_model("pca", s, max_components=128, components=k, input={"normalise": norm})
        fit = fit_principal_components(m, unit(train).flatten(1), unit(val).flatten(1))
        pred = {name: {} for name in maps}
        x = m.prepare(unit(test))
        rec = m(x)
        for (name, cfg), border in itertools.product(maps.items(), (0.0, 0.1)):
            c = cfg.model_copy(update={"border": border})
            pred[name][f"border {border}"] = per_view(image_score(anomaly_map(x, rec, c), c).numpy(), recs)
        rows.append({"normalise": norm, "k": fit["k"], "k_rule": k is None, "auroc": pred})
    counts = {"train": len(train), "val": len(val), "test": len(test)}
    print(json.dumps({"archive": str(args.archive), "view": args.view, "images": counts, "rows": rows}, indent=1))
    if args.markdown:
        views = sorted(rows[0]["auroc"]["l1"]["border 0.0"])
        cols = [(mp, b) for mp in maps for b in ("border 0.0", "border 0.1")]
        print("| input | k | " + " | ".join(f"{mp}{'' if b.endswith('0.0') else ' + border 0.1'}" for mp, b in cols) + " |")
        print("|---|---|" + "---|" * len(cols))
        for r in rows:
            k = f"{r['k']} (rule)" if r["k_rule"] else str(r["k"])
            cells = [" / ".join(f"{r['auroc'][mp][b][v]:.3f}" for v in views) for mp, b in cols]
            print(f"| {r['normalise']} | {k} | " + " | ".join(cells) + " |")
        print(f"\n(each cell: {' / '.join(views)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
