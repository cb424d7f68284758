"""The synthetic NIH-layout sample archive (``imgae-dx sample-data``, the demo, tests, benchmarks).

Not part of the production data path: real training streams the Kaggle archive. Modules: the
plan (:mod:`.plan`), the renderer (:mod:`.render`) and the zip writer (:mod:`.archive`).
"""

from __future__ import annotations

from imgae_dx.testing.sample.archive import write_sample_archive

__all__ = ["write_sample_archive"]
