"""``imgae-dx export --run RUN_DIR --out BUNDLE_DIR [--model-name M] [--onnx]``: safetensors +
JSON config + calibration + model card per model (+ ONNX); see :mod:`imgae_dx.inference.bundle`."""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    from imgae_dx.inference.bundle import export_run

    written = export_run(args.run, args.out, onnx=args.onnx, model_name=args.model_name, notify=print,
                         progress=sys.stderr.isatty())
    print(f"bundle: {args.out} ({', '.join(written)}); use it with "
          f"`imgae-dx predict FILES --model {args.out}` or imgae_dx.load({str(args.out)!r})")
    return 0
