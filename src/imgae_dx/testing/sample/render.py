"""Sample archive, phase 2: the *render* — planned images to 8-bit gray radiographs.

Per patient a base anatomy (lungs, mediastinum, ribs, clavicles, diaphragm, soft tissue, vessel
texture) at a canvas of at most :data:`MAX_CANVAS` px; per image the heart, the lesions, a pose
warp and windowing; then an upsample to ``image_px`` and detector noise from a precomputed pool.
Deterministic for a given plan and seed, whatever the number of render threads.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass

import cv2
import numpy as np

from imgae_dx.testing.sample.plan import Anatomy, ImagePlan, Lesion, warp_matrix

MAX_CANVAS = 512  # anatomy is composed at ≤ this size, then upsampled to image_px
RENDER_THREADS = max(1, min(8, os.cpu_count() or 1))  # images rendered at once


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
class Base:
    img: np.ndarray  # C×C float32, anatomy without heart and vessels
    vessels: np.ndarray  # C×C float32, lung markings
    lung: np.ndarray  # C×C float32 soft lung mask
    lung_side: dict[int, np.ndarray]  # hard mask per side (0/1 float32)


def _render_base(an: Anatomy, C: int) -> Base:
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
    return Base(img.astype(np.float32), vessels, lung.astype(np.float32), lung_side)


def _disc(C: int, x: float, y: float, r: float) -> tuple[np.ndarray, slice, slice]:
    """Smooth disc profile on the ROI around (x, y); returns (patch, rows, cols)."""
    r0, r1 = max(0, int((y - 1.6 * r) * C)), min(C, int((y + 1.6 * r) * C) + 1)
    c0, c1 = max(0, int((x - 1.6 * r) * C)), min(C, int((x + 1.6 * r) * C) + 1)
    yy = ((np.arange(r0, r1, dtype=np.float32) + 0.5) / C)[:, None]
    xx = ((np.arange(c0, c1, dtype=np.float32) + 0.5) / C)[None, :]
    d2 = ((xx - x) ** 2 + (yy - y) ** 2) / (r * r)
    patch = np.clip(1.0 - d2, 0.0, 1.0) ** 0.6
    return patch, slice(r0, r1), slice(c0, c1)


def _draw_lesions(img: np.ndarray, base: Base, an: Anatomy,
                  lesions: list[Lesion], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
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


def _heart(C: int, an: Anatomy, scale: float) -> np.ndarray:
    m = np.zeros((C, C), np.uint8)
    hx = an.hx + (scale - 1.0) * an.hrx * 0.45
    cv2.ellipse(m, (int(round(hx * C * 16)), int(round(an.hy * C * 16))),
                (int(round(an.hrx * scale * C * 16)), int(round(an.hry * scale * C * 16))),
                an.hang, 0, 360, 255, -1, cv2.LINE_AA, shift=4)
    return _blur(m.astype(np.float32) / 255.0, 0.007)


def _draw_leads(img: np.ndarray, leads: tuple[tuple[float, float], ...], seed: int) -> None:
    """ECG electrodes (bright rings with a dense snap) and their wires, in place (patient frame)."""
    C = img.shape[0]
    lr = np.random.default_rng([seed, 0xECC])
    m = np.zeros((C, C), np.uint8)
    wires = []
    for x, y in leads:
        r = max(1, int(0.016 * C))
        cv2.circle(m, (int(x * C), int(y * C)), r, 160, max(1, r // 3), cv2.LINE_AA)
        cv2.circle(m, (int(x * C), int(y * C)), max(1, r // 3), 255, -1, cv2.LINE_AA)
        # a wire sagging towards the image edge
        ex = float(np.clip(x + lr.uniform(-0.4, 0.4), 0.0, 1.0))
        t = np.linspace(0.0, 1.0, 16)[:, None]
        sag = lr.uniform(0.05, 0.2)
        pts = np.hstack([x + (ex - x) * t, y + (1.02 - y) * t + sag * np.sin(np.pi * t)])
        wires.append(pts)
    _lines(C, wires, 0.004, 200, canvas=m)
    np.maximum(img, _blur(m.astype(np.float32) / 255.0, 0.001) * 0.95, out=img)


def _collimate(img: np.ndarray, borders: tuple[float, float, float, float]) -> None:
    """Bright unexposed bands (fraction of the side per edge: left, top, right, bottom), in place."""
    C = img.shape[0]
    m = np.zeros((C, C), np.float32)
    left, top, right, bottom = (int(round(b * C)) for b in borders)
    m[:, :left] = 1.0
    m[:top] = 1.0
    if right:
        m[:, C - right:] = 1.0
    if bottom:
        m[C - bottom:] = 1.0
    m = _blur(m, 0.003)
    img *= 1.0 - m
    img += 0.9 * m


class Renderer:
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
        self._bases: dict[tuple[int, str], Future[Base]] = {}
        self._keep = 4 * RENDER_THREADS
        self._lock = threading.Lock()

    def base(self, pid: int, view: str, an: Anatomy) -> Base:
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

    def render(self, plan: ImagePlan, an0: Anatomy) -> np.ndarray:
        """uint8 N×N gray image (or N×N×4 BGRA when plan.rgba)."""
        C, N = self.C, self.N
        an = an0.for_view(plan.view)
        base = self.base(plan.patient, plan.view, an0)
        rng = np.random.default_rng(plan.seed)
        img = base.img.copy()
        img, vw = _draw_lesions(img, base, an, plan.lesions, rng)
        img += base.vessels * vw
        img = np.maximum(img, _heart(C, an, plan.heart_scale) * an.hv)
        if plan.leads:
            _draw_leads(img, plan.leads, plan.seed)
        # pose
        M = warp_matrix(*plan.warp).astype(np.float64)
        M_px = M.copy()
        M_px[:, 2] *= C
        img = cv2.warpAffine(img, M_px, (C, C), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)
        gain, bias, gamma = plan.window
        np.clip(img * gain + bias, 0.0, 1.0, out=img)
        img = cv2.pow(img, gamma)
        if any(plan.collimation):
            _collimate(img, plan.collimation)
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

    def _markers(self, img: np.ndarray, plan: ImagePlan) -> None:
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
