"""ImgAE-Dx: unsupervised anomaly detection on chest X-rays, streamed from Kaggle by byte ranges."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load(path: Any, **kwargs: Any) -> Any:
    """A :class:`~imgae_dx.inference.Predictor` for a run folder or an export bundle.

    ``imgae_dx.load(path).predict(images_or_paths)`` → one result per (image, model) with
    ``score``, ``percentile``, ``flagged`` and ``anomaly_map``. Keyword arguments: ``model_name``
    (unet | ra | ae | all), ``device`` (auto | cpu | cuda), ``specificity`` (default 0.95),
    ``batch_size``. Imported lazily: ``import imgae_dx`` stays light.
    """
    from imgae_dx.inference import load as _load

    return _load(path, **kwargs)
