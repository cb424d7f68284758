"""The shared noise: seeded normal draws, and the U-Net's coarse corruption, which training and
inference draw and upsample through the same functions."""

from __future__ import annotations

import torch

from imgae_dx.models import create_model, create_objective
from imgae_dx.models.noise import coarse_fields, coarse_noise, standard_normal, upsample_noise

TINY = {"base_channels": 4, "groups": 2, "depth": 3}


def close(got, want, tol=1e-5):
    got, want = float(got), float(want)
    assert abs(got - want) <= tol * max(1.0, abs(want)), (got, want)


def test_coarse_noise_bilinear_by_hand():
    x = torch.zeros(1, 1, 4, 4)
    g = torch.Generator().manual_seed(7)
    n = coarse_noise(x, 0.2, 2, g)
    low = torch.randn((1, 1, 2, 2), generator=torch.Generator().manual_seed(7)) * 0.2
    n00, n01, n10, n11 = low[0, 0, 0, 0], low[0, 0, 0, 1], low[0, 0, 1, 0], low[0, 0, 1, 1]
    close(n[0, 0, 0, 0], n00)          # align_corners=False: the corner copies the cell
    close(n[0, 0, 3, 3], n11)
    want = 0.5625 * n00 + 0.1875 * n01 + 0.1875 * n10 + 0.0625 * n11  # pixel (1,1) ↔ src (.25,.25)
    close(n[0, 0, 1, 1], want)
    big = coarse_noise(torch.zeros(64, 1, 16, 16), 0.2, 16, torch.Generator().manual_seed(0))
    assert abs(float(big.std()) - 0.2) < 0.01  # drawn at the image size: exactly N(0, 0.2)


def test_standard_normal_follows_the_generator_or_the_global_rng():
    a = standard_normal((3, 5), torch.Generator().manual_seed(4))
    assert a.dtype == torch.float32 and a.shape == (3, 5)
    assert torch.equal(a, torch.randn((3, 5), generator=torch.Generator().manual_seed(4)))
    torch.manual_seed(9)
    b = standard_normal((3, 5), device="cpu")
    torch.manual_seed(9)
    assert torch.equal(b, torch.randn(3, 5))


def test_fields_at_the_image_size_are_not_resampled():
    f = coarse_fields(2, 1, 0.3, 8, torch.Generator().manual_seed(1))
    assert upsample_noise(f, (8, 8)) is f
    assert upsample_noise(f, (16, 16)).shape == (2, 1, 16, 16)


def test_inference_corruption_is_the_training_corruption_drawn_from_the_inference_seed():
    """One image, one inference field: what ``UNet.reconstruct`` feeds the network equals what the
    objective's ``corrupt`` makes of the same image with a generator seeded as the model's
    ``inference_noise_seed`` (same draw, same upsampling, same foreground rule)."""
    torch.manual_seed(0)
    m = create_model("unet", 32, **TINY, inference_samples=1, noise_std=0.2, noise_resolution=8,
                     noise_foreground_threshold=0.01, inference_noise_seed=5).eval()
    x = torch.rand(1, 1, 32, 32) * 0.5 + 0.2
    x[:, :, :4] = 0.0
    seen = []
    m.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    with torch.no_grad():
        m.reconstruct(x)
    want = create_objective("unet", m).corrupt(x, torch.Generator().manual_seed(5))
    assert len(seen) == 1 and torch.equal(seen[0], want)
