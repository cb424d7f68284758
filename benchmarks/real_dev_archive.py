"""The real development archive: the 991 real NIH radiographs of ``nih-real-dev`` in Kaggle's NIH
ChestX-ray14 layout, so ``imgae-dx train``/``evaluate`` and ``quality_bench.py --archive`` run on
real pixels through the project's own data path.

    python benchmarks/real_dev_archive.py --out DIR                 # real stage folders
    python benchmarks/real_dev_archive.py --out DIR --one-stage     # everything in images_001
    imgae-dx train --config configs/demo.yaml --source DIR/data.zip --out RUN --set data.view=all

Input (``--src``, default ``/work/shared/data/nih-real-dev``): ``images/*.png`` (real NIH file
names, 256 px 8-bit gray), ``images.csv`` (class, view, patient of each), the real
``Data_Entry_2017_v2020.csv.gz`` (all 112,120 rows) and ``BBox_List_2017.csv.gz``.

Output ``DIR/data.zip`` (written atomically; deterministic for a given ``--seed``):

* ``images_NNN/images/PPPPPPPP_FFF.png``: the PNG bytes as they are (not re-encoded). By default
  each image sits in the stage folder its NIH name belongs to (``images_001`` holds the first
  4,999 rows of Data_Entry in name order, ``images_002``–``images_011`` 10,000 each,
  ``images_012`` the rest: 12 small stages here); ``--one-stage`` puts all of them in
  ``images_001`` — the regime of a small real set in one folder (1,000 images, one stage).
* ``Data_Entry_2017.csv``: every real row, written in Kaggle's 2017 format (the malformed header
  with its trailing comma; ages as integers; pixel spacings without float noise);
  ``BBox_List_2017.csv``: the real box list as it is.
* ``train_val_list.txt`` / ``test_list.txt``: the official lists are not in ``nih-real-dev``, so a
  seeded, patient-disjoint split of these images replaces them. Patients are stratified by the
  (view, class) of their first image so that each view keeps its class mix; ``--test-share``
  (default 0.4) of each stratum's patients go to test. 0.4 because the PA view has only 158
  normals: at 0.4 it keeps 63 PA normals in test (bootstrap 95 % CIs of ~±0.09), while the
  training normals of both views (~280 after the validation slice) stay near the ~290 of the
  small real NIH check. Train on ``data.view: all`` and read the AUROC per view (the views are
  confounded with the class here).

Prints one JSON object with the counts per split, view and class.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from imgae_dx.data.datasets.nih import (
    BBOX_NAME,
    DATA_ENTRY_HEADER,
    DATA_ENTRY_NAME,
    TEST_NAME,
    TRAIN_VAL_NAME,
)
from imgae_dx.utils.atomic import atomic_open

DEFAULT_SRC = Path("/work/shared/data/nih-real-dev")
ZIP_DATE = (2018, 2, 21, 12, 0, 0)  # fixed member timestamps: byte-identical archives
#: images in the real stage folders images_001, images_002, … (images_012 holds the rest)
FIRST_STAGE, STAGE = 4999, 10000


def stage_of_row(i: int) -> int:
    """Stage number (1..12) of row ``i`` of the real Data_Entry_2017 (rows in name order)."""
    return 1 if i < FIRST_STAGE else min(12, 2 + (i - FIRST_STAGE) // STAGE)


def _number(v: str) -> str:
    """A CSV number as the 2017 file writes it: ``0.14300000000000002`` → ``0.143``, ``58`` → ``58``."""
    f = float(v)
    return str(int(f)) if f.is_integer() else format(f, ".6g")


def data_entry_2017(v2020_rows: list[list[str]]) -> tuple[bytes, list[str]]:
    """The real rows in Kaggle's 2017 format (malformed header, trailing comma) and the image
    names in row order."""
    out = [DATA_ENTRY_HEADER]
    names = []
    for r in v2020_rows:
        if len(r) < 11:
            raise SystemExit(f"Data_Entry row {r[:1]} has {len(r)} fields, expected 11")
        names.append(r[0])
        out.append(",".join([*r[:7], *(_number(v) for v in r[7:11])]))
    return ("\n".join(out) + "\n").encode(), names


def read_rows(path: Path) -> list[list[str]]:
    with gzip.open(path, "rt", newline="") as f:
        rows = list(csv.reader(f))
    return [r for r in rows[1:] if r]


def split_patients(images: list[dict[str, str]], test_share: float, seed: int) -> set[str]:
    """Test patients: per stratum (view, class of a patient's first image), the first
    ``round(test_share · n)`` of its patients in a seeded order."""
    first: dict[str, dict[str, str]] = {}
    for im in sorted(images, key=lambda r: r["image"]):
        first.setdefault(im["patient_id"], im)
    strata: dict[tuple[str, str], list[str]] = defaultdict(list)
    for pid, im in sorted(first.items(), key=lambda kv: int(kv[0])):
        strata[(im["view"], im["class"])].append(pid)
    rng = np.random.default_rng(seed)
    test: set[str] = set()
    for key in sorted(strata):
        pids = strata[key]
        order = rng.permutation(len(pids))
        test.update(pids[j] for j in order[: int(round(test_share * len(pids)))])
    return test


def _zinfo(name: str) -> zipfile.ZipInfo:
    zi = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    zi.compress_type = zipfile.ZIP_DEFLATED
    zi.create_system = 3
    zi.external_attr = 0o100644 << 16
    return zi


def write_real_dev_archive(src: Path, out: Path, *, one_stage: bool = False, test_share: float = 0.4,
                           seed: int = 0) -> dict:
    """Write ``out/data.zip`` (see the module doc); returns the counts."""
    if not 0 < test_share < 1:
        raise SystemExit(f"--test-share must be in (0, 1), got {test_share}")
    for need in ("images", "images.csv", "Data_Entry_2017_v2020.csv.gz", "BBox_List_2017.csv.gz"):
        if not (src / need).exists():
            raise SystemExit(f"{src / need} not found: --src is the nih-real-dev folder")
    with (src / "images.csv").open(newline="") as f:
        images = list(csv.DictReader(f))
    data_entry, names = data_entry_2017(read_rows(src / "Data_Entry_2017_v2020.csv.gz"))
    row_of = {n: i for i, n in enumerate(names)}
    missing = [im["image"] for im in images if im["image"] not in row_of]
    if missing:
        raise SystemExit(f"{len(missing)} images are not in Data_Entry (e.g. {missing[:3]})")
    test_patients = split_patients(images, test_share, seed)
    bbox = gzip.decompress((src / "BBox_List_2017.csv.gz").read_bytes())
    counts: Counter[str] = Counter()
    train_val, test = [], []
    out.mkdir(parents=True, exist_ok=True)
    dest = out / "data.zip"
    with atomic_open(dest) as f, zipfile.ZipFile(f, "w") as zf:
        zf.writestr(_zinfo(BBOX_NAME), bbox, compresslevel=6)
        zf.writestr(_zinfo(DATA_ENTRY_NAME), data_entry, compresslevel=6)
        for im in sorted(images, key=lambda r: r["image"]):
            stage = 1 if one_stage else stage_of_row(row_of[im["image"]])
            png = (src / "images" / im["image"]).read_bytes()
            zf.writestr(_zinfo(f"images_{stage:03d}/images/{im['image']}"), png, compresslevel=1)
            split = "test" if im["patient_id"] in test_patients else "train_val"
            (test if split == "test" else train_val).append(im["image"])
            counts[f"{split}/{im['view']}/{im['class']}"] += 1
            counts[f"stage/images_{stage:03d}"] += 1
        zf.writestr(_zinfo(TEST_NAME), ("\n".join(test) + "\n").encode(), compresslevel=6)
        zf.writestr(_zinfo(TRAIN_VAL_NAME), ("\n".join(train_val) + "\n").encode(), compresslevel=6)
    patients = {s: len({im["patient_id"] for im in images if (im["patient_id"] in test_patients) == (s == "test")})
                for s in ("train_val", "test")}
    return {"archive": str(dest), "images": len(images), "one_stage": one_stage, "test_share": test_share,
            "seed": seed, "patients": patients, "counts": dict(sorted(counts.items()))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC, help="the nih-real-dev folder")
    ap.add_argument("--out", type=Path, required=True, help="folder of the archive (data.zip)")
    ap.add_argument("--one-stage", action="store_true", help="every image in images_001")
    ap.add_argument("--test-share", type=float, default=0.4,
                    help="share of each (view, class) stratum's patients in test_list.txt")
    ap.add_argument("--seed", type=int, default=0, help="seed of the patient split")
    args = ap.parse_args(argv)
    print(json.dumps(write_real_dev_archive(args.src, args.out, one_stage=args.one_stage,
                                            test_share=args.test_share, seed=args.seed), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
