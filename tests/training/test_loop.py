"""The loop functions on in-memory tensors: no archive, no HTTP, no run folder."""

from __future__ import annotations

import math

import torch

from imgae_dx.models import StepContext, create_model, create_objective
from imgae_dx.training.loop import Progress, train_one_epoch, validate
from imgae_dx.training.precision import resolve_precision
from imgae_dx.training.step import TrainStep

TINY = {
    "unet": {"base_channels": 4, "groups": 2, "depth": 3, "optim": {"lr": 3e-3}},
    "ae": {"channels": [4, 8, 8, 8], "latent_dim": 8, "optim": {"lr": 3e-3}},
}


def _data(n_batches=6, b=4, s=32, seed=0):
    """Smooth blobs: images an autoencoder learns to reconstruct within a few steps."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")
    out = []
    for _ in range(n_batches):
        c = torch.rand(b, 2, 1, 1, generator=g) - 0.5
        out.append(0.3 + 0.5 * torch.exp(-((xx - c[:, :1]) ** 2 + (yy - c[:, 1:]) ** 2) * 4))
    return out


def _steps(names=("unet", "ae")):
    torch.manual_seed(0)
    objs = {n: create_objective(n, create_model(n, 32, **TINY[n])) for n in names}
    prec = resolve_precision("off", "cpu")
    steps = {n: TrainStep(o, prec, grad_clip=1.0, generator=torch.Generator().manual_seed(1))
             for n, o in objs.items()}
    return objs, steps


def test_epoch_trains_every_model_on_the_same_batches_and_logs():
    objs, steps = _steps()
    batches = _data()
    seen, logs = [], []
    progress = Progress()
    stopped = train_one_epoch(steps, batches, progress, world_size=2, total_batches=len(batches),
                              log_every=4, on_batch=seen.append,
                              on_log=lambda means, ips: logs.append((progress.step, means, ips)))
    assert not stopped
    assert seen == batches  # each batch once, in order
    assert (progress.step, progress.batch, progress.images_seen) == (6, 6, 6 * 4 * 2)
    assert [s for s, _, _ in logs] == [4, 6]  # every 4 steps, and the epoch's last batch
    for _, means, ips in logs:
        assert set(means) == {"unet", "ae"} and ips > 0
        assert all(math.isfinite(m["loss"]) and m["grad_norm"] >= 0 for m in means.values())
    assert all(st.steps_done == 6 for st in steps.values())


def test_after_step_stops_the_epoch_where_it_is():
    _, steps = _steps(("ae",))
    progress = Progress(step=10, batch=2)
    calls = []

    def after_step() -> bool:
        calls.append(progress.batch)
        return progress.batch == 4

    assert train_one_epoch(steps, _data(), progress, after_step=after_step) is True
    assert calls == [3, 4] and progress.step == 12


def test_validation_loss_falls_with_training_and_restores_train_mode():
    objs, steps = _steps()
    val = _data(n_batches=2, seed=9)
    ctx = {n: StepContext() for n in objs}
    before = validate(objs, val, ctx)
    assert {n: v.images for n, v in before.items()} == {"unet": 8, "ae": 8}
    for _ in range(5):
        train_one_epoch(steps, _data(), Progress())
    after = validate(objs, val, ctx)
    for n in objs:
        assert after[n].mean() < 0.7 * before[n].mean(), (n, before[n].mean(), after[n].mean())
        assert objs[n].model.training
    assert "mse_clean" in after["unet"].sums  # the U-Net's extra validation term


def test_validation_is_a_pure_function_of_the_weights_and_images():
    objs, _ = _steps()
    val = _data(n_batches=3, seed=4)
    ctx = {n: StepContext() for n in objs}
    a, b = validate(objs, val, ctx), validate(objs, val, ctx)
    assert {n: v.sums for n, v in a.items()} == {n: v.sums for n, v in b.items()}


def test_validate_stages_sums_every_stage_and_model_over_ranks_in_one_reduce():
    from imgae_dx.training.loop import validate_stages

    objs, _ = _steps()
    ctx = {n: StepContext(generator=torch.Generator().manual_seed(0)) for n in objs}
    data = {"s1": _data(2, seed=1), "s2": _data(3, seed=2)}
    one = validate_stages(objs, data, ctx)
    for n in objs:
        for s, batches in data.items():
            ctx = {m: StepContext(generator=torch.Generator().manual_seed(0)) for m in objs}
            alone = validate(objs, batches, ctx)[n]
            assert one[n][s].images == alone.images == 4 * len(batches)
            assert one[n][s].mean() == alone.mean()
    calls = []

    def two_equal_ranks(values):
        calls.append(len(values))
        return [2 * v for v in values]

    ctx = {n: StepContext(generator=torch.Generator().manual_seed(0)) for n in objs}
    two = validate_stages(objs, data, ctx, all_reduce=two_equal_ranks)
    assert len(calls) == 1  # one collective for every sum and count
    assert all(two[n][s].images == 2 * one[n][s].images and two[n][s].mean() == one[n][s].mean()
               for n in objs for s in data)
