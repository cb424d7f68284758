"""Per-image exposure normalisation of the model input (``model.<name>.input``).

Radiographs differ in exposure, detector and windowing far more than in anatomy; a reconstruction
model then spends capacity, and its residual, on grey levels. :func:`normalise_input` maps each
image x (B×1×H×W in [0, 1], values on the uint8 grid as the pipeline delivers them) to another
image in [0, 1] of the same shape, one image at a time (no batch statistics):

* ``none``     — x itself;
* ``equalise`` — global histogram equalisation on 256 levels (OpenCV's ``equalizeHist`` formula:
  ``(cdf(v) − cdf_min) / (N − cdf_min)``, rounded to the 256-level grid), in torch, on any device;
* ``clahe``    — OpenCV's contrast-limited adaptive equalisation (``createCLAHE(clipLimit,
  tileGridSize)``) of the uint8 image, on the CPU;
* ``robust``   — a robust min–max: ``clamp((x − q_lo) / (q_hi − q_lo), 0, 1)`` with the image's
  ``robust_percentiles`` (default 1st and 99th): the per-image affine map of a robust z-score,
  kept in [0, 1] for the models' sigmoid outputs.

The model applies it in ``predict`` and its objective in every loss, so training, validation,
PCA's fit, evaluation, calibration, predict and export see the same input; the anomaly map then
compares the normalised image with its reconstruction.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from imgae_dx.config import InputConfig

LEVELS = 256


def _levels(x: Tensor) -> Tensor:
    """x in [0, 1] → int64 levels 0..255 (the uint8 grid), same shape."""
    return (x.float().clamp(0, 1) * (LEVELS - 1)).round().long()


def equalise(x: Tensor) -> Tensor:
    """Global histogram equalisation of each image of x (B×1×H×W in [0, 1]) → B×1×H×W float32."""
    b = x.shape[0]
    v = _levels(x).flatten(1)  # B×N
    n = v.shape[1]
    hist = torch.zeros((b, LEVELS), dtype=torch.float32, device=x.device)
    hist.scatter_add_(1, v, torch.ones_like(v, dtype=torch.float32))
    cdf = hist.cumsum(1)
    cdf_min = torch.where(hist > 0, cdf, torch.full_like(cdf, float(n))).amin(1, keepdim=True)
    den = (n - cdf_min).clamp_min(1.0)
    lut = ((cdf - cdf_min) / den).clamp(0, 1)
    lut = (lut * (LEVELS - 1)).round() / (LEVELS - 1)
    flat = torch.where(cdf_min >= n, x.float().flatten(1), lut.gather(1, v))  # one grey level: as is
    return flat.view(x.shape)


def clahe(x: Tensor, clip: float, tiles: int) -> Tensor:
    """OpenCV CLAHE of each image of x (B×1×H×W in [0, 1]) → B×1×H×W float32 on x's device."""
    import cv2

    u8 = _levels(x).to(torch.uint8).cpu().numpy()
    op = cv2.createCLAHE(clipLimit=float(clip), tileGridSize=(int(tiles), int(tiles)))
    out = np.stack([op.apply(np.ascontiguousarray(u8[i, 0])) for i in range(u8.shape[0])])[:, None]
    return torch.from_numpy(out.astype(np.float32) / (LEVELS - 1)).to(x.device)


def robust(x: Tensor, lo_pct: float, hi_pct: float) -> Tensor:
    """Per-image robust min–max of x (B×1×H×W) between its percentiles → B×1×H×W in [0, 1]."""
    flat = x.float().flatten(1)
    q = torch.quantile(flat, torch.tensor([lo_pct / 100, hi_pct / 100], device=x.device), dim=1)
    lo, hi = q[0][:, None], q[1][:, None]
    out = ((flat - lo) / (hi - lo).clamp_min(1.0 / (LEVELS - 1))).clamp(0, 1)
    return out.view(x.shape)


def normalise_input(x: Tensor, cfg: InputConfig) -> Tensor:
    """The model input for x (B×1×H×W in [0, 1]) under ``cfg`` (see the module doc)."""
    if cfg.normalise == "none":
        return x
    if cfg.normalise == "equalise":
        return equalise(x).to(x.dtype)
    if cfg.normalise == "clahe":
        return clahe(x, cfg.clahe_clip, cfg.clahe_tiles).to(x.dtype)
    if cfg.normalise == "robust":
        return robust(x, *cfg.robust_percentiles).to(x.dtype)
    raise ValueError(f"unknown input normalisation {cfg.normalise!r}")  # pragma: no cover
