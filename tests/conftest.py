"""Shared fixtures. Sample archives are generated once per session (seeded, deterministic)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests run on 2 cores: keep libraries from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENCV_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's real Kaggle credentials or caches."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR",
                "KAGGLE_API_ENVIRONMENT", "WANDB_API_KEY"):
        # setenv first so monkeypatch restores "absent" even if code under test sets the variable
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    yield


def _sample(tmp_path_factory, name: str, **kw) -> Path:
    from imgae_dx.testing.sample import write_sample_archive

    out = tmp_path_factory.mktemp(name)
    return write_sample_archive(out, **kw)


@pytest.fixture(scope="session")
def small_archive(tmp_path_factory) -> Path:
    """3 stages × 40 images at 256 px: fast, full NIH layout and metadata."""
    return _sample(tmp_path_factory, "small", images_per_stage=40, stages=3, seed=0, image_px=256)

