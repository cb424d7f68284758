"""A synthetic archive of one's own images (``imgae-dx sample-data --dataset folder``).

``write_folder_archive(out_dir, images=N)`` writes ``out_dir/data.zip`` in anomalib's Folder
convention, under one top folder::

    my_xrays/normal/*.png|*.jpg, my_xrays/normal/site_b/*.png   normals (any depth)
    my_xrays/abnormal/FINDING/*                                  abnormal images by finding
    my_xrays/abnormal/*                                          abnormal images without a finding
    my_xrays/normal/README.txt, my_xrays/abnormal/Thumbs.db      stray files (not images)
    imgae_dx_synthetic.json                                      the synthetic-sample marker

PNG and JPEG mixed (told apart by content: some JPEGs are named ``.png``), gray and 3-channel,
non-square. With ``labels_csv=True`` the images sit in ``my_xrays/images/`` and a
``my_xrays/labels.csv`` (``path,label,patient,view,split``; ``split`` left empty, so the
protocol decides) lists them instead. Everything is a function of ``seed``.
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from pathlib import Path

import numpy as np

from imgae_dx.testing.sample.archive import _ordered_map, _zinfo, write_marker
from imgae_dx.testing.sample.cohort import encode, plan_cohort
from imgae_dx.testing.sample.render import Renderer
from imgae_dx.utils.atomic import atomic_open

TOP = "my_xrays/"


def write_folder_archive(out_dir: str | os.PathLike[str], images: int = 400, seed: int = 0,
                         image_px: int = 512, *, labels_csv: bool = False) -> Path:
    """Write ``out_dir/data.zip`` (see the module doc); returns its path."""
    if images < 4:
        raise ValueError(f"images must be at least 4, got {images}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dest = out / "data.zip"
    cohort, anatomy = plan_cohort(images, seed, pneumonia=False)
    renderer = Renderer(image_px, seed)
    look = np.random.default_rng([seed, 0xF01])
    styles = []
    for _ in cohort:
        fmt = "jpeg" if look.random() < 0.5 else "png"
        styles.append((fmt, bool(look.random() < 0.25), float(look.uniform(0.8, 1.25)),
                       float(look.uniform(0.6, 1.0)), bool(look.random() < 0.1), bool(look.random() < 0.15)))
    names: list[str] = []
    for i, c in enumerate(cohort):
        fmt, _, _, _, misnamed, other = styles[i]
        ext = ".png" if (fmt == "png") != misnamed else ".jpg"  # a JPEG named .png now and then
        stem = f"{c.patient:05d}_{c.plan.follow:02d}{ext}"
        if labels_csv:
            names.append(f"images/img_{i:05d}{ext}")
        elif c.normal:
            names.append(f"normal/{'site_b/' if other else ''}{stem}")
        else:
            names.append(f"abnormal/{'' if other else c.finding + '/'}{stem}")

    def render(i: int) -> bytes:
        c = cohort[i]
        fmt, rgb, aspect, scale, _, _ = styles[i]
        return encode(renderer.render(c.plan, anatomy[c.patient]), fmt, rgb=rgb, aspect=aspect, scale=scale)

    data = list(_ordered_map(render, list(range(len(cohort)))))
    with atomic_open(dest) as f, zipfile.ZipFile(f, "w", allowZip64=True) as zf:
        def put(name: str, body: bytes, method: int = zipfile.ZIP_STORED) -> None:
            zf.writestr(_zinfo(TOP + name, method), body)

        if labels_csv:
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(["path", "label", "patient", "view", "split"])
            for c, n in zip(cohort, names, strict=True):
                w.writerow([n, "normal" if c.normal else "abnormal", f"P{c.patient:05d}", c.plan.view, ""])
            put("labels.csv", buf.getvalue().encode(), zipfile.ZIP_DEFLATED)
            put("images/notes.txt", b"scanned 2024, site A\n", zipfile.ZIP_DEFLATED)
        else:
            put("normal/README.txt", b"normal chest radiographs\n", zipfile.ZIP_DEFLATED)
            put("abnormal/Thumbs.db", bytes(512), zipfile.ZIP_DEFLATED)
        for n, body in sorted(zip(names, data, strict=True)):
            put(n, body)
        write_marker(zf, "folder", seed)
    return dest
