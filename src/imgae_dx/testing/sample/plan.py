"""Sample archive, phase 1: the *plan* — every image's metadata, anatomy, lesions and boxes.

Cheap and independent of the pixel size: :func:`plan_images` draws, from ``seed`` alone, the
patients (age, sex, follow-ups, PA/AP views, train/test), their anatomy (:class:`Anatomy`) and each
image's findings with lesion geometry and ``BBox_List`` boxes in the 1024-px frame. The renderer
(:mod:`.render`) turns plans into pixels; :mod:`.archive` writes the zip.

``variety="standard"`` (the demo's archive) keeps poses, exposures and bodies in narrow ranges.
``variety="wide"`` is a harder *development* archive for recipe choices that must carry over to real
radiographs, whose normals vary far more: every range of the body habitus, pose, exposure and
detector noise is widened, and images of both classes get what real normals show — ECG leads and
wires, a collimation border — from a separate generator. Findings follow the same distributions;
the standard archive's bytes are unchanged by this option.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from imgae_dx.data.datasets.nih import NORMAL_LABEL

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


VARIETIES = ("standard", "wide")


def _u(rng: np.random.Generator, lo: float, hi: float, widen: float) -> float:
    """``rng.uniform(lo, hi)``, or over the range widened ``widen``-fold about its middle."""
    if widen == 1.0:
        return float(rng.uniform(lo, hi))
    mid, half = 0.5 * (lo + hi), 0.5 * (hi - lo) * widen
    return float(rng.uniform(mid - half, mid + half))


# ------------------------------------------------------------------------------------ planning
@dataclass(frozen=True)
class Anatomy:
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

    def for_view(self, view: str) -> Anatomy:
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


def new_anatomy(rng: np.random.Generator, widen: float = 1.0) -> Anatomy:
    """A patient's geometry; ``widen`` > 1 spreads the body habitus ranges (see the module doc)."""
    w = widen
    cx = 0.5 + _u(rng, -0.02, 0.02, w)
    bw = _u(rng, 0.40, 0.46, w)
    lo = bw * _u(rng, 0.82, 0.88, min(w, 1.5))
    cp = _u(rng, 0.76, 0.83, w)
    female = bool(rng.random() < 0.45)
    return Anatomy(
        cx=cx, bw=bw, top=_u(rng, 0.10, 0.14, w), cp=cp, dome=_u(rng, 0.05, 0.085, w),
        lm=_u(rng, 0.055, 0.07, min(w, 1.5)), lo=lo, hx=cx + _u(rng, 0.035, 0.055, w),
        hy=cp - _u(rng, 0.13, 0.16, w), hrx=_u(rng, 0.16, 0.175, w), hry=_u(rng, 0.105, 0.125, w),
        hang=_u(rng, -22, -10, w), hv=_u(rng, 0.62, 0.7, w), depth=_u(rng, 0.55, 0.66, w),
        rib_gap=_u(rng, 0.058, 0.066, w), rib_phase=_u(rng, 0.0, 0.02, w),
        rib_w=_u(rng, 0.014, 0.019, w), clav_y=_u(rng, 0.15, 0.18, w), female=female,
        tex_seed=int(rng.integers(2**31)),
    )


@dataclass
class Lesion:
    finding: str
    side: int
    params: dict[str, float]
    box: tuple[float, float, float, float] | None  # x0, y0, x1, y1 in the patient frame (normalised)


@dataclass
class ImagePlan:
    name: str
    patient: int
    follow: int
    view: str
    age: int
    sex: str
    findings: tuple[str, ...]
    lesions: list[Lesion]
    heart_scale: float
    warp: tuple[float, float, float, float]  # angle (deg), scale, tx, ty (normalised)
    window: tuple[float, float, float]  # gain, bias, gamma
    noise: tuple[float, int, int, int]  # sigma (grey levels), pool offset x, y, flip code
    markers: tuple[int, float, float]  # which corner style, x, y
    orig: tuple[int, int, float]
    rgba: bool
    seed: int
    # what real normals show too (``variety="wide"`` only): ECG leads as (x, y) in the patient frame,
    # a wire's control points per lead, and the collimation border (fraction of the side) per edge
    leads: tuple[tuple[float, float], ...] = ()
    collimation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # left, top, right, bottom
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


def _point_in_lung(rng: np.random.Generator, an: Anatomy, s: int, r: float,
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


def plan_lesion(rng: np.random.Generator, an: Anatomy, finding: str) -> Lesion | None:
    """Parameters (and box) of one finding. Cardiomegaly is a heart scale, handled by the caller."""
    sev = _severity(rng)
    s = int(rng.choice([-1, 1]))
    k = BOX_FRAME
    if finding == "Nodule":
        r = rng.uniform(34, 72) / k * (0.8 + 0.25 * sev)
        x, y = _point_in_lung(rng, an, s, r)
        amp = sev * rng.uniform(0.26, 0.36)
        return Lesion(finding, s, dict(x=x, y=y, r=r, amp=amp), (x - 1.1 * r, y - 1.1 * r, x + 1.1 * r, y + 1.1 * r))
    if finding == "Mass":
        r = rng.uniform(70, 150) / k * (0.8 + 0.2 * sev)
        x, y = _point_in_lung(rng, an, s, r)
        amp = sev * rng.uniform(0.22, 0.32)
        return Lesion(finding, s, dict(x=x, y=y, r=r, amp=amp, seed=float(rng.integers(2**31))),
                       (x - 1.3 * r, y - 1.3 * r, x + 1.3 * r, y + 1.3 * r))
    if finding in ("Infiltration", "Pneumonia"):
        rx = rng.uniform(0.06, 0.12) * (0.85 + 0.2 * sev)
        ry = rng.uniform(0.07, 0.14) * (0.85 + 0.2 * sev)
        x, y = _point_in_lung(rng, an, s, min(rx, ry), (0.2, 0.95))
        amp = sev * rng.uniform(0.24, 0.34) * (1.15 if finding == "Pneumonia" else 1.0)
        dense = 0.55 if finding == "Pneumonia" else 0.3
        return Lesion(finding, s, dict(x=x, y=y, rx=rx, ry=ry, amp=amp, dense=dense,
                                        seed=float(rng.integers(2**31))),
                       (x - rx, y - ry, x + rx, y + ry))
    if finding == "Consolidation":
        rx, ry = rng.uniform(0.08, 0.13), rng.uniform(0.08, 0.12)
        x, y = _point_in_lung(rng, an, s, min(rx, ry), (0.45, 0.95))
        amp = sev * rng.uniform(0.28, 0.36)
        return Lesion(finding, s, dict(x=x, y=y, rx=rx, ry=ry, amp=amp, dense=0.8,
                                        seed=float(rng.integers(2**31))), None)
    if finding == "Effusion":
        cps = an.cp_side(s)
        level = cps - (cps - an.top) * rng.uniform(0.10, 0.26) * (0.6 + 0.45 * sev)
        amp = sev * rng.uniform(0.26, 0.36)
        y0 = level - 0.05
        return Lesion(finding, s, dict(level=level, amp=amp),
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
        return Lesion(finding, s, dict(t_end=t_end, gap=gap, amp=amp),
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
        return Lesion(finding, s, dict(x=x, y=y, length=length, width=width, ang=ang, amp=amp,
                                        wedge=wedge), box)
    if finding == "Edema":
        return Lesion(finding, s, dict(amp=sev * rng.uniform(0.14, 0.22), r=rng.uniform(0.11, 0.16),
                                        seed=float(rng.integers(2**31))), None)
    if finding == "Emphysema":
        return Lesion(finding, s, dict(amp=sev * rng.uniform(0.07, 0.11)), None)
    if finding == "Fibrosis":
        return Lesion(finding, s, dict(amp=sev * rng.uniform(0.16, 0.24),
                                        seed=float(rng.integers(2**31))), None)
    if finding == "Pleural_Thickening":
        return Lesion(finding, s, dict(amp=sev * rng.uniform(0.2, 0.3), w=rng.uniform(0.015, 0.03),
                                        t_end=rng.uniform(0.35, 0.7)), None)
    if finding == "Hernia":
        return Lesion(finding, s, dict(amp=sev * rng.uniform(0.2, 0.3), r=rng.uniform(0.05, 0.08)), None)
    return None


def plan_images(images_per_stage: int, stages: int, seed: int, variety: str = "standard",
                ) -> tuple[list[ImagePlan], dict[int, Anatomy], set[int]]:
    """Every image's metadata and drawing parameters; independent of the pixel size."""
    if variety not in VARIETIES:
        raise ValueError(f"variety must be one of {', '.join(VARIETIES)}, got {variety!r}")
    wide = variety == "wide"
    w_body, w_pose = (1.8, 3.0) if wide else (1.0, 1.0)  # how far each range is widened
    rng = np.random.default_rng([seed, 0x5A3])
    n_archive = images_per_stage * stages
    n_extra = max(5, int(round(0.03 * n_archive)))
    plans: list[ImagePlan] = []
    anatomy: dict[int, Anatomy] = {}
    pid = 0
    primary_names = list(_PRIMARY)
    primary_p = np.array(list(_PRIMARY.values()))
    primary_p = primary_p / primary_p.sum()
    counts = np.array([1, 2, 3, 4, 5, 6, 7, 8, 10])
    counts_p = np.array([0.33, 0.2, 0.13, 0.1, 0.08, 0.06, 0.04, 0.035, 0.025])
    counts_p = counts_p / counts_p.sum()
    while len(plans) < n_archive + n_extra:
        pid += int(rng.integers(1, 4))
        an = new_anatomy(rng, w_body)
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
            lesions: list[Lesion] = []
            heart_scale = rng.uniform(0.96, 1.04)
            for f in findings:
                if f == "Cardiomegaly":
                    heart_scale = 1.0 + 0.33 * _severity(rng)
                    lesions.append(Lesion(f, 1, {}, van.heart_box(heart_scale)))
                else:
                    les = plan_lesion(rng, van, f)
                    if les is not None:
                        lesions.append(les)
            warp = (_u(rng, -1.5, 1.5, w_pose), _u(rng, 0.98, 1.02, w_pose),
                    _u(rng, -0.015, 0.015, w_pose), _u(rng, -0.015, 0.015, w_pose))
            window = (_u(rng, 0.95, 1.05, w_pose), _u(rng, -0.02, 0.02, w_pose),
                      _u(rng, 0.93, 1.07, w_pose))
            noise = (_u(rng, 0.6, 1.1, w_pose), int(rng.integers(0, 1 << 30)),
                     int(rng.integers(0, 1 << 30)), int(rng.integers(0, 4)))
            markers = (int(rng.integers(0, 3)), float(rng.uniform(0.04, 0.08)), float(rng.uniform(0.05, 0.09)))
            orig_w, orig_h, sp = [(2500, 2048, 0.168), (2992, 2991, 0.143), (3056, 2544, 0.139),
                                  (2048, 2500, 0.168), (2682, 2749, 0.143)][int(rng.integers(0, 5))]
            plan = ImagePlan(
                name=f"{pid:08d}_{follow:03d}.png", patient=pid, follow=follow, view=view,
                age=min(age0 + follow // 3, 95), sex=sex, findings=tuple(findings), lesions=lesions,
                heart_scale=float(heart_scale), warp=warp, window=window, noise=noise,
                markers=markers, orig=(orig_w, orig_h, sp), rgba=False,
                seed=int(rng.integers(2**31)),
            )
            plan.boxes = final_boxes(plan, rng)
            plans.append(plan)
    plans = plans[: n_archive + n_extra]
    if wide:
        _add_real_world_clutter(plans, seed)
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


def _add_real_world_clutter(plans: list[ImagePlan], seed: int) -> None:
    """ECG leads (~35 % of images) and collimation borders (~30 %), independent of the findings,
    from their own generator (the plan's stream, hence labels and splits, stay untouched)."""
    xr = np.random.default_rng([seed, 0xC1A7])
    for p in plans:
        if xr.random() < 0.35:
            n = int(xr.integers(2, 6))
            p.leads = tuple((float(xr.uniform(0.15, 0.85)), float(xr.uniform(0.2, 0.85))) for _ in range(n))
        if xr.random() < 0.3:
            p.collimation = tuple(float(xr.uniform(0.0, 0.07)) if xr.random() < 0.6 else 0.0
                                  for _ in range(4))  # type: ignore[assignment]


def warp_matrix(angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    """2×3 affine in normalised coordinates: rotate/scale about the centre, then shift."""
    a = math.radians(angle)
    c, s = scale * math.cos(a), scale * math.sin(a)
    return np.array([[c, s, 0.5 - 0.5 * c - 0.5 * s + tx], [-s, c, 0.5 + 0.5 * s - 0.5 * c + ty]])


def warp_box(plan: ImagePlan, box: tuple[float, float, float, float]) -> tuple[float, float, float, float] | None:
    """A lesion box ``(x0, y0, x1, y1)`` (normalised patient frame) after the image's pose warp, as
    ``(x, y, w, h)`` in the 1024 px frame; None when it leaves the image."""
    M = warp_matrix(*plan.warp)
    x0, y0, x1, y1 = box
    pts = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]], float) @ M.T
    bx0, by0 = np.clip(pts.min(0), 0.0, 1.0)
    bx1, by1 = np.clip(pts.max(0), 0.0, 1.0)
    if bx1 - bx0 < 1e-3 or by1 - by0 < 1e-3:
        return None
    return bx0 * BOX_FRAME, by0 * BOX_FRAME, (bx1 - bx0) * BOX_FRAME, (by1 - by0) * BOX_FRAME


def final_boxes(plan: ImagePlan, rng: np.random.Generator) -> list[tuple[str, float, float, float, float]]:
    """Boxes of localised findings after the image's pose warp, in the 1024 px frame."""
    out = []
    for les in plan.lesions:
        if les.box is None or les.finding not in _BOXED or rng.random() > 0.85:
            continue
        b = warp_box(plan, les.box)
        if b is not None:
            out.append((_BBOX_LABEL.get(les.finding, les.finding), *b))
    return out
