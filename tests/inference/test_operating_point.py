"""The operating point in eval/metrics.json and report.html: the calibrated threshold's test
sensitivity and specificity next to the target."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from imgae_dx.evaluation.evaluator import CloudEvaluator, PassFacts
from imgae_dx.evaluation.operating_point import operating_point, run_operating_point
from imgae_dx.evaluation.score_files import SCORE_FIELDS
from imgae_dx.run.calibration import Calibration, CalibrationSource, calibration_path
from imgae_dx.run.checkpoint import CheckpointSummary
from imgae_dx.visualization.report import write_report

from .conftest import make_run_folder


def _cal(scores, step=120) -> Calibration:
    return Calibration(model="ae", scores=np.asarray(scores, float), map_vmax=1.0, anomaly={},
                       image_size=64, source=CalibrationSource("checkpoints/ae/best.pt", step))


def test_operating_point_counts_the_test_split_at_the_validation_threshold():
    cal = _cal(np.arange(1, 21) / 20.0)  # threshold at 0.95 specificity = 0.95
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.5, 0.96, 0.2, 0.99, 0.3, 1.5, 0.951])
    op = operating_point(labels, scores, cal, 0.95)
    assert op.threshold == pytest.approx(0.95)
    assert op.specificity == 0.75 and op.sensitivity == 0.75
    assert op.n_normal == 4 and op.n_abnormal == 4 and op.flagged == 4
    lo, hi = op.sensitivity_ci
    assert 0 < lo < 0.75 < hi < 1
    assert op.calibration_images == 20


def test_evaluator_writes_it_and_the_report_shows_it(tmp_path):
    run = make_run_folder(tmp_path / "run", models=("ae",))
    cal = Calibration.load(calibration_path(run, "ae"))
    rng = np.random.default_rng(0)
    labels = (rng.random(200) < 0.4).astype(int)
    scores = rng.normal(cal.threshold(0.95), 0.02, 200) + 0.02 * labels
    (run / "eval").mkdir()
    with (run / "eval" / "scores.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*SCORE_FIELDS, "ae"])
        for i in range(200):
            w.writerow([f"{i:08d}_000.png", f"p{i // 2}", "PA", "images_001",
                        "Mass" if labels[i] else "No Finding", labels[i], scores[i]])
    ev = CloudEvaluator(run, progress=False, device="cpu")
    ev.models = {"ae": None}
    ev.checkpoints = {"ae": CheckpointSummary(file="checkpoints/ae/best.pt", step=120, stage="images_002",
                                              val_loss=0.01)}
    ev.cfg.evaluation.bootstrap = 20
    ev.cfg.evaluation.examples = 0
    ev.compute_metrics(PassFacts(stages=["images_001"], archive="file:/x/data.zip", dataset="nih"))
    op = json.loads((run / "eval" / "metrics.json").read_text())["models"]["ae"]["operating_point"]
    want = operating_point(labels, scores, cal, 0.95)  # scores.csv keeps 9 significant digits
    for k in ("threshold", "specificity", "sensitivity", "n_normal", "n_abnormal", "target_specificity"):
        assert op[k] == pytest.approx(getattr(want, k), rel=1e-6), k
    doc = write_report(run).read_text()
    assert "<h2>Operating point</h2>" in doc and "95%" in doc
    assert f"{op['specificity']:.3f}" in doc and f"{op['sensitivity']:.3f}" in doc


def test_missing_or_stale_calibration_is_said_not_guessed(tmp_path):
    run = make_run_folder(tmp_path / "run", models=("ae",), calibrated=False)
    y, s = np.array([0, 1]), np.array([0.1, 0.2])
    assert run_operating_point(run, "ae", y, s, 120).threshold is None
    _cal([0.1, 0.2], step=7).save(calibration_path(run, "ae"))
    op = run_operating_point(run, "ae", y, s, 120)
    assert op.threshold is None and "step 7" in op.note
