"""``imgae-dx report RUN_DIR [--eval NAME]``: write RUN_DIR/report.html and RUN_DIR/plots/*.png
(``report-NAME.html`` and ``plots-NAME/`` for a re-scored evaluation ``eval-NAME``). On a folder of
``seed-S`` runs (``imgae-dx demo --seeds``): the report over the seeds (mean ± sd)."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    """Build the self-contained HTML report from what the run folder holds; print its path."""
    from pathlib import Path

    from imgae_dx.visualization.report import write_report
    from imgae_dx.visualization.seeds import seed_runs, write_seeds_report

    root = Path(args.run_dir)
    if not (root / "config.yaml").is_file() and seed_runs(root):  # a folder of seed-S runs
        path = write_seeds_report(root)
    else:
        path = write_report(args.run_dir, getattr(args, "eval", None))
    print(f"report: {path}")
    return 0
