"""``imgae-dx fetch-weights [--from DIR] [--force]``: the LPIPS-SqueezeNet weights of the RA
authors' saliency (``anomaly.saliency: lpips``) into their caches, SHA-256-verified.

Online, both files are downloaded from their official URLs; on a machine without network, copy the
two files (``squeezenet1_1-b8a52dc0.pth``, ``squeeze.pth``) from one that has them into a folder
and pass ``--from DIR``. The layout and digests: :mod:`imgae_dx.models.lpips_weights`.
"""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from imgae_dx.models import lpips_weights

    src = Path(args.source).expanduser() if args.source else None
    if src is not None and not src.is_dir():
        raise lpips_weights.LPIPSWeightsError(f"--from {src} is not a folder; give the folder holding "
                                              f"{lpips_weights.BACKBONE.name} and {lpips_weights.HEADS.name}")
    lpips_weights.fetch_all(src, force=args.force, notify=print)
    print("LPIPS weights ready: anomaly.saliency: lpips (configs/recipes/ra_authors_scoring.yaml) "
          "scores offline on this machine")
    return 0
