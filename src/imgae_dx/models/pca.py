"""The linear baseline: reconstruction by the top-k principal components of the training normals.

``PCAModel`` flattens an image (B×1×H×W → B×D, D = H·W), projects it on the first ``k`` principal
components of normal training images and reconstructs (B×D → B×1×H×W, not clamped); the anomaly
map and score are the same as every model's (``model.pca.anomaly``). It has no gradient training:
:meth:`PCAModel.fit` takes training normals (N×D) and validation normals (M×D) and

* centres the training images on their mean and keeps the top ``max_components`` right singular
  vectors of the centred N×D matrix (``torch.linalg.svd``, float64);
* takes ``k`` = ``components`` when that is set, else chooses it on the validation normals only:
  the fewest components that explain ``explained_variance`` of the validation images' variance
  around the training mean (all of them when that share is never reached).

Cheap and deterministic: the honest yardstick a deep model must beat on small data. Its state (mean,
components, k) is ordinary buffers, saved and loaded like any model's weights.
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

    @torch.no_grad()
    def fit(self, train: Tensor, val: Tensor) -> dict[str, float]:
        """Fit on training normals ``train`` (N×D in [0, 1]), choose k on ``val`` (M×D); both are
        normalised by :meth:`prepare` first, as ``predict`` normalises its input.

        Returns:
            ``k``, ``explained`` (share of the validation variance the k components explain),
            ``val_mse`` (validation reconstruction MSE with k components), ``components`` (fitted).
        """
        if train.ndim != 2 or train.shape[1] != self.mean.numel():
            raise ValueError(f"pca: training images must be N×{self.mean.numel()}, got {tuple(train.shape)}")
        if train.shape[0] < 2 or val.shape[0] < 1:
            raise ValueError(f"pca: needs ≥ 2 training and ≥ 1 validation images, got "
                             f"{train.shape[0]} and {val.shape[0]}")
        side = self.image_size
        train = self.prepare(train.view(-1, 1, side, side)).flatten(1)
        val = self.prepare(val.view(-1, 1, side, side)).flatten(1)
        x = train.double()
        mean = x.mean(dim=0)
        _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
        n = min(self.cfg.max_components, vh.shape[0])
        comps = vh[:n]
        v = val.double() - mean
        total = float(v.square().sum())
        captured = (v @ comps.T).square().sum(dim=0).cumsum(0)  # variance explained by the first j
        share = captured / total if total > 0 else torch.ones_like(captured)
        if self.cfg.components is not None:
            k = min(self.cfg.components, n)
        else:
            reached = torch.nonzero(share >= self.cfg.explained_variance)
            k = int(reached[0]) + 1 if reached.numel() else n
        self.mean.copy_(mean.float())
        self.components.zero_()
        self.components[:n] = comps.float()
        self.k.fill_(k)
        return {"k": k, "explained": float(share[k - 1]), "components": n,
                "val_mse": (total - float(captured[k - 1])) / v.numel()}


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
