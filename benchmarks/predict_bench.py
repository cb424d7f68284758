"""``imgae-dx predict`` throughput against the PNG decode ceiling, measured in the same run.

Usage::

    python benchmarks/predict_bench.py --images 1000 --image-px 1024 --workdir /tmp/predict_bench

1. Renders ``--images`` radiograph-like PNGs at ``--image-px``² with the sample generator (kept in
   ``--workdir`` for the next run) and builds a run folder with the demo's models
   (``configs/demo.yaml``: 64 px, narrow widths; untrained weights: speed does not depend on them)
   and a calibration.
2. Alternates, ``--repeats`` times: the **decode ceiling** — read + :func:`decode_png` (decode,
   gray, area resize) of every file in a pool of ``--workers`` threads, nothing else —, decode +
   scoring alone (:meth:`Predictor.predict` without keeping maps), and the **predict** job (:func:`imgae_dx.inference.job.predict_to_folder`: the same decode, the three
   models, overlays, CSV, gallery).
3. Prints one JSON object: images/s of both (each repeat and the median) and their ratio.

The acceptance target is ``ratio >= 0.8`` with the demo models on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from imgae_dx import __version__
from imgae_dx.config import load_config, packaged_config_path
from imgae_dx.data.decode import decode_png
from imgae_dx.inference.job import predict_to_folder
from imgae_dx.inference.loading import load_run_models
from imgae_dx.inference.onnx_export import check_images
from imgae_dx.inference.predictor import Predictor
from imgae_dx.models import create_model, fit_principal_components
from imgae_dx.run.calibration import calibrate, calibration_path
from imgae_dx.run.checkpoint import CheckpointPayload


def sample_pngs(workdir: Path, n: int, px: int) -> list[Path]:
    """n PNGs of px² rendered by the sample generator, cached in workdir."""
    from imgae_dx.testing.sample import write_sample_archive

    folder = workdir / f"pngs_{n}x{px}"
    files = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if len(files) >= n:
        return files[:n]
    stages = max(1, -(-n // 2000))
    archive = write_sample_archive(workdir / f"archive_{n}x{px}", images_per_stage=-(-n // stages),
                                   stages=stages, seed=0, image_px=px, progress=False)
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as z:
        names = sorted(m for m in z.namelist() if m.endswith(".png"))[:n]
        for m in names:
            (folder / m.rsplit("/", 1)[-1]).write_bytes(z.read(m))
    shutil.rmtree(archive.parent)
    return sorted(folder.glob("*.png"))[:n]


def demo_run_folder(root: Path, tiny: bool) -> Path:
    """A run folder with the demo's models (deep ones untrained and seeded; the PCA baseline fitted
    on check images) and their calibrations."""
    over = {"out": str(root), "training.device": "cpu"}
    if tiny:
        over.update({"model.unet.base_channels": 8, "model.unet.depth": 3,
                     "model.ra.channels": [8, 8, 16, 16, 16], "model.ra.zdim": 8,
                     "model.ae.channels": [8, 8, 16, 16]})
    cfg = load_config(packaged_config_path("demo.yaml"), over)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(cfg.to_yaml())
    size = cfg.data.image_size
    for i, name in enumerate(cfg.models):
        torch.manual_seed(i)
        model = create_model(name, size, cfg=getattr(cfg.model, name)).eval()
        if name == "pca":
            imgs = torch.from_numpy(check_images(size, n=64)).flatten(1)
            fit_principal_components(model, imgs[:48], imgs[48:])
        folder = root / "checkpoints" / name
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(CheckpointPayload(model_name=name, model=model.state_dict(), config_yaml=cfg.to_yaml(),
                                     fingerprint="bench", image_size=size, package_version=__version__,
                                     step=1).to_dict(), folder / "best.pt")
        x = torch.from_numpy(check_images(size, n=32))
        calibrate(model, x.split(16), source={"checkpoint": f"checkpoints/{name}/best.pt", "step": 1}
                  ).save(calibration_path(root, name))
    return root


def decode_ceiling(files: list[Path], size: int, workers: int) -> float:
    """images/s of read + decode_png over ``files`` in a pool of ``workers`` threads."""
    def one(p: Path) -> int:
        return int(decode_png(p.read_bytes(), size)[0, 0])

    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(one, files, chunksize=8):
            pass
    return len(files) / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--image-px", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--tiny", action="store_true", help="narrower models than the demo's (CI smoke)")
    ap.add_argument("--model-name", default="all", help="unet | ra | ae | all")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/imgae_predict_bench"))
    a = ap.parse_args(argv)
    a.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    files = sample_pngs(a.workdir, a.images, a.image_px)
    prep_s = time.perf_counter() - t0
    run = demo_run_folder(a.workdir / "run", a.tiny)
    models = load_run_models(run, a.model_name)
    predictor = Predictor(models, batch_size=a.batch_size, workers=a.workers)
    size = models[0].image_size
    decode_png(files[0].read_bytes(), size)  # warm-up: libpng, thread pool, model
    predictor.predict(files[:2])
    ceiling, predict, scoring = [], [], []
    for _ in range(a.repeats):
        ceiling.append(decode_ceiling(files, size, a.workers))
        t = time.perf_counter()
        predictor.predict(files, keep=False)  # decode + models only: no overlay, CSV or gallery
        scoring.append(len(files) / (time.perf_counter() - t))
        out = a.workdir / "out"
        t = time.perf_counter()
        s = predict_to_folder([str(f) for f in files], predictor, out, progress=False, err=sys.stderr,
                              overwrite=True)
        predict.append(len(files) / (time.perf_counter() - t))
        assert s.failed == 0 and s.files == len(files), s
    c, p = statistics.median(ceiling), statistics.median(predict)
    print(json.dumps({
        "images": len(files), "image_px": a.image_px, "model_px": size, "models": predictor.names,
        "tiny": a.tiny, "workers": a.workers, "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "batch_size": a.batch_size, "prepare_s": round(prep_s, 1),
        "decode_ceiling_images_per_s": [round(v, 1) for v in ceiling],
        "decode_and_score_images_per_s": [round(v, 1) for v in scoring],
        "predict_images_per_s": [round(v, 1) for v in predict],
        "decode_ceiling_median": round(c, 1), "predict_median": round(p, 1),
        "decode_and_score_median": round(statistics.median(scoring), 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "ratio": round(p / c, 3), "target_ratio": 0.8, "meets_target": p / c >= 0.8,
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
