"""``imgae-dx sample-data OUT_DIR``: write the synthetic NIH-layout archive ``OUT_DIR/data.zip``."""

from __future__ import annotations

import argparse
import time


def run(args: argparse.Namespace) -> int:
    """Generate the archive and print its path, image/metadata counts, size and time."""
    import zipfile

    from imgae_dx.data.nih_index import DATA_ENTRY_NAME, METADATA_NAMES, NIHIndex
    from imgae_dx.errors import UserError
    from imgae_dx.testing.sample import write_sample_archive

    per_stage, stages = int(args.images_per_stage), int(args.stages)
    if per_stage < 1:
        raise UserError(f"--images-per-stage must be at least 1, got {per_stage}")
    if not 1 <= stages <= 999:
        raise UserError(f"--stages must be between 1 and 999, got {stages}")
    t0 = time.perf_counter()
    try:
        path = write_sample_archive(args.out_dir, images_per_stage=per_stage, stages=stages,
                                    seed=int(args.seed), progress=None,
                                    variety=getattr(args, "variety", "standard"))
    except OSError as e:
        raise UserError(f"cannot write {args.out_dir}/data.zip: {e.strerror or e}") from None
    dt = time.perf_counter() - t0
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        index = NIHIndex.from_files(*(zf.read(n) for n in METADATA_NAMES), names)
        meta_rows = len(zf.read(DATA_ENTRY_NAME).splitlines()) - 1
    n_img = len(index)
    normal = int(index.normal.sum())
    size_mb = path.stat().st_size / 1e6
    print(path)
    print(f"{n_img} images in {len(index.stages())} stages ({', '.join(index.stages())}); "
          f"{normal} normal, {n_img - normal} abnormal; {int((index.view == 'PA').sum())} PA, "
          f"{int((index.view == 'AP').sum())} AP")
    print(f"{meta_rows} metadata rows ({index.rows_without_member} without an image here), "
          f"{index.summary()['boxes']} boxes; patients: {len(set(index.patient.tolist()))}")
    print(f"{size_mb:.1f} MB written in {dt:.1f} s")
    return 0
