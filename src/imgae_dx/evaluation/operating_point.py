"""The operating point: test-split sensitivity and specificity at the calibrated threshold.

``predict`` flags an image when its score exceeds the threshold that keeps a target share
(``--specificity``, 95 % by default) of the *validation* normals' scores below it
(:mod:`imgae_dx.run.calibration`). The evaluator reports, next to that target, what the threshold
does on the held-out test split (with Wilson 95 % intervals), so a user sees whether it holds.
Nothing here is tuned on the test split.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from imgae_dx.evaluation.results import NO_INTERVAL, Interval, OperatingPoint


def _wilson(k: int, n: int, z: float = 1.959964) -> Interval:
    """Wilson 95 % interval of a proportion k/n ((None, None) when n = 0)."""
    if n == 0:
        return NO_INTERVAL
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def operating_point(labels: np.ndarray, scores: np.ndarray, calibration: Any,
                    specificity: float) -> OperatingPoint:
    """Test-split sensitivity/specificity at the threshold a calibration gives for ``specificity``.

    Pure: ``labels`` (N, 1 = abnormal) and ``scores`` (N) are ``eval/scores.csv``'s columns; the
    threshold comes from the validation normals only (:class:`imgae_dx.run.calibration.Calibration`),
    so it is an honest operating point. Flagged = score > threshold.
    """
    thr = calibration.threshold(specificity)
    flagged = np.asarray(scores, dtype=np.float64) > thr
    y = np.asarray(labels)
    neg, pos = int((y == 0).sum()), int((y == 1).sum())
    tn, tp = int((~flagged[y == 0]).sum()), int(flagged[y == 1].sum())
    return OperatingPoint(
        target_specificity=specificity, threshold=float(thr), calibration_images=calibration.n,
        calibration_checkpoint=calibration.source.checkpoint,
        specificity=tn / neg if neg else None, specificity_ci=_wilson(tn, neg),
        sensitivity=tp / pos if pos else None, sensitivity_ci=_wilson(tp, pos),
        n_normal=neg, n_abnormal=pos, flagged=int(flagged.sum()),
    )


def run_operating_point(run_dir: Path, name: str, labels: np.ndarray, scores: np.ndarray,
                        step: int | None, scoring: Mapping[str, Any] | None = None) -> OperatingPoint:
    """:func:`operating_point` at ``predict``'s default target (95 %) with the run's
    ``checkpoints/NAME/calibration.json``; when that is missing, belongs to another step than the
    evaluated checkpoint, or to another scoring than ``scoring`` (a re-scored evaluation), says so
    instead."""
    from imgae_dx.run.calibration import DEFAULT_SPECIFICITY as spec
    from imgae_dx.run.calibration import (
        Calibration,
        CalibrationError,
        calibration_path,
        same_scoring,
    )

    path = calibration_path(run_dir, name)
    try:
        cal = Calibration.load(path)
    except CalibrationError as e:
        return OperatingPoint(target_specificity=spec, threshold=None,
                              note=f"no usable calibration ({e}); `imgae-dx predict --run` or `export` computes it")
    if step is not None and cal.source.step != int(step):
        return OperatingPoint(target_specificity=spec, threshold=None,
                              note=f"{path.name} is for step {cal.source.step}, the evaluated checkpoint is step {step}")
    if scoring is not None and not same_scoring(scoring, cal.anomaly):
        return OperatingPoint(target_specificity=spec, threshold=None,
                              note=f"{path.name} holds scores of another anomaly map/score than this evaluation's")
    return operating_point(labels, scores, cal, spec)
