"""Evaluation of a trained run on the held-out test patients.

* :mod:`.evaluator` — :class:`CloudEvaluator` / :func:`evaluate_run`: streams the test split through
  each model's selected checkpoint and writes ``RUN_DIR/eval/``;
* :mod:`.results` — the files of ``RUN_DIR/eval/`` (formats, typed readers);
* :mod:`.metrics` — pure detection metrics (AUROC, AUPRC, bootstrap, DeLong);
* :mod:`.localisation` — anomaly maps against the ground-truth boxes;
* :mod:`.summary` — ``eval/metrics.json`` from the scores.

Nothing here selects anything on the test split.
"""
