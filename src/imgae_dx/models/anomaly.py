"""Anomaly maps and image scores from an input and its reconstruction.

Maps (per pixel, B×1×H×W, float32, larger = more anomalous):

* ``l1``    — ``|x − x̂|``  (``|G_σ * (x − x̂)|`` with ``residual_sigma`` = σ > 0)
* ``l2``    — ``(x − x̂)²``  (``(G_σ * (x − x̂))²`` likewise)
* ``clahe`` — ``|CLAHE(x) − CLAHE(x̂)|``: both images clamped to [0, 1] and contrast-equalised
  per image with ``skimage.exposure.equalize_adapthist`` (as the RA authors' evaluation does: it
  min–max rescales each image, then equalises with clip limit ``clahe_clip`` = 0.01 and a kernel of
  1/``clahe_tiles`` of the side). Runs on the CPU and is not differentiable.
* ``ssim``  — ``1 − SSIM(x, x̂)``, the local SSIM map with a Gaussian window (data range 1).

``saliency: lpips`` multiplies the map by the RA authors' perceptual saliency (ci-ber/RA,
``DownstreamEvaluator.compute_residual``): ``G_σ(LPIPS(x̂, x)) · G_σ(LPIPS(CLAHE x̂, CLAHE x))`` with
spatial LPIPS on SqueezeNet (:mod:`imgae_dx.models.perceptual`) and a Gaussian of σ =
``saliency_sigma`` (2, ``scipy.ndimage.gaussian_filter`` as there), on images clamped to [0, 1].
With ``map: clahe`` and ``score: mean`` this is the authors' image score. Its pretrained weights
are SHA-256-verified files in the standard caches (``imgae-dx fetch-weights``;
:mod:`imgae_dx.models.lpips_weights`); where they are missing and cannot be downloaded the map
raises ``LPIPSWeightsError`` naming them, rather than scoring without the saliency.
``saliency: encoder`` (RA only) is the same construction in the model's own feature space, which
needs no download: ``G_σ(Σ_l up(‖n(e_l(x)) − n(e_l(x̂))‖²))`` over RA's multi-scale embeddings
``e_l`` (:meth:`ReconstructionModel.embeddings`), ``n`` = unit length over channels (LPIPS's
normalisation, without its learned heads), each level bilinearly upsampled to H×W.

Post-processing, in this order: ``border`` > 0 zeroes the map within that share of the side from
every edge (text markers, collimation, arms and neck at the image borders score nothing);
(Kascenas et al.'s DAE uses the next two) ``foreground_threshold``
keeps the map on the body only (pixels whose 5×5 neighbourhood in x is entirely above the
threshold: the mask eroded at the edges, where reconstructions err most); ``median_filter`` (odd
kernel, reflect padding) removes isolated bright pixels; ``smoothing_sigma`` > 0 applies a Gaussian
smoothing (reflect padding).

Scores (per image, B): ``mean`` of the map, ``max``, or ``topk`` = mean of the top
``topk_percent`` % pixels (at least one).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from imgae_dx.config import AnomalyConfig


def gaussian_kernel1d(sigma: float, radius: int | None = None, *, device=None) -> Tensor:
    """Normalised 1-D Gaussian, length ``2·radius + 1`` (default radius ``ceil(3σ)``), float32."""
    if radius is None:
        radius = max(1, int(math.ceil(3.0 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _separable_filter(x: Tensor, k1d: Tensor, padding_mode: str) -> Tensor:
    """Filter x (B×C×H×W) with the outer product of ``k1d`` per channel, same size out."""
    c = x.shape[1]
    r = (k1d.numel() - 1) // 2
    kh = k1d.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    kw = k1d.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    if padding_mode == "zeros":
        y = F.conv2d(x, kh, padding=(r, 0), groups=c)
        return F.conv2d(y, kw, padding=(0, r), groups=c)
    y = F.conv2d(F.pad(x, (0, 0, r, r), mode=padding_mode), kh, groups=c)
    return F.conv2d(F.pad(y, (r, r, 0, 0), mode=padding_mode), kw, groups=c)


def _pad_mode(h: int, w: int, r: int) -> str:
    # reflect padding needs the pad to be smaller than the side; replicate works for any size
    return "reflect" if r < min(h, w) else "replicate"


def gaussian_smooth(m: Tensor, sigma: float) -> Tensor:
    """Gaussian-smooth a map B×1×H×W (float32) with standard deviation ``sigma`` pixels."""
    if sigma <= 0:
        return m
    k = gaussian_kernel1d(sigma, device=m.device)
    r = (k.numel() - 1) // 2
    return _separable_filter(m, k, _pad_mode(m.shape[-2], m.shape[-1], r))


def ssim_map(x: Tensor, y: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Local SSIM of x and y (B×1×H×W in [0, 1], data range 1) → B×1×H×W (float32/float64).

    Gaussian-weighted means/variances (``window`` odd, ``sigma``), constants
    C1 = 0.01², C2 = 0.03² (Wang et al. 2004); borders reflect-padded so the map keeps the size.
    """
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(dtype)
    y = y.to(dtype)
    k = gaussian_kernel1d(sigma, radius=window // 2, device=x.device).to(dtype)
    mode = _pad_mode(x.shape[-2], x.shape[-1], window // 2)
    c1, c2 = 0.01**2, 0.03**2
    # moments of the image minus its global mean: same values, far less float cancellation
    mx = x.mean(dim=(-2, -1), keepdim=True)
    my = y.mean(dim=(-2, -1), keepdim=True)
    xc, yc = x - mx, y - my
    mu_xc = _separable_filter(xc, k, mode)
    mu_yc = _separable_filter(yc, k, mode)
    sxx = (_separable_filter(xc * xc, k, mode) - mu_xc * mu_xc).clamp_min(0)
    syy = (_separable_filter(yc * yc, k, mode) - mu_yc * mu_yc).clamp_min(0)
    sxy = _separable_filter(xc * yc, k, mode) - mu_xc * mu_yc
    mu_x, mu_y = mu_xc + mx, mu_yc + my
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (sxx + syy + c2)
    return num / den


def clahe_equalise(x: Tensor, clip: float = 0.01, tiles: int = 8) -> Tensor:
    """skimage's CLAHE of each image of x (B×1×H×W, clamped to [0, 1]) → B×1×H×W float32.

    ``exposure.equalize_adapthist(img, kernel_size=side // tiles, clip_limit=clip)``: each image
    is min–max rescaled, equalised on 256 bins and rescaled to [0, 1]. Runs on the CPU; returns a
    tensor on x's device.
    """
    from skimage import exposure  # lazy: only the CLAHE map needs scikit-image

    arr = x.detach().double().clamp(0, 1).cpu().numpy()
    h, w = arr.shape[-2:]
    kernel = (max(h // tiles, 1), max(w // tiles, 1))
    out = np.empty(arr.shape, dtype=np.float32)
    for i in range(arr.shape[0]):
        if np.ptp(arr[i, 0]) == 0:  # a flat image stays flat (skimage would divide by 0)
            out[i, 0] = arr[i, 0]
            continue
        out[i, 0] = exposure.equalize_adapthist(arr[i, 0], kernel_size=kernel, clip_limit=clip)
    return torch.from_numpy(out).to(x.device)


def lpips_saliency(x: Tensor, recon: Tensor, cfg: AnomalyConfig) -> Tensor:
    """The RA authors' saliency (B×1×H×W) of x vs recon (raises ``LPIPSWeightsError`` without
    the LPIPS weights)."""
    from scipy.ndimage import gaussian_filter

    from imgae_dx.models.perceptual import load_lpips

    net = load_lpips(x.device)
    x, recon = x.clamp(0, 1), recon.clamp(0, 1)
    cx = clahe_equalise(x, cfg.clahe_clip, cfg.clahe_tiles)
    cr = clahe_equalise(recon, cfg.clahe_clip, cfg.clahe_tiles)
    out = []
    for a, b in ((recon, x), (cr, cx)):
        d = net(a, b).cpu().numpy()
        out.append(np.stack([gaussian_filter(d[i, 0], sigma=cfg.saliency_sigma)
                             for i in range(d.shape[0])])[:, None])
    return torch.from_numpy((out[0] * out[1]).astype(np.float32)).to(x.device)


#: a model's multi-scale feature maps of an image batch: B×1×H×W → [B×C_l×H_l×W_l, …]
Embed = Callable[[Tensor], Sequence[Tensor]]


def encoder_saliency(x: Tensor, recon: Tensor, embed: Embed, sigma: float) -> Tensor:
    """``saliency: encoder`` (see the module doc): x, recon B×1×H×W → B×1×H×W float32."""
    h, w = x.shape[-2:]
    total = torch.zeros(x.shape, device=x.device, dtype=torch.float32)
    for a, b in zip(embed(x), embed(recon), strict=True):
        a, b = a.float(), b.float()
        a = a / (a.norm(dim=1, keepdim=True) + 1e-8)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-8)
        d = (a - b).square().sum(dim=1, keepdim=True)
        total = total + F.interpolate(d, size=(h, w), mode="bilinear", align_corners=False)
    return gaussian_smooth(total, sigma)


def anomaly_map(x: Tensor, recon: Tensor, cfg: AnomalyConfig, embed: Embed | None = None) -> Tensor:
    """Per-pixel anomaly map of x vs its reconstruction (both B×1×H×W) → B×1×H×W float32.

    ``embed`` (the model's :meth:`~imgae_dx.models.base.ReconstructionModel.embeddings`) is
    needed by ``saliency: encoder`` only."""
    if x.shape != recon.shape:
        raise ValueError(f"input {tuple(x.shape)} and reconstruction {tuple(recon.shape)} differ")
    x = x.float()
    recon = recon.float()
    if cfg.map in ("l1", "l2"):
        r = gaussian_smooth(x - recon, cfg.residual_sigma)
        m = r.abs() if cfg.map == "l1" else r.square()
    elif cfg.map == "clahe":
        m = (clahe_equalise(x, cfg.clahe_clip, cfg.clahe_tiles)
             - clahe_equalise(recon, cfg.clahe_clip, cfg.clahe_tiles)).abs()
    elif cfg.map == "ssim":
        m = 1.0 - ssim_map(x.clamp(0, 1), recon.clamp(0, 1), cfg.ssim_window, cfg.ssim_sigma)
    else:  # pragma: no cover - the config schema forbids other values
        raise ValueError(f"unknown anomaly map {cfg.map!r}")
    if cfg.saliency == "lpips":
        m = m * lpips_saliency(x, recon, cfg)
    elif cfg.saliency == "encoder":
        if embed is None:
            raise ValueError("saliency 'encoder' needs the model's embeddings (model.ra only)")
        m = m * encoder_saliency(x, recon, embed, cfg.saliency_sigma)
    if cfg.border > 0:
        m = m * border_mask(m, cfg.border)
    if cfg.foreground_threshold is not None:
        m = m * foreground_mask(x, cfg.foreground_threshold)
    if cfg.median_filter:
        m = median_filter(m, cfg.median_filter)
    return gaussian_smooth(m, cfg.smoothing_sigma)


def foreground_mask(x: Tensor, threshold: float) -> Tensor:
    """B×1×H×W float mask: 1 where every pixel of the 5×5 neighbourhood (zero-padded) of x
    exceeds ``threshold`` (Kascenas et al.: ``avg_pool(x > t, 5) > 0.95``)."""
    inside = (x > threshold).float()
    return (F.avg_pool2d(inside, kernel_size=5, stride=1, padding=2, count_include_pad=True) > 0.95).float()


def border_mask(m: Tensor, share: float) -> Tensor:
    """1×1×H×W float mask of m's size: 0 within ``round(share · side)`` pixels of an edge, else 1."""
    h, w = m.shape[-2:]
    bh, bw = int(round(share * h)), int(round(share * w))
    mask = torch.zeros((1, 1, h, w), device=m.device, dtype=m.dtype)
    mask[..., bh:h - bh, bw:w - bw] = 1
    return mask


def median_filter(m: Tensor, k: int) -> Tensor:
    """Median of each k×k neighbourhood (reflect padding; replicate when the map is too small):
    B×1×H×W → B×1×H×W."""
    r = k // 2
    p = F.pad(m, (r, r, r, r), mode=_pad_mode(m.shape[-2], m.shape[-1], r))
    patches = F.unfold(p, kernel_size=k)  # B×(k·k)×(H·W)
    return patches.median(dim=1).values.view_as(m)


def image_score(m: Tensor, cfg: AnomalyConfig) -> Tensor:
    """Per-image score of a map B×1×H×W → B (float32): mean, max or top-k % mean."""
    flat = m.float().flatten(1)
    if cfg.score == "mean":
        return flat.mean(dim=1)
    if cfg.score == "max":
        return flat.amax(dim=1)
    if cfg.score == "topk":
        k = max(1, int(round(flat.shape[1] * cfg.topk_percent / 100.0)))
        return flat.topk(k, dim=1).values.mean(dim=1)
    raise ValueError(f"unknown score {cfg.score!r}")  # pragma: no cover


class AnomalyScorer:
    """Holds an :class:`AnomalyConfig`; ``scorer(x, recon, embed) -> (map B×1×H×W, score B)``."""

    def __init__(self, cfg: AnomalyConfig | None = None) -> None:
        self.cfg = cfg or AnomalyConfig()

    def __call__(self, x: Tensor, recon: Tensor, embed: Embed | None = None) -> tuple[Tensor, Tensor]:
        m = anomaly_map(x, recon, self.cfg, embed)
        return m, image_score(m, self.cfg)
