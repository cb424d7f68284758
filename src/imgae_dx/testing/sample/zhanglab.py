"""A synthetic archive in Kaggle's ZhangLab layout (``imgae-dx sample-data --dataset zhanglab``).

``write_zhanglab_archive(out_dir, images=N)`` writes ``out_dir/data.zip`` as Kaggle serves
``paultimothymooney/chest-xray-pneumonia``::

    chest_xray/chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/…   a second copy of every image
    chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg        the images
    chest_xray/__MACOSX/…/._NAME, __MACOSX/chest_xray/…/._NAME    AppleDouble junk
    chest_xray/.DS_Store, chest_xray/train/.DS_Store              Finder junk
    imgae_dx_synthetic.json                                       the synthetic-sample marker

JPEG files, mostly gray, about one in five 3-channel, non-square (aspect 0.75–1.35). Names follow
the real set: normals ``IM-NNNN-NNNN.jpeg`` or ``NORMAL2-IM-NNNN-NNNN.jpeg``, pneumonias
``personN_bacteria_K.jpeg`` / ``personN_virus_K.jpeg`` with ``personN`` numbered from 1 in each
split folder. Patients are split ~64 % train, ~6 % val, ~30 % test. Everything is a function of
``seed``: same seed, same bytes.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from imgae_dx.testing.sample.archive import _ordered_map, _zinfo, write_marker
from imgae_dx.testing.sample.cohort import CohortImage, encode, plan_cohort
from imgae_dx.testing.sample.render import Renderer
from imgae_dx.utils.atomic import atomic_open

#: The bytes an AppleDouble (``._NAME``) file starts with.
APPLE_DOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(4070)


def _names(cohort: list[CohortImage], seed: int) -> list[tuple[str, str, str]]:
    """(split, CLASS, file name) per image; a patient's images share a split."""
    rng = np.random.default_rng([seed, 0x2A6])
    split_of: dict[int, str] = {}
    person: dict[tuple[str, int], int] = {}
    counters = {"IM": 0, "NORMAL2-IM": 0}
    im_of: dict[int, tuple[str, int]] = {}
    shot: dict[int, int] = {}
    k_global = 0
    out = []
    for c in cohort:
        split = split_of.setdefault(c.patient, str(rng.choice(["train", "val", "test"], p=[0.64, 0.06, 0.30])))
        shot[c.patient] = shot.get(c.patient, 0) + 1
        if c.normal:
            if c.patient not in im_of:
                prefix = "IM" if rng.random() < 0.6 else "NORMAL2-IM"
                counters[prefix] += 1
                im_of[c.patient] = (prefix, counters[prefix])
            prefix, num = im_of[c.patient]
            out.append((split, "NORMAL", f"{prefix}-{num:04d}-{shot[c.patient]:04d}.jpeg"))
        else:
            key = (split, c.patient)
            if key not in person:
                person[key] = 1 + sum(1 for s, _ in person if s == split)  # restarts per split
            k_global += 1
            out.append((split, "PNEUMONIA", f"person{person[key]}_{c.finding}_{k_global}.jpeg"))
    return out


def write_zhanglab_archive(out_dir: str | os.PathLike[str], images: int = 400, seed: int = 0,
                           image_px: int = 512) -> Path:
    """Write ``out_dir/data.zip`` in the ZhangLab layout (see the module doc); returns its path.

    Args:
        images: images in the tree (the duplicate tree holds the same again).
        seed: everything is a function of it.
        image_px: side of the square render each file is cropped and scaled from.
    """
    if images < 4:
        raise ValueError(f"images must be at least 4, got {images}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dest = out / "data.zip"
    cohort, anatomy = plan_cohort(images, seed, pneumonia=True)
    names = _names(cohort, seed)
    renderer = Renderer(image_px, seed)
    look = np.random.default_rng([seed, 0x10C])
    styles = [(bool(look.random() < 0.2), float(look.uniform(0.75, 1.35)), float(look.uniform(0.6, 1.0)))
              for _ in cohort]

    def jpeg(i: int) -> bytes:
        c = cohort[i]
        rgb, aspect, scale = styles[i]
        return encode(renderer.render(c.plan, anatomy[c.patient]), "jpeg", rgb=rgb, aspect=aspect, scale=scale)

    files = dict(zip([f"{s}/{k}/{n}" for s, k, n in names],
                     _ordered_map(jpeg, list(range(len(cohort)))), strict=True))
    rel = sorted(files)
    with atomic_open(dest) as f, zipfile.ZipFile(f, "w", allowZip64=True) as zf:
        def put(name: str, data: bytes, method: int = zipfile.ZIP_STORED) -> None:
            zf.writestr(_zinfo(name, method), data)

        put("__MACOSX/chest_xray/._train", APPLE_DOUBLE[:512], zipfile.ZIP_DEFLATED)
        for r in rel[::7]:
            put(f"__MACOSX/chest_xray/{r.rsplit('/', 1)[0]}/._{r.rsplit('/', 1)[1]}", APPLE_DOUBLE,
                zipfile.ZIP_DEFLATED)
        put("chest_xray/.DS_Store", bytes(6148), zipfile.ZIP_DEFLATED)
        for r in rel[1::9]:
            put(f"chest_xray/__MACOSX/{r.rsplit('/', 1)[0]}/._{r.rsplit('/', 1)[1]}", APPLE_DOUBLE,
                zipfile.ZIP_DEFLATED)
        for r in rel:  # the second copy sorts before the tree (chest_xray/chest_xray/ < chest_xray/test/)
            put(f"chest_xray/chest_xray/{r}", files[r])
        for r in rel:
            put(f"chest_xray/{r}", files[r])
            if r == rel[0]:
                put("chest_xray/train/.DS_Store", bytes(6148), zipfile.ZIP_DEFLATED)
        write_marker(zf, "zhanglab", seed)
    return dest
