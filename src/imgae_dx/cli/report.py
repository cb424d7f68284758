"""``imgae-dx report RUN_DIR [--eval NAME]``: write RUN_DIR/report.html and RUN_DIR/plots/*.png
(``report-NAME.html`` and ``plots-NAME/`` for a re-scored evaluation ``eval-NAME``)."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    """Build the self-contained HTML report from what the run folder holds; print its path."""
    from imgae_dx.visualization.report import write_report

    path = write_report(args.run_dir, getattr(args, "eval", None))
    print(f"report: {path}")
    return 0
