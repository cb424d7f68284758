"""Synthetic sample archives (``imgae-dx sample-data``, the demo, tests, benchmarks).

Not part of the production data path: real training streams the real archives. Modules: the
NIH plan (:mod:`.plan`), the renderer (:mod:`.render`), the NIH zip writer (:mod:`.archive`), and
for the other layouts a synthetic cohort (:mod:`.cohort`) written as ZhangLab's Kaggle archive
(:mod:`.zhanglab`) or one's own folder (:mod:`.folder`). Every archive carries the
synthetic-sample marker member.
"""

from __future__ import annotations

from imgae_dx.testing.sample.archive import write_sample_archive
from imgae_dx.testing.sample.folder import write_folder_archive
from imgae_dx.testing.sample.zhanglab import write_zhanglab_archive

__all__ = ["write_folder_archive", "write_sample_archive", "write_zhanglab_archive"]
