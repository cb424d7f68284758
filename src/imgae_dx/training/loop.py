"""The training loop as two functions: :func:`train_one_epoch` and :func:`validate`.

Both take plain iterables of batches — a streaming dataset's ``batches()``, or a list of in-memory
tensors in a test — and know nothing of archives, run folders or checkpoints. What happens around
a step (logging, checkpoints, stopping on a signal, the DDP buffer broadcast, turning an
out-of-memory error into a clear message) is passed in as callables by the trainer.

Shapes: a batch is B×1×H×W float in [0, 1] (a tensor, or anything with an ``images`` attribute
holding one, such as :class:`imgae_dx.data.dataset.Batch`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from imgae_dx.models.objective import Objective, StepContext
from imgae_dx.training.step import TrainStep

#: ``means`` (model → term → mean since the last call) and images/s over that span.
LogFn = Callable[[dict[str, dict[str, float]], float], None]
#: Context around one model's step or validation pass: ``guard(model_name, x)``.
GuardFn = Callable[[str, Tensor], AbstractContextManager[Any]]


@dataclass
class Progress:
    """Counters of the run: optimisation steps, images seen (all ranks), batches done this epoch."""

    step: int = 0
    images_seen: int = 0
    batch: int = 0


@dataclass
class _Meter:
    """Running sums of each model's step outputs and the images they covered."""

    sums: dict[str, dict[str, float]] = field(default_factory=dict)
    steps: int = 0
    images: int = 0
    since: float = field(default_factory=time.monotonic)

    def add(self, name: str, out: Mapping[str, float]) -> None:
        acc = self.sums.setdefault(name, {})
        for k, v in out.items():
            acc[k] = acc.get(k, 0.0) + float(v)

    def flush(self) -> tuple[dict[str, dict[str, float]], float]:
        now = time.monotonic()
        means = {n: {k: v / max(1, self.steps) for k, v in acc.items()} for n, acc in self.sums.items()}
        ips = self.images / max(1e-9, now - self.since)
        self.sums, self.steps, self.images, self.since = {}, 0, 0, now
        return means, ips


def images_of(batch: Any) -> Tensor:
    """The B×1×H×W tensor of a batch (a tensor or an object with ``images``)."""
    return batch if isinstance(batch, Tensor) else batch.images


def train_one_epoch(
    steps: Mapping[str, TrainStep],
    batches: Iterable[Any],
    progress: Progress,
    *,
    to_device: Callable[[Tensor], Tensor] = lambda x: x,
    world_size: int = 1,
    total_batches: int | None = None,
    log_every: int = 10,
    on_log: LogFn | None = None,
    on_batch: Callable[[Any], None] | None = None,
    after_model_step: Callable[[str], None] | None = None,
    after_step: Callable[[], bool] | None = None,
    guard: GuardFn | None = None,
    bar: Any = None,
) -> bool:
    """Train every model on every batch of one epoch; the models see the same batches.

    Args:
        steps: model name → its :class:`TrainStep`.
        batches: the epoch's batches (B×1×H×W float in [0, 1]); B may vary.
        progress: counters, advanced in place (``batch`` counts from where it stands).
        to_device: moves a batch to the models' device (pinned copy, channels-last, …).
        world_size: ranks training together (``images_seen`` counts all of them).
        total_batches: batches in the epoch; the last one flushes a log row.
        log_every: call ``on_log`` every this many steps (and at the end of the epoch).
        on_batch: called with each raw batch before it is used (tests record the samples).
        after_model_step: called with the model's name after its step (DDP buffer broadcast).
        after_step: called after every batch; returning True stops the epoch (a signal).
        guard: context around each model's step (out-of-memory translation).
        bar: a tqdm bar to advance, or None.

    Returns:
        True when ``after_step`` stopped the epoch, False when the batches ran out.
    """
    meter = _Meter()
    for batch in batches:
        if on_batch is not None:
            on_batch(batch)
        x = to_device(images_of(batch))
        for name, step in steps.items():
            with guard(name, x) if guard is not None else nullcontext():
                meter.add(name, step(x))
            if after_model_step is not None:
                after_model_step(name)
        n = int(x.shape[0]) * world_size
        progress.step += 1
        progress.batch += 1
        progress.images_seen += n
        meter.steps += 1
        meter.images += n
        if bar is not None:
            bar.update(1)
        if on_log is not None and (progress.step % log_every == 0 or progress.batch == total_batches):
            on_log(*meter.flush())
        if after_step is not None and after_step():
            return True
    if on_log is not None and meter.steps:
        on_log(*meter.flush())
    return False


@dataclass
class ValSums:
    """Validation of one model: per-term sums weighted by batch size, and the image count."""

    sums: dict[str, float] = field(default_factory=dict)
    images: int = 0

    def mean(self, term: str = "loss") -> float:
        return self.sums.get(term, float("nan")) / self.images if self.images else float("nan")


@torch.no_grad()
def validate(
    objectives: Mapping[str, Objective],
    batches: Iterable[Any],
    contexts: Mapping[str, StepContext],
    *,
    to_device: Callable[[Tensor], Tensor] = lambda x: x,
    guard: GuardFn | None = None,
) -> dict[str, ValSums]:
    """Validation losses of every model over ``batches`` (eval mode, no gradients).

    Each model's ``val_loss`` is called on every batch with its context (autocast, generator);
    the models are put back in train mode afterwards. Sums are this process's share: under DDP the
    caller all-reduces them.

    Returns:
        model name → :class:`ValSums` (``mean("loss")`` is the validation loss).
    """
    out = {name: ValSums() for name in objectives}
    for obj in objectives.values():
        obj.model.eval()
    try:
        for batch in batches:
            x = to_device(images_of(batch))
            b = int(x.shape[0])
            for name, obj in objectives.items():
                with guard(name, x) if guard is not None else nullcontext():
                    terms = obj.val_loss(x, contexts[name])
                acc = out[name]
                for k, v in terms.items():
                    acc.sums[k] = acc.sums.get(k, 0.0) + float(v) * b
                acc.images += b
    finally:
        for obj in objectives.values():
            obj.model.train()
    return out



def validate_stages(
    objectives: Mapping[str, Objective],
    stages: Mapping[str, Iterable[Any]],
    contexts: Mapping[str, StepContext],
    *,
    to_device: Callable[[Tensor], Tensor] = lambda x: x,
    guard_for: Callable[[str], GuardFn | None] = lambda stage: None,
    all_reduce: Callable[[list[float]], list[float]] = list,
) -> dict[str, dict[str, ValSums]]:
    """:func:`validate` on each stage's batches (``stages``: stage → batches, in order), summed
    over ranks by one ``all_reduce`` of every sum and image count (e.g.
    :func:`~imgae_dx.training.distributed.all_reduce_sum`; default: this rank alone).

    Returns:
        model name → stage → :class:`ValSums`.
    """
    per = {s: validate(objectives, b, contexts, to_device=to_device, guard=guard_for(s))
           for s, b in stages.items()}
    out = {n: {s: per[s][n] for s in per} for n in objectives}
    keys = [(n, s, k) for n in out for s in out[n] for k in sorted(out[n][s].sums)]
    cells = [(n, s) for n in out for s in out[n]]
    totals = all_reduce([out[n][s].sums[k] for n, s, k in keys] + [float(out[n][s].images) for n, s in cells])
    for (n, s, k), v in zip(keys, totals[: len(keys)], strict=True):
        out[n][s].sums[k] = v
    for (n, s), v in zip(cells, totals[len(keys):], strict=True):
        out[n][s].images = int(v)
    return out
