"""The step owner: the one place where a model's parameters change.

:class:`TrainStep` runs one training step of one model, the sequence every mixed-precision training
loop needs (timm's ``NativeScaler``, nanoGPT's loop)::

    set LR from the schedule
    for each LossPart the objective yields (U-Net/AE: one; RA: encoder, then decoder):
        zero_grad → backward(scaler.scale(loss)) → grad_sync (DDP all-reduce)
                  → scaler.unscale_ → clip_grad_norm_ → scaler.step(optimizer)  (or optimizer.step)
    scaler.update()  — once per step, after every optimiser of the step

Objectives only compute losses (:meth:`imgae_dx.models.Objective.losses`); the step owns the
optimisers, one per parameter group the objective names (:mod:`imgae_dx.training.optimizers`).
With fp16 a ``GradScaler`` is used (on CUDA, and on the CPU when ``training.amp: fp16`` is asked
for there, so the same code path runs in CI); a step whose gradients overflow is skipped by the
scaler and shrinks the scale. The learning rate is a pure function of the steps done
(:func:`lr_factor`), set on the optimisers before each step, so a resumed run continues the
schedule exactly.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from imgae_dx.errors import CheckpointError, StepMemoryError
from imgae_dx.models.objective import Objective, StepContext, scalar_floats
from imgae_dx.training import distributed as dist_utils
from imgae_dx.training.optimizers import build_optimizers, load_optimizer_state, optimizer_state
from imgae_dx.training.precision import Precision

if TYPE_CHECKING:
    from imgae_dx.config import Config
    from imgae_dx.training.runtime import Runtime


def lr_factor(step: int, total_steps: int, warmup: int, kind: str) -> float:
    """Factor of the base LR at optimisation step ``step`` (0-based): linear warm-up over
    ``warmup`` steps, then cosine to 0 at ``total_steps`` (``kind="cosine"``) or flat."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    span = max(1, total_steps - warmup)
    t = min(1.0, max(0.0, (step - warmup) / span))
    return 0.5 * (1.0 + math.cos(math.pi * t))


def _no_sync(params: Iterable[nn.Parameter]) -> None:
    return None


class TrainStep:
    """One model's training step (see the module docstring).

    Builds the objective's optimisers (:func:`~imgae_dx.training.optimizers.build_optimizers`:
    create the step once the model is on its device) and holds them as :attr:`optimizers`.

    Args:
        objective: the model's objective (its losses and parameter groups).
        precision: the resolved precision (autocast dtype; fp16 brings a GradScaler).
        grad_clip: max global gradient norm per optimiser update, or None.
        generator: RNG of the objective's noise (None: the global RNG).
        grad_sync: called after every backward with the parameters just differentiated
            (all-reduce of their gradients under DDP).
        schedule: LR factor as a function of the steps done (default: constant 1).
    """

    def __init__(
        self,
        objective: Objective,
        precision: Precision,
        *,
        grad_clip: float | None = None,
        generator: torch.Generator | None = None,
        grad_sync: Callable[[Iterable[nn.Parameter]], None] | None = None,
        schedule: Callable[[int], float] | None = None,
    ) -> None:
        self.objective = objective
        self.optimizers = build_optimizers(objective)
        self.precision = precision
        self.grad_clip = grad_clip
        self.grad_sync = grad_sync or _no_sync
        self.schedule = schedule or (lambda step: 1.0)
        self.ctx = StepContext(autocast=precision.autocast(), generator=generator)
        self.scaler = precision.make_scaler()
        # the configured learning rates (the schedule multiplies these)
        self.base_lrs = {k: [float(g["lr"]) for g in o.param_groups]
                         for k, o in self.optimizers.items()}
        self.steps_done = 0

    def _set_lr(self, step: int) -> None:
        f = self.schedule(step)
        for k, opt in self.optimizers.items():
            for g, base in zip(opt.param_groups, self.base_lrs[k], strict=True):
                g["lr"] = base * f

    def next_lr(self) -> float:
        """The learning rate of the (first) optimiser at the next step."""
        k = next(iter(self.base_lrs))
        return self.base_lrs[k][0] * self.schedule(self.steps_done)

    def __call__(self, x: Tensor) -> dict[str, float]:
        """One step on x (B×1×H×W in [0, 1]). Returns the objective's terms as floats (one
        device sync), ``grad_norm`` (``grad_norm_OPT`` with several optimisers) when clipping,
        and ``loss_scale`` while a GradScaler is active."""
        self._set_lr(self.steps_done)
        opts = self.optimizers
        scaler = self.scaler
        terms: dict[str, Tensor] = {}
        for part in self.objective.losses(x, self.ctx):
            opt = opts[part.optimizer]
            opt.zero_grad(set_to_none=True)
            loss = scaler.scale(part.loss) if scaler is not None else part.loss
            loss.backward(inputs=part.params if part.only_these else None)
            self.grad_sync(part.params)
            if self.grad_clip is not None:
                if scaler is not None:
                    scaler.unscale_(opt)
                norm = torch.nn.utils.clip_grad_norm_(part.params, self.grad_clip)
                terms["grad_norm" if len(opts) == 1 else f"grad_norm_{part.optimizer}"] = norm
            if scaler is not None:
                scaler.step(opt)
            else:
                opt.step()
            for k, v in part.terms.items():
                terms.setdefault(k, v)
        scale = None
        if scaler is not None:
            scaler.update()
            scale = float(scaler.get_scale())
        self.steps_done += 1
        out = scalar_floats(terms)
        if scale is not None:
            out["loss_scale"] = scale
        return out

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Optimisers, scaler and schedule position (the model's weights are saved apart)."""
        return {"objective": optimizer_state(self.objective.name, self.optimizers),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "steps_done": self.steps_done}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; a scaler state is required exactly when fp16 is used."""
        load_optimizer_state(self.objective.name, self.optimizers, sd["objective"])
        if (self.scaler is None) != (sd.get("scaler") is None):
            have = "fp16 with a GradScaler" if sd.get("scaler") is not None else "no GradScaler"
            raise CheckpointError(
                f"the checkpoint was trained with {have} but this run uses "
                f"{self.precision.name}: resume with the same training.amp and device type"
            )
        if self.scaler is not None:
            self.scaler.load_state_dict(sd["scaler"])
        self.steps_done = int(sd["steps_done"])


@contextlib.contextmanager
def memory_guard(describe: Callable[[bool], str]) -> Iterator[None]:
    """Turn an out-of-memory error into a :class:`StepMemoryError` with ``describe(on_gpu)``
    as its message (the caller says which step, which sizes to lower, and what is on disk)."""
    try:
        yield
    except RuntimeError as e:  # torch.OutOfMemoryError (CUDA) is a RuntimeError too
        gpu = isinstance(e, torch.OutOfMemoryError)
        if not gpu and "can't allocate memory" not in str(e):  # the CPU allocator's words
            raise
        raise StepMemoryError(describe(gpu)) from e


def build_steps(cfg: Config, names: list[str], runtime: Runtime,
                precision: Precision) -> tuple[dict[str, nn.Module], dict[str, TrainStep]]:
    """Every named model (from its ``model.NAME`` settings, on the runtime's device, rank 0's
    weights on every rank) and its :class:`TrainStep`: the model's objective, gradient
    all-reduce under DDP, and a noise generator of its own seeded from the run's seed, the model's
    place in ``names`` and the rank. Returns ``(models, steps)``."""
    from imgae_dx.models import create_model, create_objective

    t = cfg.training
    models: dict[str, nn.Module] = {}
    steps: dict[str, TrainStep] = {}
    sync = dist_utils.all_reduce_grads if runtime.dist.distributed else None
    for i, name in enumerate(names):
        model = runtime.place(create_model(name, image_size=cfg.data.image_size, cfg=getattr(cfg.model, name)))
        obj = create_objective(name, model, getattr(cfg.model, name))
        if t.compile:
            obj.compile()  # in place: state_dict keys are unchanged
        gen = runtime.generator(cfg.seed * 1000 + 17 * (i + 1) + 7919 * runtime.dist.rank)
        models[name] = model
        steps[name] = TrainStep(obj, precision, grad_clip=t.grad_clip, generator=gen, grad_sync=sync)
    return models, steps


def out_of_memory_message(gpu: bool, where: str, step: int, stage: str, x: Tensor, cfg: Config,
                          last_saved_step: int | None) -> str:
    """What a :class:`StepMemoryError` says: where memory ran out (``where``: e.g. ``ae's train
    step``), on which batch ``x`` (B×1×H×W), the sizes to lower, and whether a checkpoint is
    there to resume from (``last_saved_step``; None: none was written)."""
    t, d = cfg.training, cfg.data
    kept = (f"the last checkpoint (step {last_saved_step}) is intact: free memory and rerun with "
            "--resume to continue from it" if last_saved_step is not None else "no checkpoint was written yet")
    return (f"{'GPU' if gpu else 'host'} memory ran out in {where} at step {step} ({stage}, a batch of "
            f"{int(x.shape[0])} at {int(x.shape[-1])}²). Lower --batch-size (training.batch_size, now "
            f"{t.batch_size}) or --image-size (data.image_size, now {d.image_size}) and start a new run: "
            f"they define the run, so --resume refuses them; {kept}.")
