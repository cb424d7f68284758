"""Fixtures of the reliability suite.

Every test here drives the real pipeline end to end (range server → reader → index → dataset →
trainer → checkpoints) with tiny models at 64 px on the session's ``small_archive`` (3 stages ×
40 images at 256 px), so a whole training run takes seconds on two CPU cores. Settings and helpers
live in ``reliability_helpers.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # reliability_helpers.py, next to this file
