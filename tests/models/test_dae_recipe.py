"""Each switch of the denoising-AE recipe of Kascenas et al. (2022), one test each, and the U-Net's
noise-then-restore inference (``inference_samples``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from imgae_dx.config import AnomalyConfig, ConfigError, load_config
from imgae_dx.models import create_model, create_objective
from imgae_dx.models.anomaly import anomaly_map, foreground_mask, median_filter
from imgae_dx.models.noise import coarse_noise
from imgae_dx.models.unet.torch_model import WSConv2d

TINY = {"base_channels": 4, "groups": 2, "depth": 3}
RECIPE = Path(__file__).resolve().parents[2] / "configs" / "recipes" / "dae_kascenas.yaml"


def test_weight_standardised_conv():
    torch.manual_seed(0)
    conv = WSConv2d(3, 5, 3, padding=1, bias=False)
    x = torch.rand(2, 3, 8, 8)
    w = conv.weight
    ws = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.flatten(1).std(dim=1).view(-1, 1, 1, 1) + 1e-5)
    assert torch.allclose(conv(x), F.conv2d(x, ws, padding=1), atol=1e-6)
    y = conv(x)
    with torch.no_grad():
        conv.weight.mul_(3.0).add_(0.5)  # scale and shift of a filter do not change its output
    assert torch.allclose(conv(x), y, rtol=1e-3, atol=1e-4)  # up to the 1e-5 in the divisor


def test_conv_type_and_padding_switches_build_the_same_parameters():
    a = create_model("unet", 32, **TINY)
    b = create_model("unet", 32, **TINY, conv="ws", padding="reflect", output_activation="linear")
    convs = [m for m in b.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert convs and all(isinstance(m, WSConv2d) and m.padding_mode == "reflect" for m in convs)
    assert not any(isinstance(m, WSConv2d) for m in a.modules())
    b.load_state_dict(a.state_dict())  # same parameter names and shapes
    x = torch.rand(2, 1, 32, 32)
    ya, yb = a(x), b(x)
    assert (ya >= 0).all() and (ya <= 1).all()  # sigmoid
    assert yb.min() < 0 or yb.max() > 1 or not torch.allclose(ya, yb)  # linear output, other convs


def test_noise_roll_shifts_the_same_noise_by_a_drawn_offset():
    x = torch.zeros(2, 1, 32, 32)
    plain = coarse_noise(x, 0.2, 4, torch.Generator().manual_seed(3))
    rolled = coarse_noise(x, 0.2, 4, torch.Generator().manual_seed(3), roll=True)
    g = torch.Generator().manual_seed(3)
    torch.randn((2, 1, 4, 4), generator=g)  # the noise comes first
    dy, dx = int(torch.randint(0, 32, (1,), generator=g)), int(torch.randint(0, 32, (1,), generator=g))
    assert (dy, dx) != (0, 0)
    assert torch.equal(rolled, torch.roll(plain, shifts=(dy, dx), dims=(-2, -1)))


def test_noise_only_on_the_foreground():
    torch.manual_seed(0)
    m = create_model("unet", 32, **TINY, noise_foreground_threshold=0.01)
    obj = create_objective("unet", m)
    x = torch.rand(2, 1, 32, 32) * 0.5 + 0.2
    x[:, :, :8] = 0.0  # background band
    noisy = obj.corrupt(x, torch.Generator().manual_seed(1))
    assert torch.equal(noisy[:, :, :8], x[:, :, :8]) and not torch.equal(noisy[:, :, 8:], x[:, :, 8:])


def test_median_filter_matches_scipy():
    m = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    got = median_filter(m, 5)
    for i in range(2):  # torch's reflect padding is scipy's "mirror"
        assert np.allclose(got[i, 0].numpy(), ndimage.median_filter(m[i, 0].numpy(), size=5, mode="mirror"))
    spike = torch.zeros(1, 1, 9, 9)
    spike[0, 0, 4, 4] = 1.0
    assert median_filter(spike, 5).abs().max() == 0  # an isolated pixel is removed


def test_foreground_mask_is_eroded_at_the_body_edge():
    x = torch.zeros(1, 1, 12, 12)
    x[:, :, 2:10, 2:10] = 0.5
    mask = foreground_mask(x, 0.01)
    want = torch.zeros_like(x)
    want[:, :, 4:8, 4:8] = 1.0  # 2 pixels in from the edge of the body
    assert torch.equal(mask, want)
    recon = torch.full_like(x, 0.2)
    m = anomaly_map(x, recon, AnomalyConfig(map="l1", foreground_threshold=0.01))
    assert torch.equal(m, (x - recon).abs() * want)
    with pytest.raises(ValueError, match="odd"):
        AnomalyConfig(median_filter=4)


def test_the_recipe_file_sets_every_switch():
    cfg = load_config(RECIPE)
    u = cfg.model.unet
    assert (u.conv, u.padding, u.output_activation, u.noise_roll) == ("ws", "reflect", "linear", True)
    assert u.noise_foreground_threshold == 0.01 and u.optim.amsgrad and u.optim.weight_decay == 1e-5
    assert u.inference_samples == 0
    assert (u.anomaly.median_filter, u.anomaly.foreground_threshold) == (5, 0.01)
    text = RECIPE.read_text()
    for key in ("conv:", "padding:", "noise_roll:", "median_filter:", "foreground_threshold:", "amsgrad:",
                "inference_samples:"):
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(key))
        assert "#" in line, f"{key} is configured without saying why"


def test_inference_samples_average_the_denoised_fixed_corruptions():
    torch.manual_seed(0)
    plain = create_model("unet", 32, **TINY).eval()
    x = torch.rand(3, 1, 32, 32)
    assert torch.equal(plain.reconstruct(x), plain(x))  # K = 0: the input itself (Kascenas et al.)
    m = create_model("unet", 32, **TINY, inference_samples=3, noise_std=0.2, noise_resolution=8).eval()
    m.load_state_dict(plain.state_dict())  # the noise fields are not weights: same state dict
    fields = torch.randn((3, 1, 8, 8), generator=torch.Generator().manual_seed(0)) * 0.2
    up = F.interpolate(fields, size=(32, 32), mode="bilinear", align_corners=False)
    with torch.no_grad():
        want = torch.stack([m(x + up[k:k + 1]) for k in range(3)]).mean(0)
        got = m.reconstruct(x)
    assert torch.allclose(got, want, atol=1e-6) and not torch.allclose(got, m(x), atol=1e-4)
    # the same fields for every image: an image scores the same alone, in any batch, in any run
    assert torch.allclose(m.reconstruct(x[1:2]), got[1:2], atol=1e-6)
    again = create_model("unet", 32, **TINY, inference_samples=3, noise_std=0.2, noise_resolution=8).eval()
    again.load_state_dict(plain.state_dict())
    assert torch.equal(again.reconstruct(x), got)
    other = create_model("unet", 32, **TINY, inference_samples=3, noise_std=0.2, noise_resolution=8,
                         inference_noise_seed=1).eval()
    other.load_state_dict(plain.state_dict())
    assert not torch.allclose(other.reconstruct(x), got, atol=1e-4)


def test_inference_corruptions_respect_the_foreground():
    torch.manual_seed(0)
    m = create_model("unet", 32, **TINY, inference_samples=2, noise_foreground_threshold=0.01).eval()
    x = torch.rand(1, 1, 32, 32) * 0.5 + 0.2
    x[:, :, :8] = 0.0
    seen = []
    m.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    m.reconstruct(x)
    assert len(seen) == 2
    for xin in seen:
        assert torch.equal(xin[:, :, :8], x[:, :, :8]) and not torch.equal(xin[:, :, 8:], x[:, :, 8:])


def test_inference_samples_need_training_noise():
    with pytest.raises(ConfigError, match="noise_std is 0"):
        load_config(None, {"model.unet.inference_samples": 4, "model.unet.noise_std": 0.0})
