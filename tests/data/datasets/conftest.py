"""Helpers of the dataset tests: real image files and zip archives built in the test."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # dataset_helpers.py, next to this file
