"""Checkpoint selection: ``best.pt`` is chosen on one fixed set of images.

Validation images are normal images of held-out (patient-disjoint) validation patients; each stage
brings its own. Comparing stage 1's loss on stage 1's images with stage 3's loss on stage 3's
images would rank checkpoints on different images, so every comparison here is made on the same
set: the **selection set** after stage K is the union of the validation splits of stages 1…K
(:class:`ValidationPool`). When the set grows (a new stage), the current ``best.pt`` is re-scored
on the grown set before any candidate is compared with it (:class:`Selector`). Within a stage the
set is fixed, so a candidate's loss and the best's loss are always measured on the same images.

``best.pt`` therefore means: of the checkpoints written at the end of each epoch, the one with the
lowest validation loss on the validation images of every stage seen so far.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from imgae_dx.data.decode import to_uint8, to_unit
from imgae_dx.run.checkpoint import Selection


class ValidationPool:
    """The validation images of every stage streamed so far (uint8, in stream order).

    Held in RAM: 16 KB per image at 128². The validation split of all 12 NIH stages in the PA
    cohort is about 3,200 images (≈ 53 MB); ``training.val_max_images`` caps each stage.

    Args:
        batch_size: images per validation batch (the last batch of a stage may be smaller).
    """

    def __init__(self, batch_size: int) -> None:
        self.batch_size = int(batch_size)
        self._images: dict[str, np.ndarray] = {}

    @property
    def stages(self) -> list[str]:
        """Stages held, in the order they were added."""
        return list(self._images)

    def __contains__(self, stage: str) -> bool:
        return stage in self._images

    def add(self, stage: str, images: np.ndarray) -> None:
        """Keep ``images`` (N×H×W uint8) as ``stage``'s validation images."""
        if images.dtype != np.uint8 or images.ndim != 3:
            raise ValueError(f"validation images must be N×H×W uint8, got {images.dtype} {images.shape}")
        self._images[stage] = images

    def count(self, stage: str) -> int:
        return int(self._images[stage].shape[0])

    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self._images.values()))

    def batches(self, stage: str) -> Iterator[Tensor]:
        """``stage``'s images as float batches B×1×H×W in [0, 1], always the same partition."""
        imgs = self._images[stage]
        for i in range(0, imgs.shape[0], self.batch_size):
            yield torch.from_numpy(to_unit(imgs[i : i + self.batch_size, None]))

    def images(self) -> np.ndarray:
        """All held images, stage after stage (N×H×W uint8)."""
        parts = [a for a in self._images.values() if len(a)]  # a stage may have no val images
        return np.concatenate(parts) if parts else np.zeros((0, 0, 0), np.uint8)


def collect(batches: Iterable[Tensor], max_images: int | None = None) -> np.ndarray:
    """Gather a validation stream's batches (B×1×H×W float, values v/255) back into uint8
    N×H×W, exactly; stops after the batch that reaches ``max_images``."""
    parts: list[np.ndarray] = []
    n = 0
    for x in batches:
        parts.append(to_uint8(x.numpy()[:, 0]))
        n += parts[-1].shape[0]
        if max_images is not None and n >= max_images:
            break
    if not parts:
        return np.zeros((0, 1, 1), np.uint8)
    return np.concatenate(parts)


class Selector:
    """The ``best.pt`` rule for each model (see the module docstring).

    ``state[name]`` is the model's :class:`Selection` (saved in every checkpoint, restored on
    resume): ``best_loss`` measured on the selection set of ``set_stages`` stages, and
    ``bad_epochs``, the epoch ends of the current stage since any model last improved (early
    stopping; the same count in every model's state).
    """

    def __init__(self, names: Iterable[str]) -> None:
        self.state: dict[str, Selection] = {n: Selection() for n in names}
        self._bad_epochs = 0

    @property
    def bad_epochs(self) -> int:
        """Epoch ends of the current stage since any model last improved."""
        return self._bad_epochs

    def _count(self, bad_epochs: int) -> None:
        self._bad_epochs = bad_epochs
        for name, sel in self.state.items():
            self.state[name] = replace(sel, bad_epochs=bad_epochs)

    def needs_rescore(self, name: str, set_stages: int) -> bool:
        """True when ``best.pt`` exists but was measured on a smaller set than ``set_stages``."""
        s = self.state[name]
        return s.best_loss is not None and s.set_stages < set_stages

    def rescored(self, name: str, loss: float, set_stages: int) -> None:
        """Record ``best.pt``'s loss on the grown selection set."""
        self.state[name] = replace(self.state[name], best_loss=float(loss), set_stages=set_stages)

    def offer(self, name: str, loss: float, set_stages: int, step: int) -> bool:
        """A candidate's loss on the selection set; True when it becomes the new ``best.pt``."""
        s = self.state[name]
        if s.best_loss is not None and s.set_stages != set_stages:
            raise RuntimeError(f"{name}: best.pt was measured on {s.set_stages} stage(s), the "
                               f"candidate on {set_stages}; re-score it first")
        if s.best_loss is None or loss < s.best_loss:
            self.state[name] = replace(s, best_loss=float(loss), set_stages=set_stages, best_step=step)
            return True
        return False

    def select(self, set_stages: int, step: int, candidates: dict[str, float],
               best_on_set: Callable[[str], float]) -> list[str]:
        """One epoch end: re-score ``best.pt`` where the selection set grew (``best_on_set(name)``
        is its loss on the current set), then offer each candidate's loss on that set; counts
        the epoch in ``bad_epochs`` when no model improved (resets it when one did).

        Returns:
            The models whose candidate became the new ``best.pt`` (NaN losses — an empty
            selection set — are never offered).
        """
        for name in candidates:
            if self.needs_rescore(name, set_stages):
                self.rescored(name, best_on_set(name), set_stages)
        improved = [n for n, loss in candidates.items()
                    if not math.isnan(loss) and self.offer(n, loss, set_stages, step)]
        self._count(0 if improved else self._bad_epochs + 1)
        return improved

    def new_stage(self) -> None:
        """A stage starts: early stopping counts its epochs afresh."""
        self._count(0)

    def should_stop(self, patience: int | None) -> bool:
        """True when no model has improved for ``patience`` epochs of this stage (None: never)."""
        return patience is not None and self.bad_epochs >= patience

    def load(self, selections: Mapping[str, Selection]) -> None:
        """Restore every model's saved :class:`Selection` (the early-stopping count: the first's)."""
        for name, sel in selections.items():
            self.state[name] = replace(sel)
        self._count(next(iter(selections.values())).bad_epochs)

    def best_losses(self) -> dict[str, float | None]:
        return {n: s.best_loss for n, s in self.state.items()}
