"""Helpers of the model tests: tiny model overrides and sample images.

Images come from ``imgae_dx.testing.sample.write_sample_archive`` (the synthetic NIH-layout archive),
read straight from the zip with zipfile + cv2 (these tests do not depend on the streaming
dataset).
"""

from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imgae_dx.data.decode import decode_png

# Tiny widths: every architecture at its real depth, fast on CPU.
TINY = {
    "unet": {"base_channels": 4, "groups": 2, "depth": 4},
    "ra": {"channels": [4, 8, 8, 8, 8], "zdim": 8},
    "ae": {"channels": [4, 8, 8, 8], "latent_dim": 8},
}


@dataclass
class ImageSet:
    """float32 tensors N×1×S×S in [0, 1]."""

    train: torch.Tensor      # normal
    val: torch.Tensor        # normal, other patients/images
    test_normal: torch.Tensor
    test_abnormal: torch.Tensor
    source: str


def images_from_archive(zip_path: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """All images of a sample archive at ``size``² (uint8 N×S×S) and labels (1 = abnormal)."""
    with zipfile.ZipFile(zip_path) as zf:
        names = {Path(n).name: n for n in zf.namelist() if n.endswith(".png")}
        text = zf.read("Data_Entry_2017.csv").decode("utf-8")
        imgs, labels = [], []
        rows = list(csv.reader(io.StringIO(text)))[1:]
        for row in rows:  # read by position: the header is malformed on purpose
            if not row or row[0] not in names:
                continue
            imgs.append(decode_png(zf.read(names[row[0]]), size))
            labels.append(0 if row[1].strip() == "No Finding" else 1)
    return np.stack(imgs), np.asarray(labels)


def _split(imgs: np.ndarray, labels: np.ndarray, source: str) -> ImageSet:
    t = torch.from_numpy(imgs.astype(np.float32) / 255.0).unsqueeze(1)
    normal = t[torch.from_numpy(labels == 0)]
    abnormal = t[torch.from_numpy(labels == 1)]
    n = normal.shape[0]
    n_test = max(8, n // 5)
    n_val = max(8, n // 6)
    return ImageSet(train=normal[: n - n_test - n_val], val=normal[n - n_test - n_val: n - n_test],
                    test_normal=normal[n - n_test:], test_abnormal=abnormal, source=source)


def load_image_set(tmp_dir: Path, size: int = 64, per_stage: int = 60, stages: int = 3,
                   seed: int = 0) -> ImageSet:
    from imgae_dx.testing.sample import write_sample_archive

    path = write_sample_archive(tmp_dir, images_per_stage=per_stage, stages=stages, seed=seed,
                                image_px=256)
    imgs, labels = images_from_archive(Path(path), size)
    return _split(imgs, labels, "imgae_dx.testing.sample")


def make_step(obj, *, seed: int | None = None, grad_clip: float | None = None, amp: str = "off",
              grad_sync=None):
    """The step owner the trainer uses, on the CPU (``amp`` as ``training.amp``)."""
    from imgae_dx.training.precision import resolve_precision
    from imgae_dx.training.step import TrainStep

    g = torch.Generator().manual_seed(seed) if seed is not None else None
    return TrainStep(obj, resolve_precision(amp, "cpu"), grad_clip=grad_clip, generator=g,
                     grad_sync=grad_sync)


def step_with_snapshots(obj, model, x: torch.Tensor, seed: int):
    """One step; returns (terms, [copy of the model at each optimiser's backward, before its
    update]) — for RA: [before the encoder update, after it and before the decoder update]."""
    import copy

    snaps = []
    out = make_step(obj, seed=seed, grad_sync=lambda ps: snaps.append(copy.deepcopy(model)))(x)
    return out, snaps
