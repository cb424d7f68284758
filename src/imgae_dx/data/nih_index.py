"""The NIH index under its earlier module name; it lives in :mod:`imgae_dx.data.datasets.nih`."""

from imgae_dx.data.datasets.nih import *  # noqa: F403
from imgae_dx.data.datasets.nih import __all__  # noqa: F401
