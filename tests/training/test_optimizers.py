"""The objectives' optimisers: one per parameter group, from ``model.<name>.optim``, and their state
as a checkpoint holds it (the format every checkpoint written so far has)."""

from __future__ import annotations

import pytest
import torch

from imgae_dx.errors import CheckpointError
from imgae_dx.models import create_model, create_objective
from imgae_dx.training.optimizers import (
    build_optimizer,
    build_optimizers,
    load_optimizer_state,
    optimizer_state,
)
from imgae_dx.training.precision import resolve_precision
from imgae_dx.training.step import TrainStep

RA = {"channels": [4, 8], "zdim": 4}
AE = {"channels": [4, 8], "latent_dim": 4}


def _trained(name, over):
    torch.manual_seed(0)
    model = create_model(name, 16, **over)
    step = TrainStep(create_objective(name, model), resolve_precision("off", "cpu"),
                     generator=torch.Generator().manual_seed(1))
    step(torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(2)))
    return model, step


def test_one_optimiser_per_group_with_the_models_settings():
    m = create_model("ra", 16, **RA, optim={"name": "adamw", "lr": 3e-4, "weight_decay": 0.01})
    opts = build_optimizers(create_objective("ra", m))
    assert list(opts) == ["encoder", "decoder"]
    enc = [p for g in opts["encoder"].param_groups for p in g["params"]]
    dec = [p for g in opts["decoder"].param_groups for p in g["params"]]
    assert [id(p) for p in enc] == [id(p) for p in m.encoder.parameters()]
    assert [id(p) for p in dec] == [id(p) for p in m.decoder.parameters()]
    for o in opts.values():
        assert isinstance(o, torch.optim.AdamW)
        assert o.param_groups[0]["lr"] == 3e-4 and o.param_groups[0]["weight_decay"] == 0.01
    ae = build_optimizers(create_objective("ae", create_model("ae", 16, **AE)))
    assert list(ae) == ["model"] and type(ae["model"]) is torch.optim.Adam
    assert ae["model"].param_groups[0]["lr"] == 1e-3  # model.ae.optim's default


def test_amsgrad_decay_and_betas_reach_the_optimiser():
    """(The DAE recipe's ``amsgrad`` and ``weight_decay`` switches among them.)"""
    p = [torch.nn.Parameter(torch.zeros(3))]
    cfg = create_model("unet", 16, base_channels=4, groups=2, depth=3,
                       optim={"amsgrad": True, "weight_decay": 1e-5, "betas": [0.5, 0.9]}).cfg.optim
    g = build_optimizer(p, cfg).param_groups[0]
    assert g["amsgrad"] is True and g["weight_decay"] == 1e-5 and tuple(g["betas"]) == (0.5, 0.9)


def test_state_keeps_the_checkpoint_format_and_round_trips():
    model, step = _trained("ra", RA)
    sd = step.state_dict()["objective"]
    assert sd == optimizer_state("ra", step.optimizers)
    assert sd["objective"] == "ra" and set(sd["optimizers"]) == {"encoder", "decoder"}
    fresh = build_optimizers(create_objective("ra", model))
    load_optimizer_state("ra", fresh, sd)
    for k, o in fresh.items():
        a, b = o.state_dict()["state"], step.optimizers[k].state_dict()["state"]
        assert a.keys() == b.keys() and all(torch.equal(a[i]["exp_avg"], b[i]["exp_avg"]) for i in a)


def test_a_mismatched_state_is_a_checkpoint_error():
    _, ra = _trained("ra", RA)
    _, ae = _trained("ae", AE)
    with pytest.raises(CheckpointError, match="not 'ae'"):
        ae.load_state_dict(ra.state_dict())
    with pytest.raises(CheckpointError, match="optimizers"):
        load_optimizer_state("ae", ae.optimizers, {"objective": "ae"})
    with pytest.raises(CheckpointError, match=r"\['decoder', 'encoder'\] in the checkpoint"):
        load_optimizer_state("ae", ae.optimizers, {**ra.state_dict()["objective"], "objective": "ae"})
