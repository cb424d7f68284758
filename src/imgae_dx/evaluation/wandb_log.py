"""The evaluation on the training run's W&B page (optional: ``logging.logger: wandb``).

One job: push an :class:`~imgae_dx.evaluation.results.Evaluation` (the comparison table, ROC and
precision-recall curves, each model's curve metrics, the paired test's p-values) to the W&B run the
training logged to. ``wandb`` is imported lazily; a failure is a warning, never an error — the
evaluation is already on disk.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from imgae_dx.evaluation.metrics import CURVE_METRICS, ROC_GRID
from imgae_dx.evaluation.results import Evaluation

log = logging.getLogger(__name__)


def log_evaluation(result: Evaluation, logging_cfg: Any, run_dir: Path, eval_dir: Path,
                   run_id: str | None) -> bool:
    """Log the comparison table and curves to the run's W&B run (if it used ``--logger wandb``).

    Returns:
        True if logged. A failure is a warning: the evaluation is already on disk.
    """
    if logging_cfg.logger != "wandb":
        return False
    try:
        import wandb
    except ImportError:
        log.warning("the run logged to W&B but wandb is not installed (pip install wandb); "
                    "evaluation results are in %s only", eval_dir)
        return False
    try:
        run = wandb.init(project=logging_cfg.wandb_project, entity=logging_cfg.wandb_entity,
                         id=run_id, resume="allow" if run_id else None, dir=str(run_dir),
                         job_type="evaluation", reinit=True)
        cols = ["stage", "model", "auroc", "auroc_lo", "auroc_hi", "auprc", "loss"]
        tab = wandb.Table(columns=cols)
        for row in result.table:
            m = result.models[row.model]
            tab.add_data(row.stage, row.model, m.auroc, m.auroc_ci[0], m.auroc_ci[1], m.auprc, row.loss)
        payload: dict[str, Any] = {"eval/comparison": tab}
        grid = ROC_GRID.tolist()
        curves = {n: m.curves for n, m in result.models.items() if m.curves is not None}
        if curves:
            payload["eval/roc"] = wandb.plot.line_series(
                xs=grid, ys=[c.roc_tpr for c in curves.values()],
                keys=list(curves), title="ROC (test)", xname="false positive rate")
            payload["eval/pr"] = wandb.plot.line_series(
                xs=grid, ys=[c.pr_precision for c in curves.values()],
                keys=list(curves), title="Precision-recall (test)", xname="recall")
        for n, m in result.models.items():
            for k in CURVE_METRICS:
                if m.value(k) is not None:
                    payload[f"eval/{n}/{k}"] = m.value(k)
        comp = result.comparison
        if comp:
            payload["eval/delong_p"] = comp.delong_p
            payload["eval/bootstrap_p"] = comp.bootstrap_p
        run.log(payload)
        for k, v in payload.items():
            if isinstance(v, (int, float)):
                run.summary[k] = v
        run.finish()
        return True
    except Exception as e:  # wandb raises its own types for auth / network problems
        log.warning("could not log the evaluation to W&B (%s: %s); results are in %s",
                    type(e).__name__, str(e)[:200], eval_dir)
        return False
