"""Objective behaviour: RA's alternating updates, determinism, state round trip (driven by the
trainer's step owner, as in training; the precision matrix is in tests/training/test_step.py)."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from model_helpers import TINY, make_step, step_with_snapshots

from imgae_dx.models import create_model, create_objective


def _params(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _changed(before, module):
    return {k for k, v in module.named_parameters() if not torch.equal(before[k], v)}


def _batch(seed=0, b=4, s=32):
    return torch.rand(b, 1, s, s, generator=torch.Generator().manual_seed(seed))


def test_ra_steps_touch_only_their_half():
    torch.manual_seed(0)
    m = create_model("ra", 32, **TINY["ra"])
    obj = create_objective("ra", m)
    _, (before_enc, before_dec) = step_with_snapshots(obj, m, _batch(), seed=0)
    # the encoder update changes the encoder only …
    assert _changed(_params(before_enc.decoder), before_dec.decoder) == set()
    enc0 = _params(before_enc.encoder)
    changed_enc = _changed(enc0, before_dec.encoder)
    assert len(changed_enc) >= 0.9 * len(enc0), sorted(set(enc0) - changed_enc)
    # … and the decoder update, computed with the updated encoder, the decoder only
    assert _changed(_params(before_dec.encoder), m.encoder) == set()
    dec1 = _params(before_dec.decoder)
    assert len(_changed(dec1, m.decoder)) >= 0.9 * len(dec1)
    assert list(obj.param_groups) == ["encoder", "decoder"]  # the order of the updates
    assert [id(p) for p in obj.param_groups["encoder"]] == [id(p) for p in m.encoder.parameters()]
    assert [id(p) for p in obj.param_groups["decoder"]] == [id(p) for p in m.decoder.parameters()]
    assert obj.optim.lr == 5e-5  # model.ra.optim


def _run(name, steps=3, seed=0):
    torch.manual_seed(seed)
    m = create_model(name, 32, **({**TINY[name], "depth": 3} if name == "unet" else TINY[name]))
    obj = create_objective(name, m)
    step = make_step(obj, seed=seed + 1, grad_clip=1.0)
    logs = [step(_batch(i)) for i in range(steps)]
    return m, step, logs


@pytest.mark.parametrize("name", ["unet", "ra", "ae"])
def test_seeded_runs_reproduce_bit_for_bit(name):
    m1, _, l1 = _run(name)
    m2, _, l2 = _run(name)
    assert l1 == l2
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    m3, _, l3 = _run(name, seed=5)
    assert l3 != l1


@pytest.mark.parametrize("name", ["unet", "ra", "ae"])
def test_state_dict_round_trip(name):
    torch.manual_seed(0)
    m, step, _ = _run(name, steps=2)
    buf = io.BytesIO()
    torch.save({"model": m.state_dict(), "step": step.state_dict(),
                "rng": step.ctx.generator.get_state()}, buf)
    cont = [step(_batch(10 + i)) for i in range(2)]  # continue the original
    # resume a fresh copy from the saved state (weights_only: no pickled code in checkpoints)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    torch.manual_seed(123)  # a different init, overwritten by the load
    m2 = create_model(name, 32, **({**TINY[name], "depth": 3} if name == "unet" else TINY[name]))
    m2.load_state_dict(sd["model"])
    step2 = make_step(create_objective(name, m2), seed=0, grad_clip=1.0)
    step2.load_state_dict(sd["step"])
    step2.ctx.generator.set_state(sd["rng"])
    resumed = [step2(_batch(10 + i)) for i in range(2)]
    assert resumed == cont
    a, b = m.state_dict(), m2.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["unet", "ra", "ae"])
def test_forward_has_no_graph_breaks(name):
    import torch._dynamo as dynamo

    torch.manual_seed(0)
    m = create_model(name, 32, **TINY[name])
    x = _batch()
    dynamo.reset()
    targets = [(m.encoder, x), (m.decoder, torch.randn(4, m.zdim))] if name == "ra" else [(m, x)]
    for mod, inp in targets:
        ex = dynamo.explain(mod)(inp)
        assert ex.graph_break_count == 0, ex.break_reasons
        assert ex.graph_count == 1
    dynamo.reset()


def test_objective_copy_independent():
    """Deep-copying a model for evaluation leaves the objective's optimisers on the original."""
    m, step, _ = _run("ae", steps=1)
    c = copy.deepcopy(m)
    step(_batch())
    assert not all(torch.equal(a, b) for a, b in zip(c.parameters(), m.parameters(), strict=True))


def test_ra_batchnorm_running_stats_follow_real_data_only():
    """After one RA step, the encoder stem's BN running mean is 0.9·0 + 0.1·(batch mean of conv(x))
    — only E(x) fed it, not the passes over reconstructions and fakes — and the losses are those
    of the authors' variant (where every pass updates the running averages)."""
    torch.manual_seed(0)
    m = create_model("ra", 32, **TINY["ra"])
    ref = copy.deepcopy(m)
    x = _batch()
    stem_conv, stem_bn = m.encoder.stem[0], m.encoder.stem[1]
    with torch.no_grad():
        want = 0.1 * stem_conv(x).mean(dim=(0, 2, 3))
    obj = create_objective("ra", m)
    logs = make_step(obj, seed=1)(x)
    torch.testing.assert_close(stem_bn.running_mean, want, rtol=1e-5, atol=1e-7)
    assert stem_bn.momentum == 0.1  # restored after the auxiliary passes

    obj_ref = create_objective("ra", ref)
    obj_ref.bn_stats_from_real = False
    logs_ref = make_step(obj_ref, seed=1)(x)
    assert logs == logs_ref  # same training math, bit for bit
    assert not torch.allclose(ref.encoder.stem[1].running_mean, want)  # fakes moved them there


def test_ra_gamma_r_zero_skips_the_rec_of_rec_passes_and_trains_as_the_papers_tiny_weight():
    """γ_r = 0 drops the decoder step's rec-of-rec / rec-of-fake terms and their two decoder
    passes (RA's decoder runs 5 times a step instead of 7); the paper's γ_r = 1e-8 weighs them so
    little that both train to the same weights."""
    def run(gamma_r):
        torch.manual_seed(0)
        m = create_model("ra", 32, **TINY["ra"])
        obj = create_objective("ra", m, {**TINY["ra"], "gamma_r": gamma_r})
        calls = []
        m.decoder.register_forward_hook(lambda *a: calls.append(1))
        step = make_step(obj, seed=1, grad_clip=1.0)
        logs = [step(_batch(i)) for i in range(3)]
        return m, logs, len(calls) // 3

    m0, logs0, calls0 = run(0.0)
    m1, logs1, calls1 = run(1e-8)
    assert (calls0, calls1) == (5, 7)
    assert "rec_rec" not in logs0[-1] and "rec_rec" in logs1[-1]
    for k, v in m1.state_dict().items():
        if v.is_floating_point():  # (BatchNorm's num_batches_tracked counts the passes)
            torch.testing.assert_close(m0.state_dict()[k], v, rtol=1e-4, atol=1e-6, msg=k)
    assert logs0[-1]["loss_decoder"] == pytest.approx(logs1[-1]["loss_decoder"], rel=1e-5)
