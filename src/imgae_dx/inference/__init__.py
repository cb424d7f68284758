"""Using trained models on one's own X-rays: scoring, calibration, overlays, gallery, export.

Public API::

    import imgae_dx
    detector = imgae_dx.load("runs/nih")          # a run folder or an export bundle
    results = detector.predict(["scan1.dcm", "scan2.png"])
    for r in results:
        print(r.source, r.model, r.score, r.percentile, r.flagged)   # r.anomaly_map: H×W float32

Modules, one job each (the calibration file itself, a run-folder contract, is
:mod:`imgae_dx.run.calibration`; a run's models are loaded by :mod:`imgae_dx.run.loader`):
``run_calibration`` (calibrating a run's models from its validation split), ``images`` (files and
arrays → model input, the training preprocessing), ``inputs`` (INPUT arguments → files),
``loading`` (a run folder's or a bundle's models with their calibration), ``predictor`` (batched
scoring), ``overlay`` and ``gallery`` (the PNGs and ``index.html``), ``job`` (the ``predict``
command's outputs), ``bundle_format`` (the bundle's typed config, its files' readers and writers,
its checks), ``bundle``, ``model_card`` and ``onnx_export`` (``export``).
"""

from __future__ import annotations

from imgae_dx.inference.errors import BundleError, CalibrationError, ImageReadError
from imgae_dx.inference.predictor import PredictionResult, Predictor, load
from imgae_dx.run.calibration import (
    DEFAULT_SPECIFICITY,
    Calibration,
    CalibrationSource,
    calibrate,
    calibration_path,
)

__all__ = [
    "DEFAULT_SPECIFICITY", "Calibration", "CalibrationSource", "calibrate", "calibration_path",
    "BundleError", "CalibrationError", "ImageReadError", "PredictionResult", "Predictor", "load",
]
