"""Common model base: the typed :class:`Prediction` and ``predict()``.

A model's ``forward(x)`` returns only the reconstruction (B×1×H×W), so it compiles as one graph
(``torch.compile``); :meth:`ReconstructionModel.predict` adds the anomaly map and the image score.
The ``nn.Module`` knows nothing of training: each model's losses are its objective
(``models/<model>/objective.py``), optimisers are the step owner's (``training/``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from imgae_dx.config import AnomalyConfig
from imgae_dx.models.anomaly import AnomalyScorer
from imgae_dx.models.input_norm import normalise_input


class Prediction(NamedTuple):
    """Result of :meth:`ReconstructionModel.predict` (the same type in train and eval modes).

    Attributes:
        reconstruction: B×1×H×W, float32.
        anomaly_map: B×1×H×W, float32, larger = more anomalous.
        score: B, float32, the image-level anomaly score.
    """

    reconstruction: Tensor
    anomaly_map: Tensor
    score: Tensor


class ReconstructionModel(nn.Module):
    """Base of every model: ``forward(x) -> reconstruction``, ``predict(x) -> Prediction``.

    Subclasses implement :meth:`forward` (x: B×1×H×W in [0, 1] → B×1×H×W) and set ``self.cfg``
    (their pydantic config) and ``self.image_size``.
    """

    name: str = "model"
    #: how many 2× downsamplings the architecture does; image sides must be divisible by 2**this
    downsamplings: int = 0

    def __init__(self, image_size: int, anomaly: AnomalyConfig) -> None:
        super().__init__()
        self.image_size = int(image_size)
        self.scorer = AnomalyScorer(anomaly)

    @property
    def device(self) -> torch.device:
        """Where the model's tensors live (parameters, or buffers for the PCA baseline)."""
        for t in (*self.parameters(), *self.buffers()):
            return t.device
        return torch.device("cpu")

    def reconstruct(self, x: Tensor) -> Tensor:
        """Inference reconstruction of x (B×1×H×W) → B×1×H×W. Default: ``forward``."""
        return self(x)

    def exportable(self) -> ReconstructionModel:
        """The module ``torch.export`` (ONNX) traces for this one: same ``predict`` outputs, no
        shape that depends on tensor values. Default: this model itself."""
        return self

    def embeddings(self, x: Tensor) -> list[Tensor] | None:
        """Multi-scale feature maps of x (B×1×H×W) for ``saliency: encoder``; None: the model has
        none (only RA does)."""
        return None

    def prepare(self, x: Tensor) -> Tensor:
        """The model input for x (B×1×H×W in [0, 1]): the per-image normalisation of
        ``cfg.input`` (:mod:`imgae_dx.models.input_norm`), B×1×H×W in [0, 1]. Objectives and
        :meth:`predict` call it; ``forward`` takes its result."""
        return normalise_input(x, self.cfg.input)

    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` naming the problem if x is not B×1×H×W with compatible sides."""
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(
                f"{self.name}: expected a batch B×1×H×W (grayscale), got shape {tuple(x.shape)}"
            )
        div = 2**self.downsamplings
        if x.shape[-1] % div or x.shape[-2] % div:
            raise ValueError(
                f"{self.name}: image sides must be divisible by {div}, got {tuple(x.shape[-2:])}"
            )

    @torch.no_grad()
    def predict(self, x: Tensor) -> Prediction:
        """Reconstruct x (B×1×H×W in [0, 1]) and score it.

        Runs without gradients and does not change train/eval mode. x is first normalised
        (:meth:`prepare`); the reconstruction and map are of the normalised image. The map and
        score are computed in float32 whatever the autocast dtype.

        Returns:
            :class:`Prediction` (reconstruction B×1×H×W, anomaly_map B×1×H×W, score B).
        """
        self.check_input(x)
        x = self.prepare(x)
        recon = self.reconstruct(x).float()
        amap, score = self.scorer(x.float(), recon, self.embeddings)
        return Prediction(recon, amap, score)


def conv_out_hw(image_size: int, downsamplings: int, name: str) -> int:
    """Side of the bottleneck feature map; raises ``ValueError`` if the size does not divide."""
    div = 2**downsamplings
    if image_size % div or image_size < div:
        raise ValueError(
            f"{name}: image_size {image_size} must be a positive multiple of {div} "
            f"({downsamplings} downsamplings); use e.g. {max(div, 64)} or {max(div, 64) * 2}"
        )
    return image_size // div
