"""NIH ChestX-ray14 data side: metadata index, decoding, cache, streaming dataset.

Kept light on purpose: nothing heavy (torch, cv2) is imported here; import the submodules you need,
e.g. ``from imgae_dx.data.nih_index import NIHIndex``. The synthetic sample archive lives in
:mod:`imgae_dx.testing.sample` (not part of the production data path).
"""

from __future__ import annotations
