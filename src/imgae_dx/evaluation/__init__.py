"""Evaluation of a trained run on the held-out test patients.

* :mod:`.evaluator` — :class:`CloudEvaluator` / :func:`evaluate_run`: streams the test split through
  each model's selected checkpoint and writes ``RUN_DIR/eval/``;
* :mod:`.results` — ``eval/metrics.json`` as typed results (:class:`~.results.Evaluation`), its
  writer and reader;
* :mod:`.score_files` — the per-image files of ``RUN_DIR/eval/`` (formats, typed readers);
* :mod:`.metrics` — pure detection metrics (AUROC, AUPRC, bootstrap, DeLong);
* :mod:`.localisation` — anomaly maps against the ground-truth boxes;
* :mod:`.summary` — the results from the scores; :mod:`.operating_point` — at the calibrated
  threshold.

Nothing here selects anything on the test split.
"""
