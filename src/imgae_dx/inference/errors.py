"""Errors of the inference package (all :class:`~imgae_dx.errors.UserError`: one line, no traceback).

``ImageReadError`` is per file: ``predict`` writes it on that file's row and on stderr and goes on
with the other files. It belongs to the data layer (:mod:`imgae_dx.data.decode`, a
:class:`~imgae_dx.data.decode.DecodeError`), whose image and DICOM readers raise it, and is
re-exported here. The others concern the model: the command stops (exit status 2).
"""

from __future__ import annotations

from imgae_dx.data.decode import ImageReadError
from imgae_dx.errors import UserError
from imgae_dx.run.calibration import CalibrationError

__all__ = ["BundleError", "CalibrationError", "ImageReadError"]


class BundleError(UserError):
    """A model bundle is missing, incomplete, of another format, or cannot be written."""
