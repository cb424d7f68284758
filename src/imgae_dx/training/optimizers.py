"""The optimisers of an objective: built from its parameter groups and ``model.<name>.optim``, and
their state as checkpoints hold it.

:func:`build_optimizers` gives one optimiser per parameter group the objective names (U-Net, AE:
``"model"``; RA: ``"encoder"``, ``"decoder"``); :class:`~imgae_dx.training.step.TrainStep` owns
them. :func:`optimizer_state` / :func:`load_optimizer_state` are their part of a checkpoint
(``CheckpointPayload.optimizers``): ``{"objective": NAME, "optimizers": {GROUP: state_dict}}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from imgae_dx.config import OptimConfig
from imgae_dx.errors import CheckpointError
from imgae_dx.models.objective import Objective


def build_optimizer(params: Iterable[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam or AdamW from an :class:`OptimConfig` (fused kernels when every parameter is on CUDA)."""
    params = list(params)
    fused = bool(params) and all(p.is_cuda for p in params)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
               amsgrad=cfg.amsgrad, fused=fused or None)


def build_optimizers(objective: Objective) -> dict[str, torch.optim.Optimizer]:
    """One optimiser per parameter group of ``objective``, with its ``optim`` settings, in the
    objective's group order. Build them once the model is on its device (fused Adam on CUDA)."""
    return {k: build_optimizer(p, objective.optim) for k, p in objective.param_groups.items()}


def optimizer_state(name: str, optimizers: Mapping[str, torch.optim.Optimizer]) -> dict[str, Any]:
    """The optimisers' state of model ``name`` (its weights are saved apart)."""
    return {"objective": name, "optimizers": {k: o.state_dict() for k, o in optimizers.items()}}


def load_optimizer_state(name: str, optimizers: Mapping[str, torch.optim.Optimizer],
                         sd: Any) -> None:
    """Restore :func:`optimizer_state` into ``optimizers`` (in place).

    Raises:
        CheckpointError: the state lacks its optimisers, is another model's, or names other
            parameter groups.
    """
    if not isinstance(sd, dict) or "optimizers" not in sd:
        raise CheckpointError(f"{name}: objective state lacks 'optimizers'; "
                              "the checkpoint is not from ImgAE-Dx or is corrupt")
    if sd.get("objective") != name:
        raise CheckpointError(f"objective state is for {sd.get('objective')!r}, "
                              f"not {name!r}: load the checkpoint of the same model")
    opt = sd["optimizers"]
    if set(opt) != set(optimizers):
        raise CheckpointError(f"{name}: optimisers {sorted(opt)} in the checkpoint, "
                              f"expected {sorted(optimizers)}")
    for k, o in optimizers.items():
        o.load_state_dict(opt[k])
