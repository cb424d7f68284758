"""Run folders and images for the inference tests, built here (no training run, no download).

:func:`make_run_folder` is the one place that writes a run folder the way training leaves it:
``config.yaml`` (small widths), ``checkpoints/MODEL/best.pt`` (a :class:`CheckpointPayload` of a
seeded, untrained model; the PCA baseline fitted on seeded radiograph-like images) and, unless
asked not to, ``checkpoints/MODEL/calibration.json``. :data:`DEFAULT_MODELS` is what a run trains
when ``--model`` is not given. :func:`train_tiny_run` is a real (tiny) training run instead.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from imgae_dx import __version__
from imgae_dx.config import load_config
from imgae_dx.inference.onnx_export import check_images
from imgae_dx.models import create_model, fit_principal_components
from imgae_dx.run.calibration import calibrate, calibration_path
from imgae_dx.run.checkpoint import CheckpointPayload

DEFAULT_MODELS: tuple[str, ...] = tuple(load_config(None).models)  # unet, ra, pca
TINY: dict[str, Any] = {
    "model.unet.depth": 3, "model.unet.base_channels": 8, "model.unet.groups": 4,
    "model.ra.channels": [8, 8, 16, 16, 16], "model.ra.zdim": 8,
    "model.ae.channels": [8, 8, 16, 16], "model.pca.max_components": 8,
    "data.view": "all", "training.batch_size": 8, "training.device": "cpu",
    "logging.progress": False,
}


def make_run_folder(root: Path, *, models: Sequence[str] = ("unet", "ra", "ae"), image_size: int = 64,
                    source: str | Path = "/nonexistent/data.zip", calibrated: bool = True, seed: int = 0,
                    step: int = 120, overrides: dict[str, Any] | None = None) -> Path:
    """A run folder with seeded tiny models (see the module doc); returns its path."""
    cfg = load_config(None, {**TINY, "models": list(models), "data.image_size": image_size,
                             "source": str(source), "seed": seed, "out": str(root),
                             **(overrides or {})})
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(cfg.to_yaml())
    for i, name in enumerate(models):
        torch.manual_seed(seed * 10 + i)
        model = create_model(name, image_size, cfg=getattr(cfg.model, name)).eval()
        if name == "pca":
            fit_principal_components(model,
                                     torch.from_numpy(check_images(image_size, n=16, seed=200)).flatten(1),
                                     torch.from_numpy(check_images(image_size, n=8, seed=201)).flatten(1))
        payload = CheckpointPayload(
            model_name=name, model={k: v.detach().clone() for k, v in model.state_dict().items()},
            config_yaml=cfg.to_yaml(), fingerprint="test-fingerprint", image_size=image_size,
            package_version=__version__, step=step, images_seen=step * 8,
            stages=["images_001", "images_002"], stage="images_002", stage_k=2, val_loss=0.0123,
        )
        folder = root / "checkpoints" / name
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(payload.to_dict(), folder / "best.pt")
        if calibrated:
            imgs = torch.from_numpy(check_images(image_size, n=24, seed=100 + i))
            cal = calibrate(model, imgs.split(8), source={
                "checkpoint": f"checkpoints/{name}/best.pt", "step": step,
                "stages": ["images_001", "images_002"], "view": cfg.data.view})
            cal.save(calibration_path(root, name))
    return root


def extract_pngs(archive: Path, out: Path, n: int, split_list: str | None = None) -> list[Path]:
    """The first ``n`` PNG members of a sample archive (optionally only those named in
    ``split_list``, e.g. ``test_list.txt``), written to ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    with zipfile.ZipFile(archive) as z:
        allowed = None
        if split_list is not None:
            allowed = set(z.read(split_list).decode().split())
        for name in sorted(z.namelist()):
            base = name.rsplit("/", 1)[-1]
            if not name.endswith(".png") or (allowed is not None and base not in allowed):
                continue
            p = out / base
            p.write_bytes(z.read(name))
            paths.append(p)
            if len(paths) == n:
                break
    return paths


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return make_run_folder(tmp_path / "run")


@pytest.fixture(scope="session")
def sample_pngs(small_archive, tmp_path_factory) -> list[Path]:
    """Six 256-px radiograph-like PNGs of the session's sample archive."""
    return extract_pngs(small_archive, tmp_path_factory.mktemp("pngs"), 6)


def gray_of(path: Path) -> np.ndarray:
    """A sample PNG's full-resolution uint8 pixels (the fixtures' source of realistic content)."""
    from imgae_dx.data.decode import decode_gray

    return decode_gray(path.read_bytes())
