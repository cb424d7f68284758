"""A synthetic archive in the RSNA Pneumonia Detection Challenge's layout
(``imgae-dx sample-data --dataset rsna``).

``write_rsna_archive(out_dir, images=N)`` writes ``out_dir/data.zip`` as Kaggle serves the
competition ``rsna-pneumonia-detection-challenge``, members in name order::

    GCP Credits Request Link - RSNA.txt       the competition's stray text file
    stage_2_detailed_class_info.csv           patientId,class — one row per labels row
    stage_2_sample_submission.csv             patientId,PredictionString of the test images
    stage_2_test_images/<patientId>.dcm       a few unlabeled images (N // 20, at least 2)
    stage_2_train_images/<patientId>.dcm      N images, one patient each
    stage_2_train_labels.csv                  patientId,x,y,width,height,Target — one row per box
    imgae_dx_synthetic.json                   the synthetic-sample marker

DICOMs as RSNA's (:func:`.dicom.rsna_dicom`): 8-bit MONOCHROME2, JPEG Baseline, ``ViewPosition``
PA/AP, ``PatientAge`` as bare strings; patientIds are UUIDs. Classes: images without a finding are
``Normal`` (~55 %); of the others ~40 % are ``Lung Opacity`` (one or two pneumonia opacities, each
with a box in the 1024-px frame whatever ``image_px``) and the rest ``No Lung Opacity / Not
Normal`` (the sample's other findings without the opacities: effusion, cardiomegaly, nodules, …).
CSV rows are in a seeded order (not the archive's), a Lung Opacity patient has one row per box in
both CSVs. Members are deflated (level 1) like Kaggle's. Everything is a function of ``seed``.
"""

from __future__ import annotations

import os
import uuid
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from imgae_dx.data.datasets.rsna import (
    CLASSES_CSV,
    LABELS_CSV,
    NORMAL,
    NOT_NORMAL,
    OPACITY,
    OTHER_FILES,
    TEST_DIR,
    TRAIN_DIR,
)
from imgae_dx.testing.sample.archive import _ordered_map, _zinfo, write_marker
from imgae_dx.testing.sample.dicom import rsna_dicom
from imgae_dx.testing.sample.plan import Anatomy, ImagePlan, plan_images, plan_lesion, warp_box
from imgae_dx.testing.sample.render import Renderer
from imgae_dx.utils.atomic import atomic_open

#: Findings drawn as opacities: an image with them is Lung Opacity, or loses them (Not Normal).
OPACITY_FINDINGS = frozenset({"Infiltration", "Pneumonia", "Consolidation", "Edema"})
SUBMISSION, GCP_NOTE = OTHER_FILES[0], OTHER_FILES[1]


@dataclass(frozen=True)
class RsnaImage:
    """One image of the sample: its plan (pixels), patientId, class and boxes (x, y, w, h)."""

    plan: ImagePlan
    patient_id: str
    cls: str
    boxes: tuple[tuple[float, float, float, float], ...] = ()


def _opacity(p: ImagePlan, an: Anatomy, rng: np.random.Generator) -> tuple[ImagePlan, tuple]:
    """``p`` with one or two pneumonia opacities instead of its findings, and their boxes."""
    van = an.for_view(p.view)
    lesions = [les for _ in range(1 + int(rng.random() < 0.45))
               if (les := plan_lesion(rng, van, "Pneumonia")) is not None]
    plan = replace(p, findings=("Pneumonia",), lesions=lesions, heart_scale=1.0, boxes=[], rgba=False)
    boxes = tuple(b for les in lesions if les.box is not None and (b := warp_box(plan, les.box)) is not None)
    return plan, boxes


def _not_normal(p: ImagePlan, an: Anatomy, rng: np.random.Generator) -> ImagePlan:
    """``p`` without its opacities (an effusion when nothing else is left)."""
    findings = tuple(f for f in p.findings if f not in OPACITY_FINDINGS)
    lesions = [les for les in p.lesions if les.finding not in OPACITY_FINDINGS]
    if not findings:
        les = plan_lesion(rng, an.for_view(p.view), "Effusion")
        findings, lesions = ("Effusion",), [les] if les is not None else []
    return replace(p, findings=findings, lesions=lesions, boxes=[], rgba=False)


def plan_rsna(n: int, seed: int) -> tuple[list[RsnaImage], dict[int, Anatomy]]:
    """``n`` images of ``n`` synthetic patients (each the first image of a sample patient) with
    RSNA's classes, and the anatomy the renderer needs."""
    want = 4 * n
    while True:
        plans, anatomy, _ = plan_images(want, 1, seed)
        first = [p for p in plans if p.follow == 0]
        if len(first) >= n:
            break
        want *= 2
    rng = np.random.default_rng([seed, 0x25A])
    out = []
    for p in first[:n]:
        pid = str(uuid.UUID(bytes=rng.bytes(16), version=4))
        an = anatomy[p.patient]
        if not p.findings:
            out.append(RsnaImage(replace(p, rgba=False), pid, NORMAL))
        elif rng.random() < 0.4:
            plan, boxes = _opacity(p, an, rng)
            if boxes:
                out.append(RsnaImage(plan, pid, OPACITY, boxes))
            else:  # both opacities fell outside the image: not an opacity case after all
                out.append(RsnaImage(_not_normal(p, an, rng), pid, NOT_NORMAL))
        else:
            out.append(RsnaImage(_not_normal(p, an, rng), pid, NOT_NORMAL))
    return out, anatomy


def _csvs(cohort: list[RsnaImage], seed: int) -> tuple[bytes, bytes]:
    """The labels and class CSVs (RSNA's headers, one row per box, rows in a seeded order)."""
    labels, classes = ["patientId,x,y,width,height,Target"], ["patientId,class"]
    order = np.random.default_rng([seed, 0xC5F]).permutation(len(cohort))
    for i in order.tolist():
        im = cohort[i]
        rows = [f"{x:.1f},{y:.1f},{w:.1f},{h:.1f},1" for x, y, w, h in im.boxes] or [",,,,0"]
        for r in rows:
            labels.append(f"{im.patient_id},{r}")
            classes.append(f"{im.patient_id},{im.cls}")
    return ("\n".join(labels) + "\n").encode(), ("\n".join(classes) + "\n").encode()


def write_rsna_archive(out_dir: str | os.PathLike[str], images: int = 400, seed: int = 0,
                       image_px: int = 1024) -> Path:
    """Write ``out_dir/data.zip`` in the RSNA layout (see the module doc); returns its path.

    Args:
        images: labelled train images (one patient each); test images come on top.
        seed: everything is a function of it.
        image_px: side of the square DICOM frames (RSNA's: 1024; boxes stay in the 1024 frame).
    """
    if images < 4:
        raise ValueError(f"images must be at least 4, got {images}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dest = out / "data.zip"
    n_test = max(2, images // 20)
    cohort, anatomy = plan_rsna(images + n_test, seed)
    train, test = cohort[:images], cohort[images:]
    renderer = Renderer(image_px, seed)

    def dicom(im: RsnaImage) -> bytes:
        p = im.plan
        return rsna_dicom(renderer.render(p, anatomy[p.patient]), im.patient_id, view=p.view,
                          age=str(p.age), sex=p.sex)

    files: dict[str, bytes] = {}
    for folder, part in ((TRAIN_DIR, train), (TEST_DIR, test)):
        files.update(zip([f"{folder}/{im.patient_id}.dcm" for im in part], _ordered_map(dicom, part),
                         strict=True))
    files[LABELS_CSV], files[CLASSES_CSV] = _csvs(train, seed)
    files[SUBMISSION] = ("patientId,PredictionString\n"
                         + "".join(f"{im.patient_id},0.5 0 0 100 100\n" for im in test)).encode()
    files[GCP_NOTE] = (b"https://www.kaggle.com/c/rsna-pneumonia-detection-challenge/overview/"
                       b"gcp-credits\r\n")
    with atomic_open(dest) as f, zipfile.ZipFile(f, "w", allowZip64=True) as zf:
        for name in sorted(files):
            zf.writestr(_zinfo(name, zipfile.ZIP_DEFLATED), files[name], compresslevel=1)
        write_marker(zf, "rsna", seed)
    return dest
