"""The linear baseline's network: reconstruction by the top-k principal components of the
training normals.

``PCAModel`` flattens an image (B×1×H×W → B×D, D = H·W), projects it on the first ``k`` principal
components of normal training images and reconstructs (B×D → B×1×H×W, not clamped); the anomaly
map and score are the same as every model's (``model.pca.anomaly``). Its state (mean, components,
k) is ordinary buffers, saved and loaded like any model's weights; it has no gradient training and
is fitted once by :func:`imgae_dx.models.pca.fit.fit_principal_components`.
:meth:`PCAModel.exportable` gives the fitted model with ``k`` fixed (:class:`PCAProjection`): the
same reconstruction without a shape read from a tensor, which ``torch.export`` (ONNX) needs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from imgae_dx.config import PCAConfig
from imgae_dx.models.base import ReconstructionModel


class PCAModel(ReconstructionModel):
    """Top-k PCA reconstruction (see the module docstring). ``forward(x)``: B×1×H×W → B×1×H×W."""

    name = "pca"

    def __init__(self, image_size: int, cfg: PCAConfig) -> None:
        super().__init__(image_size, cfg.anomaly)
        self.cfg = cfg
        d = int(image_size) ** 2
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("components", torch.zeros(cfg.max_components, d))
        self.register_buffer("k", torch.zeros((), dtype=torch.long))

    @property
    def fitted(self) -> bool:
        return int(self.k) > 0

    def forward(self, x: Tensor) -> Tensor:
        """x: B×1×H×W → reconstruction from the top ``k`` components (B×1×H×W float32)."""
        if not self.fitted:
            raise RuntimeError("pca: the model is not fitted yet (its checkpoint holds k = 0)")
        flat = x.float().flatten(1) - self.mean
        comps = self.components[: int(self.k)]
        return ((flat @ comps.T) @ comps + self.mean).view_as(x)

    def exportable(self) -> PCAProjection:
        """The fitted model as a :class:`PCAProjection` (``k`` fixed; same outputs)."""
        if not self.fitted:
            raise RuntimeError("pca: the model is not fitted yet (its checkpoint holds k = 0)")
        return PCAProjection(self).to(self.mean.device).eval()


class PCAProjection(ReconstructionModel):
    """A fitted :class:`PCAModel` with its ``k`` components as a fixed-shape buffer (k×D):
    ``forward`` is the same arithmetic, so the same reconstruction, bit for bit."""

    name = "pca"

    def __init__(self, pca: PCAModel) -> None:
        super().__init__(pca.image_size, pca.cfg.anomaly)
        self.cfg = pca.cfg
        self.register_buffer("mean", pca.mean.detach().clone())
        self.register_buffer("components", pca.components[: int(pca.k)].detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        """x: B×1×H×W → reconstruction from the k components (B×1×H×W float32)."""
        flat = x.float().flatten(1) - self.mean
        return ((flat @ self.components.T) @ self.components + self.mean).view_as(x)
