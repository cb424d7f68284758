"""Fixtures of the model tests (helpers live in model_helpers.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # model_helpers.py, next to this file

from model_helpers import ImageSet, load_image_set  # noqa: E402


@pytest.fixture(scope="session")
def images64(tmp_path_factory) -> ImageSet:
    return load_image_set(tmp_path_factory.mktemp("models_sample"), size=64)
