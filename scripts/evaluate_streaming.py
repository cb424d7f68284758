#!/usr/bin/env python
"""Evaluate a trained run on the test split (thin wrapper of ``imgae-dx evaluate``).

    python scripts/evaluate_streaming.py                       # the default run folder, runs/latest
    python scripts/evaluate_streaming.py --run runs/demo --stages images_001,images_002

Writes RUN_DIR/eval/metrics.json, eval/scores.csv and RUN_DIR/report.html.
"""

import sys

from imgae_dx.cli import main

DEFAULT_RUN = "runs/latest"  # Config.out's default


def translate(argv: list[str]) -> list[str]:
    """Add ``--run runs/latest`` when no run folder is given; accept ``--run-dir`` as ``--run``."""
    out = ["--run" if a == "--run-dir" else a for a in argv]
    out = [("--run=" + a.split("=", 1)[1]) if a.startswith("--run-dir=") else a for a in out]
    if not any(a == "--run" or a.startswith("--run=") for a in out):
        out = ["--run", DEFAULT_RUN, *out]
    return out


if __name__ == "__main__":
    sys.exit(main(["evaluate", *translate(sys.argv[1:])]))
