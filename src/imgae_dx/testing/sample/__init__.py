"""Synthetic sample archives (``imgae-dx sample-data``, the demo, tests, benchmarks).

Not part of the production data path: real training streams the real archives. Modules: the
NIH plan (:mod:`.plan`), the renderer (:mod:`.render`), the NIH zip writer (:mod:`.archive`), and
for the other layouts a synthetic cohort (:mod:`.cohort`) written as ZhangLab's Kaggle archive
(:mod:`.zhanglab`) or one's own folder (:mod:`.folder`), and RSNA's competition archive of DICOMs
(:mod:`.rsna`, :mod:`.dicom`). Every archive carries the synthetic-sample marker member.
:data:`SAMPLE_WRITERS`: the writer of each non-NIH layout (``out_dir, images=N, seed, image_px``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from imgae_dx.testing.sample.archive import write_sample_archive
from imgae_dx.testing.sample.folder import write_folder_archive
from imgae_dx.testing.sample.rsna import write_rsna_archive
from imgae_dx.testing.sample.zhanglab import write_zhanglab_archive

#: dataset name → writer of its synthetic archive (NIH: :func:`write_sample_archive`).
SAMPLE_WRITERS: dict[str, Callable[..., Path]] = {
    "zhanglab": write_zhanglab_archive, "rsna": write_rsna_archive, "folder": write_folder_archive}

__all__ = ["SAMPLE_WRITERS", "write_folder_archive", "write_rsna_archive", "write_sample_archive",
           "write_zhanglab_archive"]
