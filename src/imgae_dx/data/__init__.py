"""NIH ChestX-ray14 data side: metadata index, decoding, cache, streaming dataset, sample archive.

Kept light on purpose: nothing heavy (torch, cv2) is imported here; import the submodules you need,
e.g. ``from imgae_dx.data.nih_index import NIHIndex`` or ``from imgae_dx.data.sample import
write_sample_archive``.
"""

from __future__ import annotations
