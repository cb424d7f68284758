"""Short CPU training on sample-data images at 64²: every model's validation loss falls ≥ 50 %."""

from __future__ import annotations

import time

import pytest
import torch
from model_helpers import make_step

from imgae_dx.models import StepContext, create_model, create_objective

# Narrow widths and a higher learning rate than the defaults so a CPU run of a few seconds shows
# learning; the architectures (depth, blocks, objectives) are the real ones.
SHORT_RUN = {
    "unet": ({"base_channels": 8, "groups": 4, "depth": 4, "optim": {"lr": 2e-3}}, 25),
    "ra": ({"channels": [4, 8, 8, 8, 8], "zdim": 16, "optim": {"lr": 3e-3}}, 40),
    "ae": ({"channels": [16, 32, 64, 64], "optim": {"lr": 2e-3}}, 25),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["unet", "ra", "ae"])
def test_validation_loss_halves(name, images64):
    overrides, steps = SHORT_RUN[name]
    torch.manual_seed(0)
    m = create_model(name, 64, **overrides)
    obj = create_objective(name, m)
    g = torch.Generator().manual_seed(0)
    step = make_step(obj, seed=0, grad_clip=1.0)
    ctx = StepContext()

    def val() -> float:
        m.eval()
        v = obj.val_loss(images64.val, ctx)["loss"]
        m.train()
        return v

    v0 = val()
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, images64.train.shape[0], (8,), generator=g)
        out = step(images64.train[idx])
        assert torch.isfinite(torch.tensor(out["loss"]))
    v1 = val()
    print(f"{name} [{images64.source}]: val loss {v0:.4f} -> {v1:.4f} "
          f"({v1 / v0:.2f}x) in {time.perf_counter() - t0:.1f}s, {steps} steps")
    assert v1 <= 0.5 * v0, (v0, v1)
