"""Synthetic patients and images for the non-NIH sample layouts (ZhangLab, folder).

Reuses the NIH sample's plan and renderer (:mod:`.plan`, :mod:`.render`): :func:`plan_cohort`
draws ``n`` images of patients (normal or abnormal), optionally turning every abnormal image into
a pneumonia (bacterial: a dense lobar consolidation; viral: bilateral interstitial opacities);
:func:`encode` writes one rendered image as the file a dataset in that layout holds — JPEG or
PNG, gray or 3-channel, non-square.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from imgae_dx.testing.sample.plan import Anatomy, ImagePlan, plan_images, plan_lesion

PNEUMONIA_KINDS = ("bacteria", "virus")


@dataclass(frozen=True)
class CohortImage:
    """One image of a synthetic cohort: its plan (pixels), patient, class and finding."""

    plan: ImagePlan
    patient: int
    normal: bool
    finding: str  # "" for normals; "bacteria" / "virus" (pneumonia) or an NIH finding, lowercased


def _pneumonia(plan: ImagePlan, an: Anatomy, kind: str) -> ImagePlan:
    """``plan`` with its lesions replaced by a bacterial or viral pneumonia's."""
    rng = np.random.default_rng([plan.seed, 0x9E0])
    van = an.for_view(plan.view)
    wanted = ["Consolidation", "Pneumonia"] if kind == "bacteria" else ["Infiltration", "Infiltration"]
    lesions = [les for f in wanted if (les := plan_lesion(rng, van, f)) is not None]
    return replace(plan, findings=("Pneumonia",), lesions=lesions, heart_scale=1.0, boxes=[], rgba=False)


def plan_cohort(n: int, seed: int, *, pneumonia: bool) -> tuple[list[CohortImage], dict[int, Anatomy]]:
    """``n`` images of synthetic patients (a patient's images are consecutive) and their anatomy.

    With ``pneumonia``, every abnormal image shows a pneumonia of its patient's kind (bacteria or
    virus, drawn per patient); otherwise abnormal images keep their NIH findings and the finding
    is the first of them, lowercased.
    """
    plans, anatomy, _ = plan_images(n, 1, seed)
    out: list[CohortImage] = []
    kinds: dict[int, str] = {}
    rng = np.random.default_rng([seed, 0xC0B])
    for p in plans[:n]:
        p = replace(p, rgba=False)
        if not p.findings:
            out.append(CohortImage(p, p.patient, True, ""))
        elif pneumonia:
            kind = kinds.setdefault(p.patient, PNEUMONIA_KINDS[int(rng.integers(2))])
            out.append(CohortImage(_pneumonia(p, anatomy[p.patient], kind), p.patient, False, kind))
        else:
            out.append(CohortImage(p, p.patient, False, p.findings[0].lower()))
    return out, anatomy


def encode(img: np.ndarray, fmt: str, *, rgb: bool, aspect: float, scale: float) -> bytes:
    """A rendered square gray image as a file: centre-cropped to ``aspect`` (width / height),
    resized to ``scale`` × its side (area), 3-channel when ``rgb``, JPEG (quality 90) or PNG."""
    n = img.shape[0]
    if aspect >= 1:
        h, w = int(round(n / aspect)), n
    else:
        h, w = n, int(round(n * aspect))
    y0, x0 = (n - h) // 2, (n - w) // 2
    out = img[y0:y0 + h, x0:x0 + w]
    out = cv2.resize(out, (max(8, int(round(w * scale))), max(8, int(round(h * scale)))),
                     interpolation=cv2.INTER_AREA)
    if rgb:
        out = cv2.cvtColor(out, cv2.COLOR_GRAY2BGR)
    if fmt == "jpeg":
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, 90])
    else:
        ok, buf = cv2.imencode(".png", out, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover - cv2 always encodes uint8
        raise RuntimeError(f"{fmt} encoding failed")
    return buf.tobytes()
