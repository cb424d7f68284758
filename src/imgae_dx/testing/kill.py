"""Kill a ``imgae-dx train`` subprocess at a chosen point of its run: the crash that the SIGKILL
resume test and ``benchmarks/restart_bench.py`` rehearse.

The point is read from the run folder, as a crashed user would find it: the position stored in
``checkpoints/MODEL/last.pt`` (stage, epoch, batch, step).
"""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any


def last_position(run_dir: Path, model: str = "ae") -> dict[str, Any] | None:
    """``{"stage", "stage_index", "epoch", "batch", "step"}`` of the run's ``last.pt`` for
    ``model``; None while there is none (or it is being replaced)."""
    from imgae_dx.run.checkpoint import read_checkpoint

    p = Path(run_dir) / "checkpoints" / model / "last.pt"
    if not p.exists():
        return None
    try:
        ck = read_checkpoint(p, model_name=model)
    except Exception:  # replaced while reading: try again later
        return None
    return {"stage": ck.stage, **asdict(ck.position), "step": ck.step}


def sigkill_in_stage(proc: subprocess.Popen, run_dir: Path, stage: str, *, min_batch: int,
                     timeout: float, model: str = "ae", poll_s: float = 0.05) -> dict[str, Any] | None:
    """SIGKILL ``proc`` as soon as ``last.pt`` says it is in ``stage`` at batch ≥ ``min_batch``.

    Returns the position it was killed at, or None when the process ended or ``timeout`` seconds
    passed first (the process is then left as it is: the caller decides)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        pos = last_position(run_dir, model)
        if pos and pos["stage"] == stage and pos["batch"] >= min_batch:
            proc.send_signal(signal.SIGKILL)
            return pos
        time.sleep(poll_s)
    return None
