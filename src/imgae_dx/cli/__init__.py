"""The ``imgae-dx`` console script: one parser (the contract in DESIGN.md), lazy subcommands.

Each subcommand lives in ``imgae_dx/cli/<name>.py`` and exposes ``run(args) -> int``; it is
imported only when chosen, so ``imgae-dx --help`` stays fast and needs no torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from imgae_dx import __version__
from imgae_dx.errors import UserError

DEFAULT_SOURCE = "kaggle:nih-chest-xrays/data"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="imgae-dx",
        description="Unsupervised chest X-ray anomaly detection (U-Net DAE vs Reversed Autoencoder), "
        "streamed from Kaggle's NIH ChestX-ray14 archive by byte ranges.",
    )
    p.add_argument("--version", action="version", version=f"imgae-dx {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("sample-data", help="write a synthetic NIH-layout archive OUT_DIR/data.zip")
    s.add_argument("out_dir", metavar="OUT_DIR")
    s.add_argument("--images-per-stage", type=int, default=300)
    s.add_argument("--stages", type=int, default=3, help="number of images_NNN stages")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--variety", choices=["standard", "wide"], default="standard",
                   help="wide: far more varied bodies, poses, exposures, ECG leads and collimation "
                        "(a harder development archive; same patients and findings)")

    s = sub.add_parser("setup-kaggle", help="install and verify Kaggle credentials")
    s.add_argument("--api-key-path", default=None, help="kaggle.json or an access-token file")
    s.add_argument("--dataset", default="nih-chest-xrays/data")
    s.add_argument("--no-verify", action="store_true", help="install only; do not contact Kaggle")

    s = sub.add_parser("stream", help="run the data path alone (no training): counts, speed, memory")
    s.add_argument("--config", default=None)
    s.add_argument("--source", default=None, help=f"default {DEFAULT_SOURCE}")
    s.add_argument("--stages", default=None, help="all | images_001,images_002")
    s.add_argument("--split", choices=["train", "val", "test", "all"], default="all")
    s.add_argument("--image-size", type=int, default=None)
    s.add_argument("--limit", type=int, default=None, help="stop after N images")
    s.add_argument("--json", action="store_true", help="print one JSON object")

    s = sub.add_parser("train", help="progressive streaming training")
    s.add_argument("--config", default=None)
    s.add_argument("--source", default=None)
    s.add_argument("--stages", default=None)
    s.add_argument("--epochs-per-stage", type=int, default=None)
    s.add_argument("--model", choices=["unet", "ra", "ae", "pca", "all"], default=None,
                   help="all = unet, ra, ae and the pca baseline")
    s.add_argument("--image-size", type=int, default=None)
    s.add_argument("--batch-size", type=int, default=None)
    s.add_argument("--out", default=None, metavar="RUN_DIR")
    s.add_argument("--resume", action="store_true")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    s.add_argument("--logger", choices=["jsonl", "tensorboard", "wandb"], default=None)

    s = sub.add_parser("evaluate", help="score the test split with each trained model")
    s.add_argument("--run", required=True, metavar="RUN_DIR")
    s.add_argument("--source", default=None)
    s.add_argument("--stages", default=None)
    s.add_argument("--config", default=None, metavar="OVERLAY",
                   help="re-score without retraining: a YAML of model.*.anomaly.* / "
                        "model.<unet|ra>.inference_samples; results go to RUN_DIR/eval-NAME")
    s.add_argument("--name", default=None,
                   help="name of a re-scored evaluation (default: the overlay's file name)")

    s = sub.add_parser("report", help="write RUN_DIR/report.html and plots")
    s.add_argument("run_dir", metavar="RUN_DIR")
    s.add_argument("--eval", default=None, metavar="NAME",
                   help="the report of the re-scored evaluation RUN_DIR/eval-NAME")

    s = sub.add_parser("notebook", help="generate the research notebook")
    s.add_argument("--out", default=None, metavar="PATH")

    s = sub.add_parser("demo", help="the main job on the embedded sample dataset, offline")
    s.add_argument("--out", default=None, metavar="DIR")
    s.add_argument("--seeds", default=None, metavar="S,S,…",
                   help="train once per seed (OUT/seed-S, each with its report), then report the "
                        "test AUROC as mean ± sd over the seeds in OUT/report.html")

    s = sub.add_parser("predict", help="score your own PNG/JPEG/DICOM files with a trained model")
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders (recursive) and globs")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--run", metavar="RUN_DIR", help="a training run folder (imgae-dx train --out)")
    g.add_argument("--model", metavar="BUNDLE_DIR", help="a bundle written by imgae-dx export")
    s.add_argument("--out", default="predictions", metavar="DIR",
                   help="where predictions.csv, overlays/ and index.html go (default ./predictions)")
    s.add_argument("--model-name", choices=["unet", "ra", "ae", "pca", "all"], default="all")
    s.add_argument("--specificity", type=float, default=0.95,
                   help="target specificity of the flag: the share of validation normals below the "
                        "threshold (default 0.95)")

    s = sub.add_parser("fetch-weights", help="download (or copy --from DIR) and verify the LPIPS "
                       "weights of anomaly.saliency: lpips, for offline scoring")
    s.add_argument("--from", dest="source", default=None, metavar="DIR",
                   help="copy the two files from this folder instead of downloading them")
    s.add_argument("--force", action="store_true", help="fetch again even when present and valid")

    s = sub.add_parser("export", help="write a run's models as safetensors + JSON (+ ONNX) bundles")
    s.add_argument("--run", required=True, metavar="RUN_DIR")
    s.add_argument("--out", required=True, metavar="BUNDLE_DIR")
    s.add_argument("--onnx", action="store_true",
                   help="also write model.onnx, checked against PyTorch with onnxruntime")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(f"imgae_dx.cli.{args.command.replace('-', '_')}")
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UserError as e:  # user-facing errors carry their own clear message: no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
