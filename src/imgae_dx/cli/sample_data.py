"""``imgae-dx sample-data OUT_DIR [--dataset nih|zhanglab|rsna|folder]``: a synthetic archive
``OUT_DIR/data.zip`` in that dataset's layout (NIH by default), marked as synthetic."""

from __future__ import annotations

import argparse
import time


def run(args: argparse.Namespace) -> int:
    """Generate the archive and print its path, what its index holds, size and time."""
    from imgae_dx.config import DataConfig
    from imgae_dx.data.datasets import open_dataset
    from imgae_dx.errors import UserError
    from imgae_dx.streaming.sources import open_archive
    from imgae_dx.testing.sample import SAMPLE_WRITERS, write_sample_archive

    dataset = getattr(args, "dataset", "nih") or "nih"
    per_stage, stages, images = int(args.images_per_stage), int(args.stages), int(getattr(args, "images", 400))
    if per_stage < 1:
        raise UserError(f"--images-per-stage must be at least 1, got {per_stage}")
    if not 1 <= stages <= 999:
        raise UserError(f"--stages must be between 1 and 999, got {stages}")
    if images < 4:
        raise UserError(f"--images must be at least 4, got {images}")
    if getattr(args, "labels_csv", False) and dataset != "folder":
        raise UserError("--labels-csv writes the folder layout's labels.csv; add --dataset folder")
    t0 = time.perf_counter()
    try:
        if dataset == "folder":
            path = SAMPLE_WRITERS[dataset](args.out_dir, images=images, seed=int(args.seed),
                                           labels_csv=bool(getattr(args, "labels_csv", False)))
        elif dataset in SAMPLE_WRITERS:
            path = SAMPLE_WRITERS[dataset](args.out_dir, images=images, seed=int(args.seed))
        else:
            path = write_sample_archive(args.out_dir, images_per_stage=per_stage, stages=stages,
                                        seed=int(args.seed), progress=None,
                                        variety=getattr(args, "variety", "standard"))
    except OSError as e:
        raise UserError(f"cannot write {args.out_dir}/data.zip: {e.strerror or e}") from None
    dt = time.perf_counter() - t0
    cfg = DataConfig(dataset=dataset, view="all")
    with open_archive(str(path), cfg) as archive:
        index = open_dataset(archive, cfg, 0, quiet=True)
        s = index.summary()
    print(path)
    print(f"{s['images']} images in {len(s['stages'])} stages ({', '.join(s['stages'])}) of the {dataset} "
          f"layout; {s['normal']} normal, {s['abnormal']} abnormal; {s['patients']} patients")
    if dataset == "nih":
        print(f"{s['metadata_rows']} metadata rows ({s['rows_without_member']} without an image here), "
              f"{s['boxes']} boxes; {int((index.view == 'PA').sum())} PA, {int((index.view == 'AP').sum())} AP")
    elif dataset == "rsna":
        found = {f: int((index.findings == f).sum()) for f in sorted(set(index.findings.tolist()) - {""})}
        print(f"classes: Normal {s['normal']}, " + ", ".join(f"{f} {n}" for f, n in found.items())
              + f"; {s['boxes']} boxes; {int((index.view == 'PA').sum())} PA, "
              f"{int((index.view == 'AP').sum())} AP")
    for why, n in s["skipped"].items():
        print(f"skipped {n} {why}")
    print(f"{path.stat().st_size / 1e6:.1f} MB written in {dt:.1f} s")
    return 0
