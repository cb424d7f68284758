"""Anomaly maps and scores against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from imgae_dx.config import AnomalyConfig, ConfigError, load_config
from imgae_dx.models import create_model
from imgae_dx.models.anomaly import (
    anomaly_map,
    clahe_equalise,
    encoder_saliency,
    gaussian_smooth,
    image_score,
    ssim_map,
)


def _pair(seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 1, size, size, generator=g), torch.rand(2, 1, size, size, generator=g)


def test_l1_l2_maps():
    x, y = _pair()
    assert torch.allclose(anomaly_map(x, y, AnomalyConfig(map="l1")), (x - y).abs())
    assert torch.allclose(anomaly_map(x, y, AnomalyConfig(map="l2")), (x - y) ** 2)


def test_scores_by_hand():
    m = torch.arange(2 * 100, dtype=torch.float32).view(2, 1, 10, 10)
    assert torch.allclose(image_score(m, AnomalyConfig(score="mean")), torch.tensor([49.5, 149.5]))
    assert torch.allclose(image_score(m, AnomalyConfig(score="max")), torch.tensor([99.0, 199.0]))
    # top 5 % of 100 pixels = 5 pixels: mean of 95..99
    s = image_score(m, AnomalyConfig(score="topk", topk_percent=5))
    assert torch.allclose(s, torch.tensor([97.0, 197.0]))
    # tiny percentage still takes one pixel
    s = image_score(m, AnomalyConfig(score="topk", topk_percent=0.1))
    assert torch.allclose(s, torch.tensor([99.0, 199.0]))


def test_ssim_of_constant_images_by_hand():
    a, b = 0.3, 0.7
    x = torch.full((1, 1, 16, 16), a)
    y = torch.full((1, 1, 16, 16), b)
    c1 = 0.01**2
    expect = (2 * a * b + c1) / (a * a + b * b + c1)  # variances are 0 → contrast term is 1
    assert torch.allclose(ssim_map(x, y), torch.full_like(x, expect), atol=1e-5)
    m = anomaly_map(x, y, AnomalyConfig(map="ssim"))
    assert torch.allclose(m, torch.full_like(x, 1 - expect), atol=1e-5)
    xr, _ = _pair(3)
    assert anomaly_map(xr, xr, AnomalyConfig(map="ssim")).abs().max() < 1e-5


def test_ssim_center_pixel_by_hand():
    rng = np.random.default_rng(0)
    x = rng.random((11, 11)).astype(np.float64)
    y = rng.random((11, 11)).astype(np.float64)
    t = np.arange(-5, 6)
    k = np.exp(-0.5 * (t / 1.5) ** 2)
    k /= k.sum()
    w = np.outer(k, k)
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy = (w * x * x).sum() - mx**2, (w * y * y).sum() - my**2
    cxy = (w * x * y).sum() - mx * my
    c1, c2 = 0.01**2, 0.03**2
    expect = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    got = ssim_map(torch.tensor(x).view(1, 1, 11, 11), torch.tensor(y).view(1, 1, 11, 11))
    assert abs(float(got[0, 0, 5, 5]) - expect) < 1e-5


def test_clahe_is_skimages_with_its_per_image_rescale():
    from skimage import exposure

    x, y = _pair(1, 64)
    x = 0.2 + 0.5 * x  # not spanning [0, 1]: skimage rescales each image first, OpenCV would not
    cfg = AnomalyConfig(map="clahe", clahe_tiles=8)
    m = anomaly_map(x, y, cfg)
    for i in range(2):
        ex = exposure.equalize_adapthist(x[i, 0].double().numpy())  # skimage's own defaults
        ey = exposure.equalize_adapthist(y[i, 0].double().numpy())
        assert np.allclose(m[i, 0].numpy(), np.abs(ex - ey), atol=1e-6)
    # the per-image rescale: an affine change of intensities does not change the equalised image
    # (up to the 14-bit quantisation skimage applies after the rescale)
    d = (clahe_equalise(x) - clahe_equalise(0.1 + 0.8 * x)).abs()
    assert float(d.mean()) < 1e-3  # a few pixels move by a bin
    assert anomaly_map(x, x, cfg).abs().max() == 0
    flat = torch.full((1, 1, 32, 32), 0.4)
    assert torch.equal(clahe_equalise(flat), flat)  # no division by a zero range


def test_smoothing_is_a_normalised_gaussian():
    m = torch.zeros(1, 1, 21, 21)
    m[0, 0, 10, 10] = 1.0
    s = gaussian_smooth(m, 1.0)
    assert abs(float(s.sum()) - 1.0) < 1e-5
    t = np.arange(-3, 4)
    k = np.exp(-0.5 * t**2)
    k /= k.sum()
    assert abs(float(s[0, 0, 10, 10]) - k[3] ** 2) < 1e-6
    assert abs(float(s[0, 0, 10, 11]) - k[3] * k[4]) < 1e-6
    const = torch.full((1, 1, 8, 8), 0.25)
    assert torch.allclose(gaussian_smooth(const, 2.0), const, atol=1e-6)  # borders too
    cfg = AnomalyConfig(map="l1", smoothing_sigma=1.0)
    x, y = _pair()
    assert torch.allclose(anomaly_map(x, y, cfg), gaussian_smooth((x - y).abs(), 1.0))


def test_residual_sigma_cancels_pixel_scale_errors_and_keeps_a_blob():
    """residual_sigma smooths the signed residual before |·| / (·)²: a ±0.1 checkerboard (noise,
    edges a pixel off) all but cancels, a smooth +0.1 blob of finding size stays."""
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    checker = 0.1 * (((yy + xx) % 2) * 2 - 1)
    blob = 0.1 * torch.exp(-((yy - 16) ** 2 + (xx - 16) ** 2) / (2 * 4.0**2))
    recon = torch.full((1, 1, 32, 32), 0.5)
    cfg = AnomalyConfig(map="l1", residual_sigma=2.0)
    noisy = anomaly_map(recon + checker, recon, cfg)
    lesion = anomaly_map(recon + blob, recon, cfg)
    assert float(noisy.max()) < 0.01 < 0.05 < float(lesion.max())
    assert torch.allclose(anomaly_map(recon + checker, recon, AnomalyConfig(map="l1")), checker.abs().expand(1, 1, 32, 32))
    x, y = _pair()
    r = gaussian_smooth(x - y, 2.0)
    assert torch.allclose(anomaly_map(x, y, cfg), r.abs())
    assert torch.allclose(anomaly_map(x, y, AnomalyConfig(map="l2", residual_sigma=2.0)), r.square())


def test_bad_map_shapes_raise():
    with pytest.raises(ValueError, match="differ"):
        anomaly_map(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 4), AnomalyConfig())


def test_ssim_window_must_be_odd():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="odd"):
        AnomalyConfig(ssim_window=10)
    assert math.isclose(AnomalyConfig().clahe_clip, 0.01)  # skimage's default


def test_encoder_saliency_by_hand():
    """One 2-channel level at half resolution: the squared distance of unit feature vectors,
    bilinearly upsampled, then G_σ; scaling a level's features changes nothing (LPIPS's norm)."""
    x, r = _pair(size=16)

    def embed(t):  # B×1×16×16 → one level B×2×8×8
        return [torch.stack([t[:, 0, ::2, ::2], 1 - t[:, 0, ::2, ::2]], dim=1)]

    fx, fr = embed(x)[0], embed(r)[0]

    def unit(f):
        return f / (f.norm(dim=1, keepdim=True) + 1e-8)

    d = (unit(fx) - unit(fr)).square().sum(1, keepdim=True)
    want = gaussian_smooth(torch.nn.functional.interpolate(d, size=(16, 16), mode="bilinear",
                                                           align_corners=False), 2.0)
    got = encoder_saliency(x, r, embed, 2.0)
    assert got.shape == x.shape and torch.allclose(got, want, atol=1e-6)
    scaled = encoder_saliency(x, r, lambda t: [f * 7.0 for f in embed(t)], 2.0)
    assert torch.allclose(scaled, got, atol=1e-5)
    cfg = AnomalyConfig(map="l1", saliency="encoder")
    assert torch.allclose(anomaly_map(x, r, cfg, embed), (x - r).abs() * got, atol=1e-6)
    assert float(encoder_saliency(x, x, embed, 2.0).abs().max()) == 0.0  # a perfect reconstruction


def test_encoder_saliency_uses_ras_embeddings_and_only_ras():
    torch.manual_seed(0)
    ra = create_model("ra", 64, channels=[4, 8, 8, 8, 8], zdim=8,
                      anomaly={"map": "ssim", "saliency": "encoder"}).eval()
    x = torch.rand(2, 1, 64, 64)
    p = ra.predict(x)
    base = 1 - ssim_map(x, p.reconstruction.clamp(0, 1))
    assert torch.allclose(p.anomaly_map, base * encoder_saliency(x, p.reconstruction, ra.embeddings, 2.0),
                          atol=1e-6)
    with pytest.raises(ValueError, match="model.ra only"):
        anomaly_map(x, p.reconstruction, AnomalyConfig(saliency="encoder"))
    with pytest.raises(ConfigError, match="for model.ra only"):
        load_config(None, {"model.unet.anomaly.saliency": "encoder"})


def test_border_zeroes_the_map_near_every_edge_only():
    x = torch.zeros(2, 1, 20, 20)
    r = torch.full((2, 1, 20, 20), 0.5)
    m = anomaly_map(x, r, AnomalyConfig(map="l1", border=0.1))  # 2 pixels of 20
    assert float(m[..., :2, :].abs().sum() + m[..., -2:, :].abs().sum()) == 0
    assert float(m[..., :, :2].abs().sum() + m[..., :, -2:].abs().sum()) == 0
    assert torch.all(m[..., 2:18, 2:18] == 0.5)
    # a marker in the corner no longer scores; a finding in the middle still does
    marker, finding = r.clone(), r.clone()
    marker[0, 0, :2, :2] = 1.0
    finding[0, 0, 9:11, 9:11] = 1.0
    cfg = AnomalyConfig(map="l1", border=0.1)
    assert torch.equal(anomaly_map(x, marker, cfg), m)
    assert float(anomaly_map(x, finding, cfg).sum()) > float(m.sum())
    with pytest.raises(ConfigError, match="border"):
        create_model("ae", 32, anomaly={"border": 0.5})
