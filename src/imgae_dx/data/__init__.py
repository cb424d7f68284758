"""The data side: dataset indexes, epoch planning, decoding, caches, the streaming dataset.

Kept light on purpose: nothing heavy (torch, cv2) is imported here; import the submodules you need,
e.g. ``from imgae_dx.data.datasets import open_dataset``. The synthetic sample archives live in
:mod:`imgae_dx.testing.sample` (not part of the production data path).
"""

from __future__ import annotations
