"""The step owner on every precision path the CPU can run (the same code CUDA runs), and the
precision policy for each GPU generation (monkeypatched device properties)."""

from __future__ import annotations

import io
import math
import types

import pytest
import torch

from imgae_dx.errors import CheckpointError, StepMemoryError
from imgae_dx.models import create_model, create_objective
from imgae_dx.training.precision import resolve_precision
from imgae_dx.training.step import TrainStep, lr_factor, memory_guard
from imgae_dx.utils.device import has_native_bf16

TINY = {
    "unet": {"base_channels": 4, "groups": 2, "depth": 3},
    "ra": {"channels": [4, 8, 8, 8, 8], "zdim": 8},
    "ae": {"channels": [4, 8, 8, 8], "latent_dim": 8},
}


def _batch(seed=0, b=4, s=32):
    return torch.rand(b, 1, s, s, generator=torch.Generator().manual_seed(seed))


def _step(name, amp="off", seed=0, **kw):
    torch.manual_seed(seed)
    model = create_model(name, 32, **TINY[name])
    obj = create_objective(name, model)
    step = TrainStep(obj, resolve_precision(amp, "cpu"), grad_clip=1.0,
                     generator=torch.Generator().manual_seed(seed + 1), **kw)
    return model, step


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
@pytest.mark.parametrize("name", ["unet", "ra", "ae"])
def test_precision_matrix_on_cpu(name, amp):
    """Several steps in fp32, bf16 autocast and fp16 autocast + GradScaler("cpu"): finite losses,
    weights move, and ``loss_scale`` is reported exactly while a scaler is active."""
    model, step = _step(name, amp)
    assert (step.scaler is not None) == (amp == "fp16")
    before = _weights(model)
    outs = [step(_batch(i)) for i in range(4)]
    for out in outs:
        assert math.isfinite(out["loss"]) and out["loss"] > 0
        assert ("loss_scale" in out) == (amp == "fp16")
    if amp == "fp16":
        assert step.scaler._device == "cpu" and outs[-1]["loss_scale"] == step.scaler.get_scale()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert step.steps_done == 4


def test_fp16_double_update_regression():
    """The scaler is updated once per step, after every optimiser of the step: RA (two optimisers)
    runs consecutive fp16 steps. (Calling update() again after the step — what the trainer used
    to do on top of the objective — raises 'No inf checks were recorded prior to update'.)"""
    _, step = _step("ra", "fp16")
    for i in range(3):
        step(_batch(i))
    with pytest.raises(AssertionError, match="No inf checks"):
        step.scaler.update()


@pytest.mark.parametrize("name", ["unet", "ra", "ae"])
def test_injected_inf_skips_the_update_and_shrinks_the_scale(name):
    model, step = _step(name, "fp16")
    step(_batch(0))
    scale0 = step.scaler.get_scale()
    before = _weights(model)
    pname, p = next(iter(model.named_parameters()))
    h = p.register_hook(lambda g: torch.full_like(g, float("inf")))
    out = step(_batch(1))
    h.remove()
    assert out["loss_scale"] == scale0 * 0.5  # backoff factor
    # the optimiser whose gradients overflowed skipped its update (U-Net/AE: the only one;
    # RA: the encoder's — its decoder update had finite gradients and went through)
    skipped = [k for k, _ in model.named_parameters() if name != "ra" or k.split(".")[0] == pname.split(".")[0]]
    assert pname in skipped and all(torch.equal(before[k], model.state_dict()[k]) for k in skipped)
    out = step(_batch(2))  # recovers: a finite step goes through at the smaller scale
    assert math.isfinite(out["loss"]) and out["loss_scale"] == scale0 * 0.5


@pytest.mark.parametrize("name", ["unet", "ra", "ae"])
def test_resume_restores_the_scaler_exactly(name):
    model, step = _step(name, "fp16")
    for i in range(3):
        step(_batch(i))
    buf = io.BytesIO()  # a checkpoint's round trip (state dicts hold live tensors)
    torch.save({"model": model.state_dict(), "step": step.state_dict(),
                "gen": step.ctx.generator.get_state()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    cont = [step(_batch(10 + i)) for i in range(2)]
    model2, step2 = _step(name, "fp16", seed=99)
    model2.load_state_dict(saved["model"])
    step2.load_state_dict(saved["step"])
    step2.ctx.generator.set_state(saved["gen"])
    assert step2.scaler.state_dict() == saved["step"]["scaler"]
    assert [step2(_batch(10 + i)) for i in range(2)] == cont
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values(),
                                                  strict=True))


def test_scaler_state_must_match_the_precision():
    _, fp16 = _step("ae", "fp16")
    fp16(_batch())
    _, fp32 = _step("ae", "off")
    with pytest.raises(CheckpointError, match="GradScaler"):
        fp32.load_state_dict(fp16.state_dict())


def test_grad_sync_sees_each_optimisers_parameters():
    seen: list[set[int]] = []
    model, step = _step("ra", "fp16", grad_sync=lambda ps: seen.append({id(p) for p in ps}))
    out = step(_batch())
    assert seen == [{id(p) for p in model.encoder.parameters()}, {id(p) for p in model.decoder.parameters()}]
    assert out["grad_norm_encoder"] > 0 and out["grad_norm_decoder"] > 0


def test_schedule_sets_the_learning_rate_before_each_step():
    _, step = _step("ae")
    step.schedule = lambda s: lr_factor(s, total_steps=10, warmup=2, kind="cosine")
    base = step.base_lrs["model"][0]
    lrs = []
    for i in range(3):
        lrs.append(step.next_lr())
        step(_batch(i))
        assert step.optimizers["model"].param_groups[0]["lr"] == lrs[-1]
    assert lrs == [base * 0.5, base * 1.0, base * lr_factor(2, 10, 2, "cosine")]


def test_lr_factor_warmup_then_cosine():
    assert [lr_factor(s, 10, 2, "cosine") for s in (0, 1)] == [0.5, 1.0]
    assert lr_factor(2, 10, 2, "cosine") == pytest.approx(1.0)
    assert lr_factor(6, 10, 2, "cosine") == pytest.approx(0.5)
    assert lr_factor(10, 10, 2, "cosine") == pytest.approx(0.0)
    assert lr_factor(7, 10, 0, "constant") == 1.0


def test_memory_guard_names_the_step():
    with pytest.raises(StepMemoryError, match="lower it"), memory_guard(lambda gpu: f"gpu={gpu}: lower it"):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 TB")
    with pytest.raises(RuntimeError, match="other"), memory_guard(lambda gpu: "x"):
        raise RuntimeError("other")


# ------------------------------------------------------------------------------ precision policy
@pytest.mark.parametrize(("cc", "auto", "bf16"), [
    ((7, 0), "fp16", "fp16"),   # V100
    ((7, 5), "fp16", "fp16"),   # T4: bf16 only emulated
    ((8, 0), "bf16", "bf16"),   # A100
    ((8, 9), "bf16", "bf16"),   # L4
    ((9, 0), "bf16", "bf16"),   # H100 / H200
])
def test_precision_by_compute_capability(monkeypatch, cc, auto, bf16):
    props = types.SimpleNamespace(major=cc[0], minor=cc[1], name="gpu", total_memory=16 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d=None: props)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # counts emulation
    dev = torch.device("cuda", 0)
    p = resolve_precision("auto", dev)
    assert (p.name, p.needs_scaler, p.device_type) == (auto, auto == "fp16", "cuda")
    assert resolve_precision("bf16", dev).name == bf16
    assert resolve_precision("fp16", dev).name == "fp16"
    assert resolve_precision("off", dev).name == "fp32"
    assert has_native_bf16(cc) == (auto == "bf16")


def test_precision_on_cpu():
    assert resolve_precision("auto", "cpu").name == "fp32"
    assert resolve_precision("off", "cpu").dtype is None
    assert resolve_precision("bf16", "cpu").dtype == torch.bfloat16
    fp16 = resolve_precision("fp16", "cpu")
    assert fp16.dtype == torch.float16 and isinstance(fp16.make_scaler(), torch.amp.GradScaler)
    with pytest.raises(ValueError, match="amp"):
        resolve_precision("fp8", "cpu")
