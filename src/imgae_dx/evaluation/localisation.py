"""Localisation of findings: how well an anomaly map points at the ``BBox_List_2017.csv`` boxes.

Pure numpy / scipy, one map and one box at a time (the evaluator writes one row per (model, box) to
``eval/localisation.csv``; :func:`summarise_localisation` averages the rows).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from imgae_dx.evaluation.metrics import auroc


def box_mask(shape: tuple[int, int], box_xywh: Sequence[float], scale: float = 1.0) -> np.ndarray:
    """Boolean (H, W) mask of the pixels a box covers, after scaling its coordinates by ``scale``
    (e.g. map size / original image size). Covers at least one pixel."""
    h, w = shape
    x, y, bw, bh = (float(v) * scale for v in box_xywh)
    x0 = int(np.clip(math.floor(x), 0, w - 1))
    y0 = int(np.clip(math.floor(y), 0, h - 1))
    x1 = int(np.clip(math.ceil(x + bw), x0 + 1, w))
    y1 = int(np.clip(math.ceil(y + bh), y0 + 1, h))
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def box_localisation(
    anomaly_map: Any, box_xywh: Sequence[float], scale: float = 1.0, top_percent: float = 1.0
) -> dict[str, float]:
    """How well one anomaly map points at one ground-truth box.

    Args:
        anomaly_map: (H, W) per-pixel anomaly values.
        box_xywh: (x, y, w, h) in original-image pixels; ``scale`` maps them to the map's pixels.
        top_percent: the share of the map's highest pixels that counts as "where it points".
    Returns:
        ``hit`` (1.0 if the box contains at least one of the top pixels), ``hit_chance`` (that
        probability for randomly placed top pixels: the baseline), ``top_share`` (fraction of the
        top pixels inside the box), ``area_share`` (the box's share of the image: the baseline of
        ``top_share``), ``pixel_auroc`` (map values inside vs outside the box).
    """
    a = np.asarray(anomaly_map, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"anomaly map must be (H, W), got shape {a.shape}")
    mask = box_mask(a.shape, box_xywh, scale)
    flat, mflat = a.ravel(), mask.ravel()
    total, inside = flat.size, int(mflat.sum())
    k = max(1, int(round(total * top_percent / 100.0)))
    top = np.argpartition(-flat, k - 1)[:k]
    in_top = int(mflat[top].sum())
    pix = auroc(mflat.astype(np.int64), flat) if 0 < inside < total else math.nan
    chance = float(stats.hypergeom.sf(0, total, inside, k))
    return {
        "hit": float(in_top > 0),
        "hit_chance": chance,
        "top_share": in_top / k,
        "area_share": inside / total,
        "pixel_auroc": pix,
    }


def summarise_localisation(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Average :func:`box_localisation` rows (each also holding ``image`` and ``finding``)."""
    if not rows:
        return {"n_boxes": 0, "n_images": 0}
    keys = ("hit", "hit_chance", "top_share", "area_share", "pixel_auroc")

    def mean(rs: Sequence[Mapping[str, Any]], k: str) -> float:
        v = np.asarray([float(r[k]) for r in rs], dtype=np.float64)
        v = v[np.isfinite(v)]
        return float(v.mean()) if v.size else math.nan

    out: dict[str, Any] = {
        "n_boxes": len(rows),
        "n_images": len({r["image"] for r in rows}),
    }
    out.update({("hit_rate" if k == "hit" else f"mean_{k}"): mean(rows, k) for k in keys})
    per: dict[str, Any] = {}
    for f in sorted({r["finding"] for r in rows}):
        rs = [r for r in rows if r["finding"] == f]
        per[f] = {"n_boxes": len(rs), "hit_rate": mean(rs, "hit"), "mean_pixel_auroc": mean(rs, "pixel_auroc")}
    out["per_finding"] = per
    return out
