"""Per-image input normalisation (``model.<name>.input``): the maps themselves, and that the model
and its objective apply it alike (training losses, validation, PCA's fit, predict)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from imgae_dx.config import ConfigError, InputConfig
from imgae_dx.models import StepContext, create_model, create_objective, fit_principal_components
from imgae_dx.models.input_norm import equalise, normalise_input, robust


def _images(n=3, side=32, seed=0):
    """n×1×side×side on the uint8 grid: a dim, low-contrast gradient + noise (an under-exposed film)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.2, 0.45, side)[None, :] * np.ones((side, 1))
    u8 = np.clip((ramp + 0.03 * rng.standard_normal((n, side, side))) * 255, 0, 255).round().astype(np.uint8)
    return torch.from_numpy(u8.astype(np.float32) / 255)[:, None], u8


def test_equalise_is_opencvs_histogram_equalisation():
    x, u8 = _images()
    got = equalise(x)
    want = np.stack([cv2.equalizeHist(u8[i]) for i in range(len(u8))])[:, None] / 255
    assert got.shape == x.shape and got.dtype == torch.float32
    assert np.abs(got.numpy() - want).max() <= 1 / 255 + 1e-6  # the same levels (rounding aside)
    assert float(got.min()) == 0.0 and float(got.max()) == 1.0  # the full range, whatever the exposure
    flat = torch.full((1, 1, 8, 8), 0.5)
    assert torch.equal(equalise(flat), flat)  # one grey level: left as it is


def test_equalise_removes_exposure_differences():
    x, _ = _images()
    darker = torch.round(x * 0.6 * 255) / 255  # the same film, under-exposed (a monotone map)
    assert float((equalise(darker) - equalise(x)).abs().mean()) < 0.02
    assert float((darker - x).abs().mean()) > 0.1


def test_robust_maps_the_percentiles_to_0_and_1():
    x, _ = _images()
    out = robust(x, 1.0, 99.0)
    q = torch.quantile(x[0].flatten(), torch.tensor([0.01, 0.99]))
    assert out.min() == 0 and out.max() == 1
    mid = (x[0] > q[0]) & (x[0] < q[1])
    assert torch.allclose(out[0][mid], ((x[0] - q[0]) / (q[1] - q[0]))[mid], atol=1e-6)


def test_clahe_is_opencvs_and_none_is_the_identity():
    x, u8 = _images()
    cfg = InputConfig(normalise="clahe", clahe_clip=2.0, clahe_tiles=4)
    op = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4))
    want = np.stack([op.apply(u8[i]) for i in range(len(u8))])[:, None] / 255
    assert np.allclose(normalise_input(x, cfg).numpy(), want, atol=1e-6)
    assert normalise_input(x, InputConfig()) is x
    with pytest.raises(ConfigError, match="robust_percentiles"):
        create_model("ae", 32, input={"normalise": "robust", "robust_percentiles": [99, 1]})


@pytest.mark.parametrize("name", ["unet", "ra", "ae"])
def test_the_model_and_its_objective_see_the_normalised_image(name):
    """A model with input normalisation scores x as the same weights without it score the
    normalised x, and its training and validation losses are those of the normalised x."""
    small = {"unet": {"base_channels": 8, "depth": 3, "groups": 4},
             "ra": {"channels": [4, 8, 8, 16, 16], "zdim": 8}, "ae": {"channels": [4, 8]}}[name]
    x, _ = _images(4)
    eq = create_model(name, 32, input={"normalise": "equalise"}, **small).eval()
    plain = create_model(name, 32, **small).eval()
    plain.load_state_dict(eq.state_dict())
    a, b = eq.predict(x), plain.predict(equalise(x))
    assert torch.allclose(a.score, b.score, atol=1e-6)
    assert torch.allclose(a.reconstruction, b.reconstruction, atol=1e-6)
    ctx = StepContext(generator=torch.Generator().manual_seed(0))
    ctx2 = StepContext(generator=torch.Generator().manual_seed(0))
    assert create_objective(name, eq).val_loss(x, ctx) == pytest.approx(
        create_objective(name, plain).val_loss(equalise(x), ctx2), abs=1e-6)
    torch.manual_seed(0)
    la = [p.loss.item() for p in create_objective(name, eq).losses(x, StepContext(
        generator=torch.Generator().manual_seed(1)))]
    torch.manual_seed(0)
    lb = [p.loss.item() for p in create_objective(name, plain).losses(equalise(x), StepContext(
        generator=torch.Generator().manual_seed(1)))]
    assert la == pytest.approx(lb, abs=1e-5)


def test_pca_fits_and_scores_the_normalised_images():
    train, _ = _images(40, seed=1)
    val, _ = _images(10, seed=2)
    test, _ = _images(3, seed=3)
    eq = create_model("pca", 32, max_components=8, input={"normalise": "equalise"})
    plain = create_model("pca", 32, max_components=8)
    fa = fit_principal_components(eq, train.flatten(1), val.flatten(1))
    fb = fit_principal_components(plain, equalise(train).flatten(1), equalise(val).flatten(1))
    assert fa == pytest.approx(fb)
    assert torch.allclose(eq.predict(test).score, plain.predict(equalise(test)).score, atol=1e-6)
