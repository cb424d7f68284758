"""The training-objective interface: what a model minimises, one interface for all (no per-model
branches in the step owner).

An :class:`Objective` names its parameter groups — one optimiser each, built by the step owner
(:mod:`imgae_dx.training.optimizers`) with the objective's :class:`~imgae_dx.config.OptimConfig` —
and says what to minimise: :meth:`Objective.losses` yields one :class:`LossPart` per optimiser
update of a training step (U-Net and AE: one; RA: the encoder's, then — computed with the updated
encoder — the decoder's). It never builds or steps an optimiser, never calls ``backward`` and never
touches a GradScaler: :class:`imgae_dx.training.step.TrainStep` is the one place that does
(autocast, scale, backward, gradient sync, unscale, clip, step, scaler update, LR schedule). A
:class:`StepContext` carries the autocast factory and the noise generator.

:class:`ReconstructionObjective` is the per-pixel MSE to the clean input with one optimiser
(``"model"``), shared by the U-Net (which corrupts its input first) and the plain AE; each model's
own objective is in its folder (``models/<model>/objective.py``).

``"loss"`` is the headline term, for every model the per-pixel MSE between the clean input and its
reconstruction (U-Net: of the noisy input), so figures are comparable across models. ``val_loss``
returns Python floats (one device sync per call).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imgae_dx.config import OptimConfig


@dataclass
class StepContext:
    """What an objective needs from the step owner.

    Attributes:
        autocast: zero-argument factory of the autocast context (``nullcontext`` for fp32).
        generator: RNG for the objective's noise (corruption, reparameterisation, fakes);
            None uses the global RNG. A seeded generator makes runs reproducible.
    """

    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext
    generator: torch.Generator | None = None


@dataclass
class LossPart:
    """One optimiser update of a training step, as an objective hands it to the step owner.

    Attributes:
        optimizer: the parameter group (key of :attr:`Objective.param_groups`) whose optimiser
            steps.
        loss: scalar float32 tensor to minimise (with its graph).
        params: the parameters that optimiser updates (clipped together; synced under DDP).
        only_these: differentiate into ``params`` only (``backward(inputs=params)``): other
            parameters the loss depends on get no gradient from it.
        terms: named scalar tensors to report (``"loss"``, the headline, in the first part).
    """

    optimizer: str
    loss: Tensor
    params: list[nn.Parameter]
    only_these: bool = False
    terms: dict[str, Tensor] = field(default_factory=dict)


class Objective:
    """Base: a model, its parameter groups and their optimiser settings; subclasses implement
    ``losses`` and ``val_loss``.

    Attributes:
        name: the model's name (checkpoints record it with the optimisers' state).
        model: the network.
        param_groups: optimiser name → the parameters it updates, in the order ``losses`` yields
            their parts (U-Net, AE: ``{"model": …}``; RA: ``{"encoder": …, "decoder": …}``).
        optim: the settings of every optimiser (``model.<name>.optim``).
    """

    name: str = "objective"

    def __init__(self, model: nn.Module, param_groups: dict[str, list[nn.Parameter]],
                 optim: OptimConfig) -> None:
        self.model = model
        self.param_groups = param_groups
        self.optim = optim

    # -- interface ------------------------------------------------------------------------------
    def losses(self, x: Tensor, ctx: StepContext) -> Iterator[LossPart]:
        """The updates of one training step on x (B×1×H×W in [0, 1]; the objective normalises it
        with the model's :meth:`~imgae_dx.models.base.ReconstructionModel.prepare` first), in order.

        A generator: the step owner applies each part (backward, optimiser step) before asking
        for the next, so a later part is computed with the parameters the earlier one updated.
        """
        raise NotImplementedError

    def val_loss(self, x: Tensor, ctx: StepContext) -> dict[str, float]:
        """Validation losses on x (B×1×H×W), no gradients; ``"loss"`` is comparable per model."""
        raise NotImplementedError

    def compile(self, **kwargs: Any) -> None:
        """``torch.compile`` (in place) the modules the step calls; kwargs go to ``compile``."""
        self.model.compile(**kwargs)


def scalar_floats(d: dict[str, Tensor | None]) -> dict[str, float]:
    """Tensors → floats with a single device sync."""
    keys = [k for k, v in d.items() if v is not None]
    vals = torch.stack([d[k].detach().float().reshape(()) for k in keys]).tolist()  # type: ignore[union-attr]
    return dict(zip(keys, vals, strict=True))


class ReconstructionObjective(Objective):
    """Per-pixel MSE of the model's reconstruction of :meth:`corrupt` (x) to the clean x; one
    optimiser (``"model"``) over every parameter of the model."""

    def __init__(self, model: nn.Module, optim: OptimConfig) -> None:
        super().__init__(model, {"model": list(model.parameters())}, optim)
        self.params = [p for p in model.parameters() if p.requires_grad]

    def corrupt(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """Model input for training; identity here (the U-Net adds coarse noise)."""
        return x

    def losses(self, x: Tensor, ctx: StepContext) -> Iterator[LossPart]:
        x = self.model.prepare(x)
        xin = self.corrupt(x, ctx.generator)
        with ctx.autocast():
            y = self.model(xin)
        loss = F.mse_loss(y.float(), x.float())
        yield LossPart("model", loss, self.params, terms={"loss": loss})

    @torch.no_grad()
    def val_loss(self, x: Tensor, ctx: StepContext) -> dict[str, float]:
        x = self.model.prepare(x)
        with ctx.autocast():
            y = self.model(x)
        return scalar_floats({"loss": F.mse_loss(y.float(), x.float())})
