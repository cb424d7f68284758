"""The ``imgae-dx`` console script: one parser (the contract in docs/design.md), lazy subcommands.

Each subcommand lives in ``imgae_dx/cli/<name>.py`` and exposes ``run(args) -> int``; it is
imported only when chosen, so ``imgae-dx --help`` stays fast and needs no torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from imgae_dx import __version__
from imgae_dx.data.datasets import DATASET_NAMES
from imgae_dx.errors import UserError

DEFAULT_SOURCE = "kaggle:nih-chest-xrays/data"
DATASET_HELP = ("the source's layout and protocol: nih, zhanglab (Kaggle paultimothymooney/"
                "chest-xray-pneumonia), rsna (Kaggle competition rsna-pneumonia-detection-challenge), "
                "folder (normal/ + abnormal/, or labels.csv); default: nih when the source holds "
                "NIH's metadata, else detected (docs/datasets.md)")
STAGES_HELP = "all | images_001,images_002 (nih) | part_001,part_002 (other datasets)"


TRAIN_EXAMPLES = """\
examples:
  imgae-dx train --stages images_001 --epochs-per-stage 5 --out runs/nih      # one stage from Kaggle
  imgae-dx train --stages all --model all --out runs/nih-all                   # every stage and model
  imgae-dx train --source data.zip --image-size 64 --batch-size 16 --device cpu --out runs/local
  imgae-dx train --out runs/nih --resume                      # continue where a run stopped
"""

EVALUATE_EXAMPLES = """\
examples:
  imgae-dx evaluate --run runs/nih                       # test split of the run's stages -> eval/
  imgae-dx evaluate --run runs/nih --stages images_001   # only the first stage's test patients
  imgae-dx evaluate --run runs/nih --config ra_authors_scoring.yaml   # re-score -> eval-NAME/
"""

PREDICT_EXAMPLES = """\
examples:
  imgae-dx predict scans/ extra/*.dcm --run runs/nih --out preds          # folders recurse
  imgae-dx predict 'scans/**/*.png' --model bundles/nih --model-name unet --specificity 0.99
  imgae-dx predict scans/ --run runs/nih --out preds --overwrite           # replace an earlier run

outputs: DIR/predictions.csv (path, model, score, percentile, flagged, error, warning),
DIR/overlays/*.png, DIR/index.html. Exit status 1 when some file could not be scored.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="imgae-dx",
        description="Unsupervised chest X-ray anomaly detection (U-Net DAE vs Reversed Autoencoder), "
        "streamed from Kaggle's NIH ChestX-ray14 archive by byte ranges.",
    )
    p.add_argument("--version", action="version", version=f"imgae-dx {__version__}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    examples = argparse.RawDescriptionHelpFormatter

    s = sub.add_parser("sample-data", help="write a synthetic archive OUT_DIR/data.zip in a "
                       "dataset's layout (NIH by default)")
    s.add_argument("out_dir", metavar="OUT_DIR", help="folder to write data.zip into (created)")
    s.add_argument("--dataset", choices=list(DATASET_NAMES), default="nih",
                   help="the layout to write: nih (images_NNN stages + metadata), zhanglab "
                        "(chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg with Kaggle's junk "
                        "and duplicate tree), rsna (stage_2_train_images/*.dcm JPEG-Baseline DICOMs + "
                        "the competition's CSVs and stray files), folder (normal/ + abnormal/FINDING/, "
                        "mixed PNG/JPEG)")
    s.add_argument("--images-per-stage", type=int, default=300,
                   help="nih: images in each images_NNN stage (default 300)")
    s.add_argument("--stages", type=int, default=3, help="nih: number of images_NNN stages (default 3)")
    s.add_argument("--images", type=int, default=400, help="zhanglab, rsna, folder: number of images")
    s.add_argument("--labels-csv", action="store_true",
                   help="folder: list the images in a root labels.csv (path,label,patient,view,split) "
                        "instead of normal/ and abnormal/ folders")
    s.add_argument("--seed", type=int, default=0, help="seed of the generated images and metadata")
    s.add_argument("--variety", choices=["standard", "wide"], default="standard",
                   help="wide: far more varied bodies, poses, exposures, ECG leads and collimation "
                        "(a harder development archive; same patients and findings)")

    s = sub.add_parser("setup-kaggle", help="install and verify Kaggle credentials")
    s.add_argument("--api-key-path", default=None,
                   help="kaggle.json or an access-token file to install (default: use the "
                        "credentials already found)")
    s.add_argument("--dataset", default="nih-chest-xrays/data", metavar="OWNER/SLUG",
                   help="the dataset to verify against (default nih-chest-xrays/data), or "
                        "kaggle-competition:SLUG to also check that the competition's rules are accepted")
    s.add_argument("--no-verify", action="store_true", help="install only; do not contact Kaggle")

    s = sub.add_parser("stream", help="run the data path alone (no training): counts, speed, memory")
    s.add_argument("--config", default=None, metavar="FILE",
                   help="a YAML configuration (as for train)")
    s.add_argument("--source", default=None, help=f"archive to read (default {DEFAULT_SOURCE})")
    s.add_argument("--dataset", choices=list(DATASET_NAMES), default=None, help=DATASET_HELP)
    s.add_argument("--stages", default=None, help=f"{STAGES_HELP} (default: all)")
    s.add_argument("--split", choices=["train", "val", "test", "all"], default="all",
                   help="which split(s) to stream (default all)")
    s.add_argument("--image-size", type=int, default=None, metavar="PX",
                   help="decode to PX × PX (default: data.image_size, 128)")
    s.add_argument("--limit", type=int, default=None, help="stop after N images")
    s.add_argument("--json", action="store_true", help="print one JSON object")

    s = sub.add_parser("train", help="progressive streaming training", epilog=TRAIN_EXAMPLES,
                       formatter_class=examples)
    s.add_argument("--config", default=None, metavar="FILE",
                   help="a YAML configuration over the packaged defaults (flags win over it)")
    s.add_argument("--source", default=None,
                   help="kaggle:OWNER/SLUG, kaggle-competition:SLUG, an https:// URL, a .zip or a "
                        f"folder (default {DEFAULT_SOURCE})")
    s.add_argument("--dataset", choices=list(DATASET_NAMES), default=None, help=DATASET_HELP)
    s.add_argument("--stages", default=None,
                   help=f"{STAGES_HELP}: the stages trained one after the other (default all)")
    s.add_argument("--epochs-per-stage", type=int, default=None, metavar="N",
                   help="epochs over each stage before the next (default 5)")
    s.add_argument("--model", choices=["unet", "ra", "ae", "pca", "all"], default=None,
                   help="one model, or all = unet, ra, ae and the pca baseline (default: unet, ra, pca)")
    s.add_argument("--image-size", type=int, default=None, metavar="PX",
                   help="model resolution, square (default 128)")
    s.add_argument("--batch-size", type=int, default=None, metavar="B",
                   help="images per step (default 32)")
    s.add_argument("--out", default=None, metavar="RUN_DIR",
                   help="the run folder: config, checkpoints, metrics, plots (default runs/latest)")
    s.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint, with its config.yaml")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                   help="where to train (default auto: CUDA when present)")
    s.add_argument("--logger", choices=["jsonl", "tensorboard", "wandb"], default=None,
                   help="where step metrics go besides metrics.jsonl (default jsonl only)")

    s = sub.add_parser("evaluate", help="score the test split with each trained model",
                       epilog=EVALUATE_EXAMPLES, formatter_class=examples)
    s.add_argument("--run", required=True, metavar="RUN_DIR", help="the run folder of imgae-dx train")
    s.add_argument("--source", default=None, help="archive to stream the test split from "
                                                  "(default: the run's source)")
    s.add_argument("--dataset", choices=list(DATASET_NAMES), default=None,
                   help="the run's dataset (default: the one its config.yaml names); another is refused")
    s.add_argument("--stages", default=None, help=f"{STAGES_HELP} (default: the run's stages)")
    s.add_argument("--config", default=None, metavar="OVERLAY",
                   help="re-score without retraining: a YAML of model.*.anomaly.* / "
                        "model.<unet|ra>.inference_samples; results go to RUN_DIR/eval-NAME")
    s.add_argument("--name", default=None,
                   help="name of a re-scored evaluation (default: the overlay's file name)")

    s = sub.add_parser("report", help="write RUN_DIR/report.html and plots")
    s.add_argument("run_dir", metavar="RUN_DIR", help="the run folder of imgae-dx train")
    s.add_argument("--eval", default=None, metavar="NAME",
                   help="the report of the re-scored evaluation RUN_DIR/eval-NAME")

    s = sub.add_parser("notebook", help="generate the research notebook")
    s.add_argument("--out", default=None, metavar="PATH",
                   help="where to write the .ipynb (default notebooks/generated/streaming_research.ipynb)")

    s = sub.add_parser("demo", help="the main job on the embedded sample dataset, offline")
    s.add_argument("--out", default=None, metavar="DIR", help="the demo's folder (default runs/demo)")
    s.add_argument("--seeds", default=None, metavar="S,S,…",
                   help="train once per seed (OUT/seed-S, each with its report), then report the "
                        "test AUROC as mean ± sd over the seeds in OUT/report.html")

    s = sub.add_parser("predict", help="score your own PNG/JPEG/DICOM files with a trained model",
                       epilog=PREDICT_EXAMPLES, formatter_class=examples)
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders (recursive) and globs")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--run", metavar="RUN_DIR", help="a training run folder (imgae-dx train --out)")
    g.add_argument("--model", metavar="BUNDLE_DIR", help="a bundle written by imgae-dx export")
    s.add_argument("--out", default="predictions", metavar="DIR",
                   help="where predictions.csv, overlays/ and index.html go (default ./predictions)")
    s.add_argument("--overwrite", action="store_true",
                   help="replace the predictions.csv and index.html of an earlier predict in --out")
    s.add_argument("--model-name", choices=["unet", "ra", "ae", "pca", "all"], default="all",
                   help="score with this model of the run or bundle only (default all)")
    s.add_argument("--specificity", type=float, default=0.95,
                   help="target specificity of the flag: the share of validation normals below the "
                        "threshold (default 0.95)")

    s = sub.add_parser("fetch-weights", help="download (or copy --from DIR) and verify the LPIPS "
                       "weights of anomaly.saliency: lpips, for offline scoring")
    s.add_argument("--from", dest="source", default=None, metavar="DIR",
                   help="copy the two files from this folder instead of downloading them")
    s.add_argument("--force", action="store_true", help="fetch again even when present and valid")

    s = sub.add_parser("export", help="write a run's models as safetensors + JSON (+ ONNX) bundles")
    s.add_argument("--run", required=True, metavar="RUN_DIR", help="the run folder of imgae-dx train")
    s.add_argument("--out", required=True, metavar="BUNDLE_DIR",
                   help="the bundle folder: new, empty, or an earlier bundle (its models replaced)")
    s.add_argument("--model-name", choices=["unet", "ra", "ae", "pca", "all"], default="all",
                   help="export this model of the run only (default all, the pca baseline included)")
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
