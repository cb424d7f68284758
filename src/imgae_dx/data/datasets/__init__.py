"""The datasets ImgAE-Dx streams, one module each, behind one interface.

=================  ==============================================================================
:mod:`.base`       :class:`~.base.DatasetIndex` (the columnar index every dataset builds),
                   :class:`~.base.Protocol`, :class:`~.base.DatasetSpec`, stage cutting
:mod:`.nih`        NIH ChestX-ray14 (``nih``)
:mod:`.zhanglab`   ZhangLab pediatric pneumonia (``zhanglab``)
:mod:`.rsna`       RSNA Pneumonia Detection Challenge (``rsna``; DICOM, a Kaggle competition)
:mod:`.folder`     one's own ``normal/`` + ``abnormal/`` folders or ``labels.csv`` (``folder``)
:mod:`.heads`      the first bytes of many members at once (content sniffing, DICOM headers,
                   cached per archive version)
:mod:`.registry`   name → :class:`~.base.DatasetSpec`, layout detection, :func:`open_dataset`
=================  ==============================================================================

Kept light: importing this package imports no dataset module (``imgae-dx --help`` and the config
read :data:`DATASET_NAMES` only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

#: The datasets ``data.dataset`` / ``--dataset`` accept, in the order they are tried.
DATASET_NAMES: tuple[str, ...] = ("nih", "zhanglab", "rsna", "folder")

if TYPE_CHECKING:
    from imgae_dx.data.datasets.base import DatasetIndex


def open_dataset(archive: Any, data_cfg: Any, seed: int, **kwargs: Any) -> DatasetIndex:
    """The index of ``archive`` for ``data_cfg.dataset`` (see :func:`.registry.open_dataset`)."""
    from imgae_dx.data.datasets.registry import open_dataset as _open

    return _open(archive, data_cfg, seed, **kwargs)


__all__ = ["DATASET_NAMES", "open_dataset"]
