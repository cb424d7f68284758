"""Fixtures of the trainer tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # training_helpers.py, next to this file


@pytest.fixture(scope="session")
def train_archive(tmp_path_factory) -> Path:
    """3 stages × 120 images at 64 px: ~27/43/56 normal train images per stage (view all)."""
    from imgae_dx.testing.sample import write_sample_archive

    return write_sample_archive(tmp_path_factory.mktemp("train_sample"), images_per_stage=120,
                                stages=3, seed=0, image_px=64, progress=False)


@pytest.fixture(scope="session")
def full_run(train_archive, tmp_path_factory) -> Path:
    """``--model all`` over the 3 stages, uninterrupted: the reference of the resume tests."""
    from training_helpers import run_cli

    tmp = tmp_path_factory.mktemp("full")
    out = tmp / "run"
    assert run_cli(train_archive, out, tmp, "--model", "all", "--stages", "all") == 0
    return out


@pytest.fixture(scope="session")
def zhanglab_train_archive(tmp_path_factory) -> Path:
    """A synthetic archive in ZhangLab's Kaggle layout: 150 JPEGs (junk and the second tree too)."""
    from imgae_dx.testing.sample import write_zhanglab_archive

    return write_zhanglab_archive(tmp_path_factory.mktemp("zhanglab_train"), images=150, seed=0, image_px=64)


@pytest.fixture(scope="session")
def rsna_train_archive(tmp_path_factory) -> Path:
    """A synthetic archive in the RSNA competition's layout: 200 JPEG-Baseline DICOMs at 64 px."""
    from imgae_dx.testing.sample import write_rsna_archive

    return write_rsna_archive(tmp_path_factory.mktemp("rsna_train"), images=200, seed=0, image_px=64)
