"""best.pt is chosen on one fixed set of images: a case where the per-stage rule and the
fixed-set rule disagree, with real models, real validation and the trainer's selection code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from imgae_dx.models import StepContext, create_model, create_objective
from imgae_dx.training.loop import Progress, train_one_epoch, validate
from imgae_dx.training.precision import resolve_precision
from imgae_dx.training.selection import Selector, ValidationPool, collect
from imgae_dx.training.step import TrainStep


def _textured(n, seed, s=32):
    """Stripes of random frequency and phase around 0.5: hard to reconstruct for a small AE."""
    g = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
    f, ph, ang = g.uniform(0.3, 1.2, n), g.uniform(0, 6.3, n), g.uniform(0, 3.14, n)
    img = [0.5 + 0.35 * np.sin(fi * (np.cos(a) * xx + np.sin(a) * yy) + p) for fi, p, a in zip(f, ph, ang, strict=True)]
    return np.rint(np.stack(img) * 255).astype(np.uint8)


def _flat(n, seed, s=32):
    """Nearly uniform images: easy."""
    g = np.random.default_rng(seed)
    return np.clip(np.rint(g.uniform(110, 145, (n, 1, 1)) + g.normal(0, 1.0, (n, s, s))), 0, 255).astype(np.uint8)


def _batches(u8, b=8):
    return [torch.from_numpy(u8[i:i + b, None].astype(np.float32) / 255.0) for i in range(0, len(u8), b)]


def test_pool_returns_exactly_the_streamed_images_in_fixed_batches():
    imgs = _textured(10, 0)
    back = collect(iter(_batches(imgs, b=4)))
    assert np.array_equal(back, imgs)
    assert collect(iter(_batches(imgs, b=4)), max_images=5).shape[0] == 8  # whole batches
    pool = ValidationPool(batch_size=4)
    pool.add("images_001", imgs)
    pool.add("images_002", _flat(3, 1))
    assert pool.stages == ["images_001", "images_002"] and pool.count("images_002") == 3
    parts = [tuple(x.shape) for x in pool.batches("images_001")]
    assert parts == [(4, 1, 32, 32), (4, 1, 32, 32), (2, 1, 32, 32)]
    assert torch.equal(next(pool.batches("images_001"))[0, 0], torch.from_numpy(imgs[0] / np.float32(255)))
    with pytest.raises(ValueError, match="uint8"):
        pool.add("x", imgs.astype(np.float32))


def test_fixed_set_rule_keeps_the_checkpoint_the_per_stage_rule_would_drop():
    """Stage 1's validation images are hard, stage 2's easy. After stage 2 the model has forgotten
    stage 1: its loss on stage 2's own images is far below the stage-1 best, so ranking each
    checkpoint on its own stage's images would replace best.pt; on the same images (stages 1+2)
    the stage-1 checkpoint is better, and the selector keeps it."""
    torch.manual_seed(0)
    model = create_model("ae", 32, channels=[8, 16, 16, 16], latent_dim=16, optim={"lr": 3e-3})
    obj = create_objective("ae", model)
    step = TrainStep(obj, resolve_precision("off", "cpu"), grad_clip=1.0)
    ctx = {"ae": StepContext()}
    pool, sel = ValidationPool(batch_size=8), Selector(["ae"])

    def pooled_loss() -> float:
        sums = [validate({"ae": obj}, pool.batches(s), ctx)["ae"] for s in pool.stages]
        return sum(v.sums["loss"] for v in sums) / sum(v.images for v in sums)

    progress = Progress()
    # stage 1: textured images
    for _ in range(8):
        train_one_epoch({"ae": step}, _batches(_textured(64, 1)), progress)
    pool.add("images_001", _textured(32, 2))
    a_on_1 = pooled_loss()
    assert sel.select(1, progress.step, {"ae": a_on_1}, best_on_set=lambda n: math.nan) == ["ae"]
    best_weights = {k: v.clone() for k, v in model.state_dict().items()}  # what best.pt holds

    # stage 2: flat images only — the model forgets the stripes
    for _ in range(8):
        train_one_epoch({"ae": step}, _batches(_flat(64, 3)), progress)
    pool.add("images_002", _flat(32, 4))
    b_on_2 = validate({"ae": obj}, pool.batches("images_002"), ctx)["ae"].mean()
    b_on_both = pooled_loss()
    assert b_on_2 < a_on_1  # the per-stage rule would make this checkpoint best.pt …

    def best_on_set(name: str) -> float:
        current = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(best_weights)
        try:
            return pooled_loss()
        finally:
            model.load_state_dict(current)

    assert sel.select(2, progress.step, {"ae": b_on_both}, best_on_set) == []  # … this rule does not
    st = sel.state["ae"]
    assert st.set_stages == 2 and st.best_step == 8 * 8
    assert st.best_loss == pytest.approx(best_on_set("ae")) and st.best_loss < b_on_both
    # within the stage the set is fixed: a candidate is compared to the re-scored best directly
    assert sel.select(2, progress.step + 1, {"ae": st.best_loss / 2}, best_on_set) == ["ae"]
    with pytest.raises(RuntimeError, match="re-score"):
        sel.offer("ae", 0.0, 3, 0)


def test_early_stopping_counts_epochs_without_any_gain_within_a_stage():
    sel = Selector(["a", "b"])
    assert sel.select(1, 1, {"a": 1.0, "b": 1.0}, best_on_set=lambda n: math.nan) == ["a", "b"]
    assert sel.bad_epochs == 0 and not sel.should_stop(1)
    sel.select(1, 2, {"a": 2.0, "b": 2.0}, best_on_set=lambda n: math.nan)
    assert sel.bad_epochs == 1 and sel.should_stop(1) and not sel.should_stop(2) and not sel.should_stop(None)
    assert sel.select(1, 3, {"a": 3.0, "b": 0.5}, best_on_set=lambda n: math.nan) == ["b"]
    assert sel.bad_epochs == 0  # one model's gain resets the count
    sel.select(1, 4, {"a": 3.0, "b": 3.0}, best_on_set=lambda n: math.nan)
    assert {n: sel.state[n].bad_epochs for n in "ab"} == {"a": 1, "b": 1}  # what checkpoints save
    restored = Selector(["a", "b"])
    restored.load(sel.state)
    assert restored.bad_epochs == 1 and restored.best_losses() == {"a": 1.0, "b": 0.5}
    restored.new_stage()
    assert restored.bad_epochs == 0
