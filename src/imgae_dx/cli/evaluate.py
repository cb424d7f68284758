"""``imgae-dx evaluate --run RUN_DIR [--source SRC] [--stages …] [--config OVERLAY [--name NAME]]``:
test metrics, then the report. With ``--config``, the trained checkpoints are re-scored with the
overlay's anomaly settings (no retraining) into ``RUN_DIR/eval-NAME`` and ``report-NAME.html``."""

from __future__ import annotations

import argparse
import sys

from imgae_dx.evaluation.results import Evaluation
from imgae_dx.visualization.plots import fmt_num, fmt_p


def summary_lines(metrics: Evaluation) -> list[str]:
    """The evaluation as a few printable lines: per-model table and the paired comparison."""
    c = metrics.counts
    lines = [
        f"dataset: {metrics.dataset} — protocol: {metrics.protocol or '?'}",
        f"test split: {c.images or 0} images ({c.normal or 0} normal, {c.abnormal or 0} "
        f"abnormal) of {c.patients or 0} patients, view {metrics.view or '?'}, "
        f"stages {','.join(metrics.stages)}",
        f"{'model':<6} {'AUROC [95% CI]':<24} {'AUPRC [95% CI]':<24} {'FPR@95TPR':>9} {'Sens@90Spec':>11}",
    ]
    for name, m in metrics.models.items():
        a, p = m.auroc_ci, m.auprc_ci
        lines.append(
            f"{name:<6} {fmt_num(m.auroc) + ' [' + fmt_num(a[0]) + ', ' + fmt_num(a[1]) + ']':<24} "
            f"{fmt_num(m.auprc) + ' [' + fmt_num(p[0]) + ', ' + fmt_num(p[1]) + ']':<24} "
            f"{fmt_num(m.fpr_at_95_tpr):>9} {fmt_num(m.sensitivity_at_90_specificity):>11}"
        )
    comp = metrics.comparison
    if comp:
        ci = comp.diff_ci
        lines.append(
            f"{comp.a} vs {comp.b}: ΔAUROC {fmt_num(comp.diff)} "
            f"[95% CI {fmt_num(ci[0])}, {fmt_num(ci[1])}], "
            f"DeLong p = {fmt_p(comp.delong_p)}, "
            f"paired patient-bootstrap p = {fmt_num(comp.bootstrap_p)}"
        )
    return lines


def run(args: argparse.Namespace) -> int:
    """Evaluate RUN_DIR's models on the test split, write eval/ and report.html, print a summary."""
    import logging
    from pathlib import Path

    from imgae_dx.evaluation.evaluator import evaluate_run
    from imgae_dx.evaluation.scoring import describe, read_overlay
    from imgae_dx.visualization.report import write_report

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overlay = name = None
    if getattr(args, "config", None):
        overlay = read_overlay(args.config)
        name = args.name or Path(args.config).stem
    elif getattr(args, "name", None):
        print("error: --name names a re-scored evaluation; give its --config OVERLAY too", file=sys.stderr)
        return 2
    metrics = evaluate_run(args.run, source=args.source, stages=args.stages, scoring=overlay, name=name,
                           dataset=getattr(args, "dataset", None))
    for line in summary_lines(metrics):
        print(line)
    for model, sc in metrics.scoring.items():
        print(f"scoring {model}: {describe(sc)}")
    report = write_report(args.run, name)
    print(f"metrics: {Path(args.run) / (f'eval-{name}' if name else 'eval') / 'metrics.json'}")
    print(f"report:  {report}")
    return 0
