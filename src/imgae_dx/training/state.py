"""The training loop's state (:class:`TrainState`) and what a run returns (:class:`TrainResult`).

:class:`TrainState` is everything the loop advances besides the models and optimisers: counters,
where training continues, the stage being trained, when the last checkpoint was written, and what a
resume brought back. :class:`~imgae_dx.training.checkpointer.Checkpointer` writes it into every
checkpoint (:meth:`~imgae_dx.training.checkpointer.Checkpointer.save_training`) and rebuilds it
from the last one (:meth:`~imgae_dx.training.checkpointer.Checkpointer.resume`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgae_dx.run.checkpoint import Position
from imgae_dx.training.loop import Progress


@dataclass
class TrainState:
    """The loop's state on this rank.

    Attributes:
        progress: optimisation steps, images seen (all ranks), batches done in this epoch.
        position: where training continues (stage index, epoch, batch), as a checkpoint saves it.
        stage_index: the stage being trained (0-based); a checkpoint records it as ``stage``/``stage_k``.
        last_save_time: ``time.monotonic()`` of the last checkpoint (checkpoints by time).
        last_save_step: ``progress.step`` of the last checkpoint (checkpoints by steps).
        resumed_from_step: the step the run was resumed from (None: started afresh).
        resume_dataset: this rank's saved dataset position, for the first epoch after a resume.
        dataset: the dataset being iterated (its position goes into a checkpoint); None between epochs.
    """

    progress: Progress = field(default_factory=Progress)
    position: Position = field(default_factory=Position)
    stage_index: int = 0
    last_save_time: float = field(default_factory=time.monotonic)
    last_save_step: int = 0
    resumed_from_step: int | None = None
    resume_dataset: dict[str, Any] | None = None
    dataset: Any = None

    def mark_saved(self) -> None:
        """Record that a checkpoint of the current step was written now."""
        self.last_save_time, self.last_save_step = time.monotonic(), self.progress.step

    def start_epoch(self, stage_index: int, epoch: int) -> dict[str, Any] | None:
        """Enter ``epoch`` of stage ``stage_index``. The first epoch after a resume continues at
        the saved batch and gets the saved dataset position (returned once); any other starts at
        batch 0 (returns None)."""
        ds, self.resume_dataset = self.resume_dataset, None
        self.progress.batch = self.position.batch if ds is not None else 0
        self.position = Position(stage_index, epoch, self.progress.batch)
        return ds


@dataclass
class TrainResult:
    """What :meth:`~imgae_dx.training.streaming_trainer.StreamingTrainer.train_progressive_stages`
    returns."""

    run_dir: Path
    step: int
    stages: list[str]
    stages_done: list[str]
    best_val: dict[str, float | None]
    images_seen: int
    wall_s: float
    interrupted: bool = False
    signal: int | None = None
    resumed_from_step: int | None = None
    checkpoints: dict[str, Path] = field(default_factory=dict)

    def best_val_text(self) -> str:
        """``unet 0.00243, ra 0.00276`` (``-`` for a model never validated)."""
        return ", ".join(f"{m} {v:.5f}" if v is not None else f"{m} -" for m, v in self.best_val.items())

    @property
    def exit_code(self) -> int:
        """0 when finished; 128 + signal number when stopped by SIGINT/SIGTERM."""
        return 128 + int(self.signal) if self.interrupted and self.signal else 0
