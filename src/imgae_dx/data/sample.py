"""Synthetic NIH ChestX-ray14 archive: the embedded dataset of the demo and the tests.

``write_sample_archive(out_dir)`` writes ``out_dir/data.zip`` laid out exactly like Kaggle's
``nih-chest-xrays/data`` download: ``images_NNN/images/XXXXXXXX_YYY.png`` members plus
``Data_Entry_2017.csv``, ``BBox_List_2017.csv``, ``train_val_list.txt`` and ``test_list.txt`` at the
root, with the real, malformed CSV headers. The metadata lists a few images the archive does not hold
(as the real metadata lists all 112,120 images whatever part a source holds).

Images are synthetic but anatomically plausible 8-bit gray radiographs (lungs, mediastinum, heart,
ribs, clavicles, diaphragm, soft tissue, vessel texture, detector noise) that vary per patient and
per follow-up, in PA and AP views, with findings from the NIH label set drawn from subtle to obvious
and bounding boxes for localised ones. Everything is a pure function of ``seed``: the archive is
byte-identical between runs (fixed zip timestamps and attributes).

Generation works in two phases: a cheap *plan* (every image's metadata, geometry, lesion parameters
and boxes, independent of ``image_px``) and a *render* (per patient a base anatomy at a canvas of at
most 512 px, per image heart + lesions + pose warp + windowing, then an upsample to ``image_px`` and
detector noise from a precomputed pool). Metadata is therefore identical for every ``image_px``.
"""

from __future__ import annotations

import math
import os
import threading
import zipfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from imgae_dx.data.nih_index import (
    BBOX_HEADER,
    BBOX_NAME,
    DATA_ENTRY_HEADER,
    DATA_ENTRY_NAME,
    NORMAL_LABEL,
    TEST_NAME,
    TRAIN_VAL_NAME,
)
from imgae_dx.utils.atomic import atomic_open

ZIP_DATE = (2018, 2, 21, 12, 0, 0)  # fixed member timestamp: byte-identical archives
MAX_CANVAS = 512  # anatomy is composed at ≤ this size, then upsampled to image_px
RENDER_THREADS = max(1, min(8, os.cpu_count() or 1))  # images rendered at once
BOX_FRAME = 1024.0  # BBox_List coordinates are in the original 1024 px frame

# Primary-finding frequencies (roughly NIH's, tilted towards findings visible at 64-128 px).
_PRIMARY = {
    "Infiltration": 0.17, "Effusion": 0.15, "Atelectasis": 0.12, "Nodule": 0.10, "Mass": 0.09,
    "Pneumothorax": 0.08, "Cardiomegaly": 0.08, "Consolidation": 0.05, "Pneumonia": 0.04,
    "Edema": 0.035, "Pleural_Thickening": 0.02, "Fibrosis": 0.015, "Emphysema": 0.015,
    "Hernia": 0.005,
}
# Findings that get BBox_List rows (the real list has boxes for exactly these eight).
_BOXED = {"Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
          "Pneumothorax"}
_BBOX_LABEL = {"Infiltration": "Infiltrate"}  # the BBox list's own spelling


# ------------------------------------------------------------------------------------ planning
@dataclass(frozen=True)
class _Anatomy:
    """Patient geometry in normalised image coordinates (x right, y down, both in [0, 1])."""

    cx: float  # body midline
    bw: float  # half-width of the torso
    top: float  # lung apex
    cp: float  # costophrenic angle (lowest lung point), left side of the image (patient's right) higher
    dome: float  # diaphragm dome height
    lm: float  # medial lung edge offset from the midline
    lo: float  # lateral lung edge offset from the midline
    hx: float  # heart centre / half-axes / tilt
    hy: float
    hrx: float
    hry: float
    hang: float
    hv: float  # heart brightness
    depth: float  # how dark the lungs are (0..1)
    rib_gap: float  # vertical spacing of posterior ribs
    rib_phase: float
    rib_w: float  # rib thickness
    clav_y: float  # clavicle height at the midline end
    female: bool
    tex_seed: int
    ap: bool = False

    def for_view(self, view: str) -> _Anatomy:
        """AP (supine/portable) geometry: magnified heart, shallower inspiration, higher clavicles."""
        if view != "AP":
            return self
        return replace(
            self, top=self.top + 0.02, cp=self.cp - 0.05, dome=self.dome * 1.1,
            hrx=self.hrx * 1.14, hry=self.hry * 1.08, hy=self.hy - 0.03, clav_y=self.clav_y - 0.035,
            rib_gap=self.rib_gap * 0.94, lo=self.lo * 0.97, ap=True,
        )

    # lung outline ------------------------------------------------------------------------
    def cp_side(self, s: int) -> float:
        return self.cp - (0.015 if s < 0 else 0.0)

    def lateral(self, t: np.ndarray | float) -> np.ndarray:
        t = np.clip(t, 0.0, 1.0)
        return self.lm + 0.05 + (self.lo - self.lm - 0.05) * np.sin(
            0.5 * np.pi * np.minimum(t / 0.55, 1.0)
        ) ** 0.8

    def medial(self, t: np.ndarray | float) -> np.ndarray:
        return self.lm + 0.015 * np.clip(t, 0.0, 1.0)

    def bottom(self, d: np.ndarray | float, s: int) -> np.ndarray:
        u = np.clip((self.lo - np.asarray(d)) / (self.lo - self.lm), 0.0, 1.0)
        return self.cp_side(s) - self.dome * np.sin(np.pi * 0.8 * u) ** 0.6

    def lung_polygon(self, s: int) -> np.ndarray:
        """Outline of one lung (s=-1: image left / patient right; s=+1) as (K, 2) points."""
        cps = self.cp_side(s)
        t = np.linspace(0.0, 1.0, 28)
        lat = np.stack([self.cx + s * self.lateral(t), self.top + t * (cps - self.top)], 1)
        d = np.linspace(self.lo, self.lm + 0.015, 22)
        dome = np.stack([self.cx + s * d, self.bottom(d, s)], 1)
        y_med = float(self.bottom(self.lm + 0.015, s))
        tm = np.linspace((y_med - self.top) / (cps - self.top), 0.0, 18)
        med = np.stack([self.cx + s * self.medial(tm), self.top + tm * (cps - self.top)], 1)
        # round the apex: lift the two top corners towards a dome
        apex_x = np.linspace(self.medial(0.0), self.lateral(0.0), 7)[1:-1]
        apex = np.stack([self.cx + s * apex_x, self.top - 0.012 * np.sin(np.linspace(0, np.pi, 7)[1:-1])], 1)
        return np.concatenate([lat, dome, med, apex[::-1] if s > 0 else apex[::-1]], 0)

    def in_lung(self, x: float, y: float, s: int) -> bool:
        d = s * (x - self.cx)
        cps = self.cp_side(s)
        if y < self.top or y > float(self.bottom(d, s)):
            return False
        t = (y - self.top) / (cps - self.top)
        return bool(self.medial(t) <= d <= self.lateral(t))

    def heart_box(self, scale: float) -> tuple[float, float, float, float]:
        rx, ry = self.hrx * scale, self.hry * scale
        a = math.radians(self.hang)
        ex = math.sqrt((rx * math.cos(a)) ** 2 + (ry * math.sin(a)) ** 2)
        ey = math.sqrt((rx * math.sin(a)) ** 2 + (ry * math.cos(a)) ** 2)
        hx = self.hx + (scale - 1.0) * self.hrx * 0.45  # enlargement is mostly to the patient's left
        return hx - ex, self.hy - ey, hx + ex, self.hy + ey


def _new_anatomy(rng: np.random.Generator) -> _Anatomy:
    cx = 0.5 + rng.uniform(-0.02, 0.02)
    bw = rng.uniform(0.40, 0.46)
    lo = bw * rng.uniform(0.82, 0.88)
    cp = rng.uniform(0.76, 0.83)
    female = bool(rng.random() < 0.45)
    return _Anatomy(
        cx=cx, bw=bw, top=rng.uniform(0.10, 0.14), cp=cp, dome=rng.uniform(0.05, 0.085),
        lm=rng.uniform(0.055, 0.07), lo=lo, hx=cx + rng.uniform(0.035, 0.055),
        hy=cp - rng.uniform(0.13, 0.16), hrx=rng.uniform(0.16, 0.175), hry=rng.uniform(0.105, 0.125),
        hang=rng.uniform(-22, -10), hv=rng.uniform(0.62, 0.7), depth=rng.uniform(0.55, 0.66),
        rib_gap=rng.uniform(0.058, 0.066), rib_phase=rng.uniform(0.0, 0.02),
        rib_w=rng.uniform(0.014, 0.019), clav_y=rng.uniform(0.15, 0.18), female=female,
        tex_seed=int(rng.integers(2**31)),
    )


@dataclass
class _Lesion:
    finding: str
    side: int
    params: dict[str, float]
    box: tuple[float, float, float, float] | None  # x0, y0, x1, y1 in the patient frame (normalised)


@dataclass
class _ImagePlan:
    name: str
    patient: int
    follow: int
    view: str
    age: int
    sex: str
    findings: tuple[str, ...]
    lesions: list[_Lesion]
    heart_scale: float
    warp: tuple[float, float, float, float]  # angle (deg), scale, tx, ty (normalised)
    window: tuple[float, float, float]  # gain, bias, gamma
    noise: tuple[float, int, int, int]  # sigma (grey levels), pool offset x, y, flip code
    markers: tuple[int, float, float]  # which corner style, x, y
    orig: tuple[int, int, float]
    rgba: bool
    seed: int
    stage: int = 0  # 1-based archive stage, 0 = listed in the metadata but not in the archive
    boxes: list[tuple[str, float, float, float, float]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return "|".join(self.findings) if self.findings else NORMAL_LABEL


def _severity(rng: np.random.Generator) -> float:
    """Lesion strength: ~15 % subtle, ~45 % moderate, ~40 % obvious."""
    u = rng.random()
    if u < 0.15:
        return rng.uniform(0.5, 0.7)
    if u < 0.6:
        return rng.uniform(0.85, 1.1)
    return rng.uniform(1.15, 1.5)


def _point_in_lung(rng: np.random.Generator, an: _Anatomy, s: int, r: float,
                   y_range: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float]:
    """A point of lung ``s`` whose disc of radius ~r/2 stays inside the lung."""
    cps = an.cp_side(s)
    lo_y = an.top + (cps - an.top) * y_range[0]
    hi_y = an.top + (cps - an.top) * y_range[1]
    m = 0.5 * r
    for _ in range(200):
        x = an.cx + s * rng.uniform(an.lm, an.lo)
        y = rng.uniform(lo_y, hi_y)
        if all(an.in_lung(x + dx, y + dy, s) for dx, dy in ((0, 0), (m, 0), (-m, 0), (0, m), (0, -m))):
            return x, y
    return an.cx + s * 0.5 * (an.lm + an.lo), an.top + 0.5 * (cps - an.top)


def _plan_lesion(rng: np.random.Generator, an: _Anatomy, finding: str) -> _Lesion | None:
    """Parameters (and box) of one finding. Cardiomegaly is a heart scale, handled by the caller."""
    sev = _severity(rng)
    s = int(rng.choice([-1, 1]))
    k = BOX_FRAME
    if finding == "Nodule":
        r = rng.uniform(34, 72) / k * (0.8 + 0.25 * sev)
        x, y = _point_in_lung(rng, an, s, r)
        amp = sev * rng.uniform(0.26, 0.36)
        return _Lesion(finding, s, dict(x=x, y=y, r=r, amp=amp), (x - 1.1 * r, y - 1.1 * r, x + 1.1 * r, y + 1.1 * r))
    if finding == "Mass":
        r = rng.uniform(70, 150) / k * (0.8 + 0.2 * sev)
        x, y = _point_in_lung(rng, an, s, r)
        amp = sev * rng.uniform(0.22, 0.32)
        return _Lesion(finding, s, dict(x=x, y=y, r=r, amp=amp, seed=float(rng.integers(2**31))),
                       (x - 1.3 * r, y - 1.3 * r, x + 1.3 * r, y + 1.3 * r))
    if finding in ("Infiltration", "Pneumonia"):
        rx = rng.uniform(0.06, 0.12) * (0.85 + 0.2 * sev)
        ry = rng.uniform(0.07, 0.14) * (0.85 + 0.2 * sev)
        x, y = _point_in_lung(rng, an, s, min(rx, ry), (0.2, 0.95))
        amp = sev * rng.uniform(0.24, 0.34) * (1.15 if finding == "Pneumonia" else 1.0)
        dense = 0.55 if finding == "Pneumonia" else 0.3
        return _Lesion(finding, s, dict(x=x, y=y, rx=rx, ry=ry, amp=amp, dense=dense,
                                        seed=float(rng.integers(2**31))),
                       (x - rx, y - ry, x + rx, y + ry))
    if finding == "Consolidation":
        rx, ry = rng.uniform(0.08, 0.13), rng.uniform(0.08, 0.12)
        x, y = _point_in_lung(rng, an, s, min(rx, ry), (0.45, 0.95))
        amp = sev * rng.uniform(0.28, 0.36)
        return _Lesion(finding, s, dict(x=x, y=y, rx=rx, ry=ry, amp=amp, dense=0.8,
                                        seed=float(rng.integers(2**31))), None)
    if finding == "Effusion":
        cps = an.cp_side(s)
        level = cps - (cps - an.top) * rng.uniform(0.10, 0.26) * (0.6 + 0.45 * sev)
        amp = sev * rng.uniform(0.26, 0.36)
        y0 = level - 0.05
        return _Lesion(finding, s, dict(level=level, amp=amp),
                       (an.cx + s * (an.lo + 0.01) if s < 0 else an.cx + s * (an.lm + 0.01), y0,
                        an.cx + s * (an.lm + 0.01) if s < 0 else an.cx + s * (an.lo + 0.01), cps + 0.01))
    if finding == "Pneumothorax":
        t_end = rng.uniform(0.45, 0.8)
        gap = rng.uniform(0.05, 0.09) * (0.7 + 0.5 * sev)
        amp = sev * rng.uniform(0.14, 0.19)
        cps = an.cp_side(s)
        y1 = an.top + t_end * (cps - an.top)
        xo = an.cx + s * an.lo
        xi = an.cx + s * (an.lo - gap - 0.04)
        return _Lesion(finding, s, dict(t_end=t_end, gap=gap, amp=amp),
                       (min(xo, xi), an.top - 0.015, max(xo, xi), y1))
    if finding == "Atelectasis":
        length = rng.uniform(0.08, 0.17) * (0.85 + 0.2 * sev)
        width = rng.uniform(0.02, 0.04) * (0.8 + 0.4 * sev)
        x, y = _point_in_lung(rng, an, s, length * 0.6, (0.5, 0.92))
        ang = rng.uniform(-25, 25)
        amp = sev * rng.uniform(0.26, 0.36)
        wedge = float(rng.random() < 0.4)
        e = 0.5 * length + width
        box = (x - e, y - e * 0.55 - 0.02, x + e, y + e * 0.55 + 0.02)
        if wedge:
            box = (min(box[0], an.cx + s * an.lm - 0.02), box[1], max(box[2], an.cx + s * an.lm + 0.02), box[3] + 0.03)
        return _Lesion(finding, s, dict(x=x, y=y, length=length, width=width, ang=ang, amp=amp,
                                        wedge=wedge), box)
    if finding == "Edema":
        return _Lesion(finding, s, dict(amp=sev * rng.uniform(0.14, 0.22), r=rng.uniform(0.11, 0.16),
                                        seed=float(rng.integers(2**31))), None)
    if finding == "Emphysema":
        return _Lesion(finding, s, dict(amp=sev * rng.uniform(0.07, 0.11)), None)
    if finding == "Fibrosis":
        return _Lesion(finding, s, dict(amp=sev * rng.uniform(0.16, 0.24),
                                        seed=float(rng.integers(2**31))), None)
    if finding == "Pleural_Thickening":
        return _Lesion(finding, s, dict(amp=sev * rng.uniform(0.2, 0.3), w=rng.uniform(0.015, 0.03),
                                        t_end=rng.uniform(0.35, 0.7)), None)
    if finding == "Hernia":
        return _Lesion(finding, s, dict(amp=sev * rng.uniform(0.2, 0.3), r=rng.uniform(0.05, 0.08)), None)
    return None


def _plan(images_per_stage: int, stages: int, seed: int) -> tuple[list[_ImagePlan], dict[int, _Anatomy], set[int]]:
    """Every image's metadata and drawing parameters; independent of the pixel size."""
    rng = np.random.default_rng([seed, 0x5A3])
    n_archive = images_per_stage * stages
    n_extra = max(5, int(round(0.03 * n_archive)))
    plans: list[_ImagePlan] = []
    anatomy: dict[int, _Anatomy] = {}
    pid = 0
    primary_names = list(_PRIMARY)
    primary_p = np.array(list(_PRIMARY.values()))
    primary_p = primary_p / primary_p.sum()
    counts = np.array([1, 2, 3, 4, 5, 6, 7, 8, 10])
    counts_p = np.array([0.33, 0.2, 0.13, 0.1, 0.08, 0.06, 0.04, 0.035, 0.025])
    counts_p = counts_p / counts_p.sum()
    while len(plans) < n_archive + n_extra:
        pid += int(rng.integers(1, 4))
        an = _new_anatomy(rng)
        anatomy[pid] = an
        sick = rng.random() < 0.5
        p_abn = rng.uniform(0.72, 0.95) if sick else rng.uniform(0.0, 0.12)
        primary = primary_names[int(rng.choice(len(primary_names), p=primary_p))]
        p_pa = 0.92 if rng.random() < 0.66 else 0.25
        sex = "F" if an.female else "M"
        age0 = int(np.clip(rng.normal(47, 17), 1, 92))
        n_img = int(rng.choice(counts, p=counts_p))
        for follow in range(n_img):
            view = "PA" if rng.random() < p_pa else "AP"
            van = an.for_view(view)
            findings: list[str] = []
            if rng.random() < p_abn:
                findings.append(primary if rng.random() < 0.7 else
                                primary_names[int(rng.choice(len(primary_names), p=primary_p))])
                while rng.random() < 0.28 and len(findings) < 4:
                    f = primary_names[int(rng.choice(len(primary_names), p=primary_p))]
                    if f not in findings:
                        findings.append(f)
            findings.sort()
            lesions: list[_Lesion] = []
            heart_scale = rng.uniform(0.96, 1.04)
            for f in findings:
                if f == "Cardiomegaly":
                    heart_scale = 1.0 + 0.33 * _severity(rng)
                    lesions.append(_Lesion(f, 1, {}, van.heart_box(heart_scale)))
                else:
                    les = _plan_lesion(rng, van, f)
                    if les is not None:
                        lesions.append(les)
            warp = (float(rng.uniform(-1.5, 1.5)), float(rng.uniform(0.98, 1.02)),
                    float(rng.uniform(-0.015, 0.015)), float(rng.uniform(-0.015, 0.015)))
            window = (float(rng.uniform(0.95, 1.05)), float(rng.uniform(-0.02, 0.02)),
                      float(rng.uniform(0.93, 1.07)))
            noise = (float(rng.uniform(0.6, 1.1)), int(rng.integers(0, 1 << 30)),
                     int(rng.integers(0, 1 << 30)), int(rng.integers(0, 4)))
            markers = (int(rng.integers(0, 3)), float(rng.uniform(0.04, 0.08)), float(rng.uniform(0.05, 0.09)))
            orig_w, orig_h, sp = [(2500, 2048, 0.168), (2992, 2991, 0.143), (3056, 2544, 0.139),
                                  (2048, 2500, 0.168), (2682, 2749, 0.143)][int(rng.integers(0, 5))]
            plan = _ImagePlan(
                name=f"{pid:08d}_{follow:03d}.png", patient=pid, follow=follow, view=view,
                age=min(age0 + follow // 3, 95), sex=sex, findings=tuple(findings), lesions=lesions,
                heart_scale=float(heart_scale), warp=warp, window=window, noise=noise,
                markers=markers, orig=(orig_w, orig_h, sp), rgba=False,
                seed=int(rng.integers(2**31)),
            )
            plan.boxes = _final_boxes(plan, rng)
            plans.append(plan)
    plans = plans[: n_archive + n_extra]
    for i, p in enumerate(plans[:n_archive]):
        p.stage = i // images_per_stage + 1
    # RGBA: ~0.5 % of the archive's images, at least 2 (when there are that many)
    n_rgba = min(n_archive, max(2, int(round(0.005 * n_archive))))
    for i in rng.choice(n_archive, size=n_rgba, replace=False):
        plans[int(i)].rgba = True
    # patient-disjoint official lists: ~30 % of patients in test
    pids = sorted({p.patient for p in plans})
    order = rng.permutation(len(pids))
    n_test = max(1, int(round(0.3 * len(pids))))
    test_patients = {pids[int(i)] for i in order[:n_test]}
    return plans, anatomy, test_patients


def _final_boxes(plan: _ImagePlan, rng: np.random.Generator) -> list[tuple[str, float, float, float, float]]:
    """Boxes of localised findings after the image's pose warp, in the 1024 px frame."""
    ang, sc, tx, ty = plan.warp
    M = _warp_matrix(ang, sc, tx, ty)
    out = []
    for les in plan.lesions:
        if les.box is None or les.finding not in _BOXED or rng.random() > 0.85:
            continue
        x0, y0, x1, y1 = les.box
        pts = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]], float) @ M.T
        bx0, by0 = np.clip(pts.min(0), 0.0, 1.0)
        bx1, by1 = np.clip(pts.max(0), 0.0, 1.0)
        if bx1 - bx0 < 1e-3 or by1 - by0 < 1e-3:
            continue
        out.append((_BBOX_LABEL.get(les.finding, les.finding), bx0 * BOX_FRAME, by0 * BOX_FRAME,
                    (bx1 - bx0) * BOX_FRAME, (by1 - by0) * BOX_FRAME))
    return out


def _warp_matrix(angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    """2×3 affine in normalised coordinates: rotate/scale about the centre, then shift."""
    a = math.radians(angle)
    c, s = scale * math.cos(a), scale * math.sin(a)
    return np.array([[c, s, 0.5 - 0.5 * c - 0.5 * s + tx], [-s, c, 0.5 + 0.5 * s - 0.5 * c + ty]])


# ------------------------------------------------------------------------------------ rendering
def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field (float32 size×size, ~N(0,1)) from a cells×cells grid, bicubic upsampled."""
    g = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    big = cv2.resize(g, (size * (cells + 3) // cells, size * (cells + 3) // cells), interpolation=cv2.INTER_CUBIC)
    o = size * 3 // (2 * cells)
    return big[o:o + size, o:o + size]


def _poly_px(pts: np.ndarray, C: int) -> np.ndarray:
    return np.round(pts * C * 16).astype(np.int32).reshape(-1, 1, 2)


def _fill(C: int, polys: list[np.ndarray]) -> np.ndarray:
    m = np.zeros((C, C), np.uint8)
    cv2.fillPoly(m, [_poly_px(p, C) for p in polys], 255, lineType=cv2.LINE_AA, shift=4)
    return m.astype(np.float32) * (1.0 / 255.0)


def _lines(C: int, curves: list[np.ndarray], width: float, value: int = 255, canvas: np.ndarray | None = None) -> np.ndarray:
    m = np.zeros((C, C), np.uint8) if canvas is None else canvas
    cv2.polylines(m, [_poly_px(c, C) for c in curves], False, value,
                  thickness=max(1, int(round(width * C))), lineType=cv2.LINE_AA, shift=4)
    return m


def _blur(a: np.ndarray, sigma_norm: float) -> np.ndarray:
    C = a.shape[0]
    s = max(0.3, sigma_norm * C)
    return cv2.GaussianBlur(a, (0, 0), s)


@dataclass
class _Base:
    img: np.ndarray  # C×C float32, anatomy without heart and vessels
    vessels: np.ndarray  # C×C float32, lung markings
    lung: np.ndarray  # C×C float32 soft lung mask
    lung_side: dict[int, np.ndarray]  # hard mask per side (0/1 float32)


def _render_base(an: _Anatomy, C: int) -> _Base:
    rng = np.random.default_rng([an.tex_seed, C, int(an.ap)])
    x = ((np.arange(C, dtype=np.float32) + 0.5) / C)[None, :]
    y = ((np.arange(C, dtype=np.float32) + 0.5) / C)[:, None]
    cx, bw = an.cx, an.bw
    # torso with neck and shoulders, arms at the sides
    torso = np.array([
        [cx - 0.085, -0.01], [cx - 0.095, 0.05], [cx - 0.2, 0.085], [cx - bw * 1.04, 0.13],
        [cx - bw * 1.02, 0.5], [cx - bw, 0.85], [cx - bw * 0.97, 1.01],
        [cx + bw * 0.97, 1.01], [cx + bw, 0.85], [cx + bw * 1.02, 0.5], [cx + bw * 1.04, 0.13],
        [cx + 0.2, 0.085], [cx + 0.095, 0.05], [cx + 0.085, -0.01]])
    arms = [np.array([[cx + s * (bw + 0.035), 0.12], [cx + s * 0.56, 0.09], [cx + s * 0.56, 0.62],
                      [cx + s * (bw + 0.05), 0.55]]) for s in (-1, 1)]
    body = _blur(_fill(C, [torso]), 0.006)
    arm = _blur(_fill(C, arms), 0.01)
    prof = np.sqrt(np.clip(1.0 - ((x - cx) / (bw * 1.05)) ** 2, 0.0, 1.0))
    img = 0.03 + body * (0.33 + 0.30 * prof) + arm * 0.30 * (1.0 - body)
    # humeral heads
    hum = np.zeros((C, C), np.uint8)
    for s in (-1, 1):
        cv2.circle(hum, (int((cx + s * (bw + 0.06)) * C), int(0.16 * C)), int(0.055 * C), 255, -1, cv2.LINE_AA)
    img += 0.12 * _blur(hum.astype(np.float32) / 255.0, 0.008)
    # lungs
    lung_side = {s: _fill(C, [an.lung_polygon(s)]) for s in (-1, 1)}
    hard = ((lung_side[-1] + lung_side[1]) > 0.5).astype(np.uint8)
    dist = cv2.distanceTransform(hard, cv2.DIST_L2, 3) / C  # distance to the lung border
    lung = _blur(np.minimum(1.0, (dist / 0.025)) ** 0.6, 0.005).astype(np.float32)
    yy_t = np.clip((y - an.top) / (an.cp - an.top), 0.0, 1.0)
    depth = an.depth * (1.0 - 0.22 * yy_t) * (1.0 - 0.12 * np.exp(-((x - cx) / 0.12) ** 2))
    img = img * (1.0 - depth * lung)
    # spine with vertebral rhythm, trachea
    spine_x = np.exp(-(((x - cx) / 0.036) ** 2))
    vert = 0.82 + 0.18 * np.cos(2 * np.pi * (y - an.rib_phase) / (an.rib_gap * 0.62))
    img += 0.11 * spine_x * vert * np.clip((y - 0.02) / 0.1, 0, 1)
    trachea = np.exp(-(((x - cx) / 0.014) ** 2)) * np.clip((an.top + 0.2 - y) / 0.08, 0, 1) * (y > 0.02)
    img -= 0.09 * trachea
    # aortic knob, stomach bubble under the left hemidiaphragm (image right)
    knob = np.zeros((C, C), np.uint8)
    cv2.circle(knob, (int((cx + an.lm - 0.005) * C), int((an.top + 0.14) * C)), int(0.03 * C), 255, -1, cv2.LINE_AA)
    cv2.rectangle(knob, (int((cx - an.lm) * C), int((an.top + 0.05) * C)),
                  (int((cx + an.lm - 0.005) * C), int((an.top + 0.3) * C)), 255, -1)
    img = np.maximum(img, _blur(knob.astype(np.float32) / 255.0, 0.01) * (an.hv - 0.03))
    gas = np.zeros((C, C), np.uint8)
    cv2.ellipse(gas, (int((cx + 0.16) * C), int((an.cp + 0.045) * C)), (int(0.06 * C), int(0.03 * C)),
                0, 0, 360, 255, -1, cv2.LINE_AA)
    img -= 0.16 * _blur(gas.astype(np.float32) / 255.0, 0.008) * body
    # breast shadows
    if an.female:
        br = np.zeros((C, C), np.uint8)
        for s in (-1, 1):
            cv2.ellipse(br, (int((cx + s * 0.22) * C), int((an.cp - 0.02) * C)),
                        (int(0.17 * C), int(0.12 * C)), 0, 0, 360, 255, -1, cv2.LINE_AA)
        img += 0.07 * _blur(br.astype(np.float32) / 255.0, 0.03)
    # ribs: posterior (bright, descending laterally) and fainter anterior ones, cortical rims
    post, ant = [], []
    for s in (-1, 1):
        for i in range(11):
            y0 = an.top - 0.03 + an.rib_phase + i * an.rib_gap
            u = np.linspace(0.0, 1.0, 24)
            d = 0.035 + u * (bw * 0.98 - 0.035)
            yy = y0 - 0.025 * u + 0.07 * u**2 + 0.13 * u**4
            post.append(np.stack([cx + s * d, yy], 1))
            if i < 7:
                ua = np.linspace(0.3, 1.0, 18)
                da = ua * bw * 0.95
                ya = y0 + 0.2 + 0.01 * i - 0.2 * ua + 0.04 * (1 - ua) ** 2
                ant.append(np.stack([cx + s * da, ya], 1))
    rib = _lines(C, post, an.rib_w * 1.3, 255)
    _lines(C, post, an.rib_w * 0.65, 150, canvas=rib)
    rib_a = _lines(C, ant, an.rib_w * 0.9, 255)
    ribs = _blur(rib.astype(np.float32) / 255.0, 0.0025) + 0.45 * _blur(rib_a.astype(np.float32) / 255.0, 0.004)
    img += 0.075 * ribs * (0.2 + 0.8 * lung) * body
    # clavicles (and, in AP, the medial scapular borders over the lungs)
    clav = []
    for s in (-1, 1):
        u = np.linspace(0.0, 1.0, 20)
        clav.append(np.stack([cx + s * (0.035 + 0.27 * u), an.clav_y - 0.06 * u + 0.015 * np.sin(np.pi * u * 2)], 1))
    cm = _lines(C, clav, 0.024, 255)
    _lines(C, clav, 0.012, 170, canvas=cm)
    img += 0.15 * _blur(cm.astype(np.float32) / 255.0, 0.003)
    if an.ap:
        scap = [np.stack([cx + s * (an.lo - 0.05 + 0.04 * np.sin(np.linspace(0, np.pi, 16))),
                          np.linspace(an.top + 0.06, an.top + 0.38, 16)], 1) for s in (-1, 1)]
        img += 0.05 * _blur(_lines(C, scap, 0.008).astype(np.float32) / 255.0, 0.004)
    # soft texture
    img *= 1.0 + 0.035 * _smooth_noise(rng, C, 6)
    # vessels: ridge network of a smooth random field, dense near the hila
    vessels = np.zeros((C, C), np.float32)
    for s in (-1, 1):  # branches radiating from each hilum: noise fast in angle, slow in radius
        hx, hy = cx + s * (an.lm + 0.045), an.top + 0.3
        ang = np.arctan2(y - hy, s * (x - hx))  # (C, C)
        rad = np.hypot(x - hx, y - hy)
        polar = _smooth_noise(rng, 256, 48) + 0.6 * _smooth_noise(rng, 256, 96)  # rows: angle, cols: radius
        mapx = np.clip(rad / 0.7 * 255.0, 0, 255).astype(np.float32)
        mapy = ((ang + np.pi) / (2 * np.pi) * 255.0 + 6.0 * _smooth_noise(rng, C, 8)).astype(np.float32)
        f = cv2.remap(polar, mapx, mapy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
        width = 0.10 + 0.25 * np.exp(-rad / 0.12)  # vessels taper with distance from the hilum
        ridges = np.clip(1.0 - np.abs(f) / width, 0.0, 1.0) ** 2
        vessels += (0.16 * ridges * (np.exp(-rad / 0.16) + 0.12) * lung_side[s]).astype(np.float32)
    vessels = _blur(vessels, 0.0015) * lung
    return _Base(img.astype(np.float32), vessels, lung.astype(np.float32), lung_side)


def _disc(C: int, x: float, y: float, r: float) -> tuple[np.ndarray, slice, slice]:
    """Smooth disc profile on the ROI around (x, y); returns (patch, rows, cols)."""
    r0, r1 = max(0, int((y - 1.6 * r) * C)), min(C, int((y + 1.6 * r) * C) + 1)
    c0, c1 = max(0, int((x - 1.6 * r) * C)), min(C, int((x + 1.6 * r) * C) + 1)
    yy = ((np.arange(r0, r1, dtype=np.float32) + 0.5) / C)[:, None]
    xx = ((np.arange(c0, c1, dtype=np.float32) + 0.5) / C)[None, :]
    d2 = ((xx - x) ** 2 + (yy - y) ** 2) / (r * r)
    patch = np.clip(1.0 - d2, 0.0, 1.0) ** 0.6
    return patch, slice(r0, r1), slice(c0, c1)


def _draw_lesions(img: np.ndarray, base: _Base, an: _Anatomy,
                  lesions: list[_Lesion], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Adds every finding's opacity (or lucency) to img in place; returns (img, vessel weight)."""
    C = img.shape[0]
    vw = np.ones_like(img)
    x = ((np.arange(C, dtype=np.float32) + 0.5) / C)[None, :]
    y = ((np.arange(C, dtype=np.float32) + 0.5) / C)[:, None]
    for les in lesions:
        p, s = les.params, les.side
        f = les.finding
        if f == "Nodule":
            patch, rs, cs = _disc(C, p["x"], p["y"], p["r"])
            img[rs, cs] += p["amp"] * _blur(patch, 0.002)
        elif f == "Mass":
            lr = np.random.default_rng(int(p["seed"]))
            m = np.zeros_like(img)
            for k in range(4):  # lobulated: a main disc and three offset lobes
                ox, oy = (lr.uniform(-0.5, 0.5, 2) * p["r"]) if k else (0.0, 0.0)
                rr = p["r"] * (lr.uniform(0.5, 0.75) if k else 0.85)
                patch, rs, cs = _disc(C, p["x"] + ox, p["y"] + oy, rr)
                np.maximum(m[rs, cs], patch * (0.9 if k else 1.0), out=m[rs, cs])
            img += p["amp"] * _blur(m, 0.003)
        elif f in ("Infiltration", "Pneumonia", "Consolidation"):
            lr = np.random.default_rng(int(p["seed"]))
            rx, ry = p["rx"], p["ry"]
            r0, r1 = max(0, int((p["y"] - ry) * C)), min(C, int((p["y"] + ry) * C) + 1)
            c0, c1 = max(0, int((p["x"] - rx) * C)), min(C, int((p["x"] + rx) * C) + 1)
            if r1 - r0 < 2 or c1 - c0 < 2:
                continue
            yy = ((np.arange(r0, r1, dtype=np.float32) + 0.5) / C)[:, None]
            xx = ((np.arange(c0, c1, dtype=np.float32) + 0.5) / C)[None, :]
            ell = np.clip(1.0 - ((xx - p["x"]) / rx) ** 2 - ((yy - p["y"]) / ry) ** 2, 0.0, 1.0) ** 0.5
            n = max(r1 - r0, c1 - c0)
            tex = _smooth_noise(lr, n, 5)[: r1 - r0, : c1 - c0] + 0.5 * _smooth_noise(lr, n, 11)[: r1 - r0, : c1 - c0]
            patchy = np.clip((tex + 1.2 - 1.4 * (1 - p["dense"])) / 1.6, 0.0, 1.0)
            lungm = base.lung[r0:r1, c0:c1]
            img[r0:r1, c0:c1] += p["amp"] * ell * patchy * lungm
        elif f == "Effusion":
            hard = base.lung_side[s]
            cps = an.cp_side(s)
            r0 = max(0, int((p["level"] - 0.08) * C))
            yy = y[r0:]
            d = np.clip(s * (x - an.cx), an.lm, an.lo)
            u = (d - an.lm) / (an.lo - an.lm)
            meniscus = p["level"] - 0.06 * u**2  # fluid climbs the lateral chest wall
            m = hard[r0:] * np.clip((yy - meniscus) / 0.015, 0.0, 1.0)
            grad = 0.75 + 0.25 * np.clip((yy - p["level"]) / max(cps - p["level"], 1e-3), 0, 1)
            img[r0:] += p["amp"] * _blur(m * grad, 0.006) * base.lung[r0:]  # soft lung border: no rim
            vw[r0:] *= 1.0 - m
        elif f == "Pneumothorax":
            t = np.linspace(0.0, p["t_end"], 24)
            cps = an.cp_side(s)
            yv = an.top + t * (cps - an.top)
            taper = np.sin(np.pi * 0.5 * np.clip((p["t_end"] - t) / (0.25 * p["t_end"]), 0, 1)) ** 0.5
            outer = an.cx + s * an.lateral(t)
            inner = an.cx + s * (an.lateral(t) - p["gap"] * taper - 0.004)
            region = np.concatenate([np.stack([outer, yv], 1), np.stack([inner, yv], 1)[::-1]], 0)
            apex = np.array([[an.cx + s * an.medial(0.0), an.top - 0.01]])
            region = np.concatenate([apex, region], 0)
            m = _fill(C, [region]) * base.lung_side[s]
            img -= p["amp"] * _blur(m, 0.002)
            vw *= 1.0 - _blur(m, 0.003)
            # the collapsed lung inside the pleural line is denser
            collapsed = np.clip(base.lung_side[s] - _blur(m, 0.01) * 1.5, 0.0, 1.0)
            img += 0.45 * p["amp"] * _blur(collapsed, 0.01) * base.lung
            pleura = _lines(C, [np.stack([inner, yv], 1)], 0.004)
            img += 0.6 * p["amp"] * _blur(pleura.astype(np.float32) / 255.0, 0.0015)
        elif f == "Atelectasis":
            m = np.zeros((C, C), np.uint8)
            cv2.ellipse(m, (int(p["x"] * C), int(p["y"] * C)),
                        (max(1, int(0.5 * p["length"] * C)), max(1, int(0.5 * p["width"] * C))),
                        p["ang"], 0, 360, 255, -1, cv2.LINE_AA)
            if p["wedge"]:
                xm = an.cx + s * an.medial(0.8)
                tri = np.array([[p["x"], p["y"] - 0.02], [xm, p["y"] - 0.04], [xm, p["y"] + 0.07]])
                cv2.fillPoly(m, [_poly_px(tri, C)], 200, lineType=cv2.LINE_AA, shift=4)
            img += p["amp"] * _blur(m.astype(np.float32) / 255.0, 0.005) * base.lung
        elif f == "Edema":
            lr = np.random.default_rng(int(p["seed"]))
            hil = np.exp(-(np.minimum(np.hypot(x - (an.cx - 0.11), y - (an.top + 0.32)),
                                      np.hypot(x - (an.cx + 0.1), y - (an.top + 0.32))) / p["r"]) ** 2)
            haze = hil * (0.75 + 0.25 * _smooth_noise(lr, C, 12))
            img += p["amp"] * haze * base.lung
        elif f == "Emphysema":
            img -= p["amp"] * base.lung
            vw *= 0.55
        elif f == "Fibrosis":
            lr = np.random.default_rng(int(p["seed"]))
            fld = _smooth_noise(lr, C, 40)
            ret = np.clip(1.0 - np.abs(fld) / 0.3, 0.0, 1.0) ** 2
            periph = np.clip((np.abs(x - an.cx) - an.lm - 0.08) / 0.15, 0, 1) * np.clip((y - an.top) / (an.cp - an.top), 0.3, 1)
            img += p["amp"] * ret * periph * base.lung
        elif f == "Pleural_Thickening":
            t = np.linspace(0.0, p["t_end"], 20)
            yv = an.top + t * (an.cp_side(s) - an.top)
            wall = np.stack([an.cx + s * (an.lateral(t) - 0.005), yv], 1)
            m = _lines(C, [wall], p["w"])
            img += p["amp"] * _blur(m.astype(np.float32) / 255.0, 0.004) * base.lung
        elif f == "Hernia":
            hx, hy = an.hx - 0.01, an.cp - 0.07
            patch, rs, cs = _disc(C, hx, hy, p["r"])
            img[rs, cs] += p["amp"] * patch
            patch2, rs2, cs2 = _disc(C, hx + 0.01, hy - 0.3 * p["r"], 0.45 * p["r"])
            img[rs2, cs2] -= 0.8 * p["amp"] * patch2
    return img, vw


def _heart(C: int, an: _Anatomy, scale: float) -> np.ndarray:
    m = np.zeros((C, C), np.uint8)
    hx = an.hx + (scale - 1.0) * an.hrx * 0.45
    cv2.ellipse(m, (int(round(hx * C * 16)), int(round(an.hy * C * 16))),
                (int(round(an.hrx * scale * C * 16)), int(round(an.hry * scale * C * 16))),
                an.hang, 0, 360, 255, -1, cv2.LINE_AA, shift=4)
    return _blur(m.astype(np.float32) / 255.0, 0.007)


class _Renderer:
    """Renders planned images at ``image_px`` (anatomy canvas ≤ MAX_CANVAS, noise at full size)."""

    def __init__(self, image_px: int, seed: int):
        self.N = int(image_px)
        self.C = min(self.N, MAX_CANVAS)
        pad = 256
        rng = np.random.default_rng([seed, 0xD37, self.N])
        self.pool = rng.standard_normal((self.N + pad, self.N + pad), dtype=np.float32)
        self.pad = pad
        # recent (patient, view) → its base, oldest first; a Future, so that threads asking for
        # a base another thread is rendering wait for it instead of rendering it again
        self._bases: dict[tuple[int, str], Future[_Base]] = {}
        self._keep = 4 * RENDER_THREADS
        self._lock = threading.Lock()

    def base(self, pid: int, view: str, an: _Anatomy) -> _Base:
        """The patient's anatomy for a view, rendered once for the images drawn near each other
        (a patient's images are consecutive in the plan). Thread-safe; deterministic."""
        key = (pid, view)
        with self._lock:
            fut = self._bases.get(key)
            mine = fut is None
            if fut is None:
                fut = self._bases[key] = Future()
                while len(self._bases) > self._keep:
                    del self._bases[next(iter(self._bases))]
        if mine:
            try:
                fut.set_result(_render_base(an.for_view(view), self.C))
            except BaseException as e:
                fut.set_exception(e)
        return fut.result()

    def render(self, plan: _ImagePlan, an0: _Anatomy) -> np.ndarray:
        """uint8 N×N gray image (or N×N×4 BGRA when plan.rgba)."""
        C, N = self.C, self.N
        an = an0.for_view(plan.view)
        base = self.base(plan.patient, plan.view, an0)
        rng = np.random.default_rng(plan.seed)
        img = base.img.copy()
        img, vw = _draw_lesions(img, base, an, plan.lesions, rng)
        img += base.vessels * vw
        img = np.maximum(img, _heart(C, an, plan.heart_scale) * an.hv)
        # pose
        M = _warp_matrix(*plan.warp).astype(np.float64)
        M_px = M.copy()
        M_px[:, 2] *= C
        img = cv2.warpAffine(img, M_px, (C, C), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)
        gain, bias, gamma = plan.window
        np.clip(img * gain + bias, 0.0, 1.0, out=img)
        img = cv2.pow(img, gamma)
        if N != C:
            img = cv2.resize(img, (N, N), interpolation=cv2.INTER_LINEAR)
        sigma, ox, oy, flip = plan.noise
        ox, oy = ox % self.pad, oy % self.pad
        nz = self.pool[oy:oy + N, ox:ox + N]
        if flip:
            nz = cv2.flip(nz, flip - 2)
        out = cv2.scaleAdd(nz, sigma / 255.0, img)
        out = cv2.convertScaleAbs(np.clip(out, 0.0, 1.0), alpha=255.0)  # rounds, saturates to uint8
        self._markers(out, plan)
        if plan.rgba:
            out = cv2.cvtColor(out, cv2.COLOR_GRAY2BGRA)
        return out

    def _markers(self, img: np.ndarray, plan: _ImagePlan) -> None:
        N = self.N
        style, mx, my = plan.markers
        scale = N / 1024.0
        font = cv2.FONT_HERSHEY_SIMPLEX
        th = max(1, int(round(3 * scale)))
        if style > 0:  # side marker ("R" at the patient's right = image left)
            cv2.putText(img, "R", (int(mx * N), int(my * N) + int(30 * scale)), font, 1.4 * scale, 235, th,
                        cv2.LINE_AA)
        if plan.view == "AP":
            cv2.putText(img, "AP", (int((1 - mx - 0.08) * N), int(my * N) + int(30 * scale)), font,
                        1.3 * scale, 240, th, cv2.LINE_AA)
            if style != 1:
                cv2.putText(img, "PORTABLE", (int((1 - mx - 0.22) * N), int((my + 0.05) * N) + int(30 * scale)),
                            font, 0.9 * scale, 225, th, cv2.LINE_AA)


# ------------------------------------------------------------------------------------ writing
def _metadata(plans: list[_ImagePlan], test_patients: set[int]) -> dict[str, bytes]:
    de = [DATA_ENTRY_HEADER]
    bb = [BBOX_HEADER]
    tv, te = [], []
    for p in plans:
        w, h, sp = p.orig
        de.append(f"{p.name},{p.label},{p.follow},{p.patient},{p.age},{p.sex},{p.view},{w},{h},{sp},{sp}")
        for lab, bx, by, bw, bh in p.boxes:
            bb.append(f"{p.name},{lab},{bx:.9f},{by:.9f},{bw:.9f},{bh:.9f},,,")
        (te if p.patient in test_patients else tv).append(p.name)
    return {
        DATA_ENTRY_NAME: ("\n".join(de) + "\n").encode(),
        BBOX_NAME: ("\n".join(bb) + "\n").encode(),
        TRAIN_VAL_NAME: ("\n".join(tv) + "\n").encode(),
        TEST_NAME: ("\n".join(te) + "\n").encode(),
    }


def _zinfo(name: str, method: int) -> zipfile.ZipInfo:
    zi = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    zi.compress_type = method
    zi.create_system = 3
    zi.external_attr = 0o100644 << 16
    return zi


def write_sample_archive(out_dir: str | os.PathLike[str], images_per_stage: int = 300, stages: int = 3,
                         seed: int = 0, image_px: int = 1024, *, progress: bool | None = None,
                         png_method: str = "deflate",
                         on_image: Callable[[int, int], None] | None = None) -> Path:
    """Write ``out_dir/data.zip``, a synthetic NIH ChestX-ray14 archive in Kaggle's layout.

    Args:
        out_dir: folder to write into (created if missing).
        images_per_stage: images in each ``images_NNN`` stage.
        stages: number of stages (``images_001`` … ``images_{stages:03d}``).
        seed: everything (patients, findings, pixels) is a function of it; same seed, same bytes.
        image_px: side of the square PNGs (default 1024 like the real ones). Changes pixels only:
            the metadata, including the 1024-frame boxes, is identical for any value.
        progress: show a tqdm bar (None: only when stderr is a terminal).
        png_method: zip method of PNG members, ``"deflate"`` (level 1, like Kaggle deflating
            everything) or ``"stored"``; CSV/TXT members are always deflated.
        on_image: optional callback ``(done, total)`` after each image.

    Returns:
        Path of the written archive. Written atomically (temp file, then ``os.replace``).
    """
    if images_per_stage < 1 or stages < 1 or stages > 999:
        raise ValueError(f"images_per_stage must be ≥ 1 and stages in 1..999, got {images_per_stage}, {stages}")
    if image_px < 32:
        raise ValueError(f"image_px must be ≥ 32, got {image_px}")
    if png_method not in ("deflate", "stored"):
        raise ValueError(f"png_method must be 'deflate' or 'stored', got {png_method!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dest = out / "data.zip"
    plans, anatomy, test_patients = _plan(images_per_stage, stages, seed)
    meta = _metadata(plans, test_patients)
    in_archive = [p for p in plans if p.stage]
    renderer = _Renderer(image_px, seed)
    png_ct = zipfile.ZIP_DEFLATED if png_method == "deflate" else zipfile.ZIP_STORED
    from tqdm.auto import tqdm

    bar = tqdm(total=len(in_archive), desc="sample images", unit="img",
               disable=(not _isatty()) if progress is None else (not progress))
    try:
        with atomic_open(dest) as f, zipfile.ZipFile(f, "w", allowZip64=True) as zf:
            for name in (BBOX_NAME, DATA_ENTRY_NAME):
                zf.writestr(_zinfo(name, zipfile.ZIP_DEFLATED), meta[name], compresslevel=6)
            def png(p: _ImagePlan) -> bytes:
                ok, buf = cv2.imencode(".png", renderer.render(p, anatomy[p.patient]),
                                       [cv2.IMWRITE_PNG_COMPRESSION, 1])
                if not ok:  # pragma: no cover - cv2 always encodes uint8
                    raise RuntimeError(f"PNG encoding failed for {p.name}")
                return buf.tobytes()

            # every image is a function of its own plan (its seed): rendered on several threads,
            # written in plan order, the archive's bytes do not depend on the thread count
            for i, (p, data) in enumerate(zip(in_archive, _ordered_map(png, in_archive), strict=True)):
                zf.writestr(_zinfo(f"images_{p.stage:03d}/images/{p.name}", png_ct), data,
                            compresslevel=1)
                bar.update(1)
                if on_image is not None:
                    on_image(i + 1, len(in_archive))
            for name in (TEST_NAME, TRAIN_VAL_NAME):
                zf.writestr(_zinfo(name, zipfile.ZIP_DEFLATED), meta[name], compresslevel=6)
    finally:
        bar.close()
    return dest


def _ordered_map(fn: Callable[[_ImagePlan], bytes], plans: list[_ImagePlan]) -> Iterator[bytes]:
    """``map(fn, plans)`` on :data:`RENDER_THREADS` threads (numpy and cv2 release the GIL),
    in order, at most twice as many images in flight as threads."""
    with ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="sample-render") as pool:
        pending: deque[Future[bytes]] = deque()
        for p in plans:
            pending.append(pool.submit(fn, p))
            if len(pending) >= 2 * RENDER_THREADS:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _isatty() -> bool:
    import sys

    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
