"""LPIPS-SqueezeNet and the RA authors' saliency: maths and shapes on randomly initialised weights
(no download in tests; the weight files: test_lpips_weights.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from imgae_dx.config import AnomalyConfig
from imgae_dx.models import perceptual
from imgae_dx.models.anomaly import anomaly_map, clahe_equalise
from imgae_dx.models.perceptual import CHANNELS, LPIPS


@pytest.fixture(autouse=True)
def _fresh_cache():
    perceptual._CACHE.clear()
    yield
    perceptual._CACHE.clear()


def _net(seed=0):
    torch.manual_seed(seed)
    net = LPIPS()
    for lin in net.lins:
        lin.weight.abs_()  # random, but non-negative as the trained heads are
    return net


def test_backbone_has_torchvisions_squeezenet_1_1_layout():
    sd = LPIPS().net.state_dict()
    assert sd["features.0.weight"].shape == (64, 3, 3, 3)
    assert sd["features.3.squeeze.weight"].shape == (16, 64, 1, 1)
    assert sd["features.12.expand3x3.weight"].shape == (256, 64, 3, 3)
    assert sum(v.numel() for v in sd.values()) == 722_496  # squeezenet1_1 minus its classifier
    taps = LPIPS().net(torch.rand(2, 3, 64, 64))
    assert [t.shape[1] for t in taps] == list(CHANNELS)


def test_lpips_is_a_spatial_distance():
    net = _net()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(2, 1, 64, 64, generator=g), torch.rand(2, 1, 64, 64, generator=g)
    d = net(x, y)
    assert d.shape == (2, 1, 64, 64) and (d >= 0).all()
    assert net(x, x).abs().max() == 0
    assert torch.allclose(net(x, y), net(y, x))
    # the sum of the 7 upsampled, head-weighted, channel-normalised squared differences, by hand
    scale = lambda t: (2 * t - 1 - net.shift) / net.scale  # noqa: E731  (gray → 3 channels)
    want = torch.zeros_like(d)
    for a, b, lin in zip(net.net(scale(x)), net.net(scale(y)), net.lins, strict=True):
        na = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nb = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        want += F.interpolate(F.conv2d((na - nb) ** 2, lin.weight), size=(64, 64), mode="bilinear",
                              align_corners=False)
    assert torch.allclose(d, want, atol=1e-6)


def test_saliency_is_the_authors_product_of_two_smoothed_lpips_maps(monkeypatch):
    net = _net(3)
    monkeypatch.setattr(perceptual, "load_lpips", lambda device="cpu": net)
    g = torch.Generator().manual_seed(2)
    x, r = torch.rand(2, 1, 64, 64, generator=g), torch.rand(2, 1, 64, 64, generator=g) * 1.2 - 0.1
    cfg = AnomalyConfig(map="clahe", saliency="lpips", score="mean")
    m = anomaly_map(x, r, cfg)
    xc, rc = x.clamp(0, 1), r.clamp(0, 1)
    ex, er = clahe_equalise(xc), clahe_equalise(rc)
    s1, s2 = net(rc, xc).numpy(), net(er, ex).numpy()
    for i in range(2):
        sal = gaussian_filter(s1[i, 0], sigma=2) * gaussian_filter(s2[i, 0], sigma=2)
        want = np.abs(ex[i, 0].numpy() - er[i, 0].numpy()) * sal
        assert np.allclose(m[i, 0].numpy(), want, atol=1e-6)
