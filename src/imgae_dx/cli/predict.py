"""``imgae-dx predict INPUT... (--run RUN_DIR | --model BUNDLE_DIR) [--out DIR] [--overwrite]
[--model-name M] [--specificity S]``: score one's own X-rays (see :mod:`imgae_dx.inference.job`
for the outputs).

Exit status: 0 when every file was scored, 1 when some could not be (each on its row and on
stderr, plus a one-line summary), 2 for a user error that stops the command (no model, a damaged
bundle, bad ``--out``, an earlier run's outputs without ``--overwrite``, bad ``--specificity``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings


def run(args: argparse.Namespace) -> int:
    from imgae_dx.inference.job import display_path, predict_to_folder
    from imgae_dx.inference.predictor import load
    from imgae_dx.run.calibration import check_specificity

    # pydicom warns (and logs) about every irregular header it tolerates; the command reports each
    # file's outcome on its row, so these would only clutter stderr
    warnings.filterwarnings("ignore", module="pydicom")
    logging.getLogger("pydicom").setLevel(logging.ERROR)

    def note(msg: str) -> None:
        print(msg, file=sys.stderr)

    specificity = check_specificity(args.specificity)
    predictor = load(args.run or args.model, model_name=args.model_name, specificity=specificity,
                     notify=note, progress=sys.stderr.isatty())
    for m in predictor.models:
        if not m.calibration.enough_for(specificity):
            note(f"warning: {m.name} was calibrated on {m.calibration.n} normal images, too few to "
                 f"resolve a specificity of {specificity:g}: its threshold is the highest normal score")
    summary = predict_to_folder(args.inputs, predictor, args.out, progress=sys.stderr.isatty(),
                                overwrite=args.overwrite)
    for line in summary.lines(specificity):
        print(line)
    if summary.failed:
        note(f"{summary.failed} of {summary.files} files could not be scored (see the error column "
             f"of {display_path(str(summary.out / 'predictions.csv'))})")
        return 1
    return 0
