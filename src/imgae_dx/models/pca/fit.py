"""Fitting the PCA baseline (its training): :func:`fit_principal_components` takes training
normals (N×D) and validation normals (M×D) and

* centres the training images on their mean and keeps the top ``max_components`` right singular
  vectors of the centred N×D matrix (``torch.linalg.svd``, float64);
* takes ``k`` = ``components`` when that is set, else chooses it on the validation normals only:
  the fewest components that explain ``explained_variance`` of the validation images' variance
  around the training mean (all of them when that share is never reached).

Cheap and deterministic: the honest yardstick a deep model must beat on small data.
"""

from __future__ import annotations

import torch
from torch import Tensor

from imgae_dx.models.pca.torch_model import PCAModel


@torch.no_grad()
def fit_principal_components(model: PCAModel, train: Tensor, val: Tensor) -> dict[str, float]:
    """Fit ``model`` (in place: its mean, components and k) on training normals ``train`` (N×D in
    [0, 1], D = image_size²), choosing k on ``val`` (M×D); both are normalised by the model's
    :meth:`~imgae_dx.models.base.ReconstructionModel.prepare` first, as ``predict`` normalises its
    input.

    Returns:
        ``k``, ``explained`` (share of the validation variance the k components explain),
        ``val_mse`` (validation reconstruction MSE with k components), ``components`` (fitted).

    Raises:
        ValueError: ``train`` is not N×D, or there are fewer than 2 training or 1 validation images.
    """
    d = model.mean.numel()
    if train.ndim != 2 or train.shape[1] != d:
        raise ValueError(f"pca: training images must be N×{d}, got {tuple(train.shape)}")
    if train.shape[0] < 2 or val.shape[0] < 1:
        raise ValueError(f"pca: needs ≥ 2 training and ≥ 1 validation images, got "
                         f"{train.shape[0]} and {val.shape[0]}")
    cfg, side = model.cfg, model.image_size
    train = model.prepare(train.view(-1, 1, side, side)).flatten(1)
    val = model.prepare(val.view(-1, 1, side, side)).flatten(1)
    x = train.double()
    mean = x.mean(dim=0)
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
    n = min(cfg.max_components, vh.shape[0])
    comps = vh[:n]
    v = val.double() - mean
    total = float(v.square().sum())
    captured = (v @ comps.T).square().sum(dim=0).cumsum(0)  # variance explained by the first j
    share = captured / total if total > 0 else torch.ones_like(captured)
    if cfg.components is not None:
        k = min(cfg.components, n)
    else:
        reached = torch.nonzero(share >= cfg.explained_variance)
        k = int(reached[0]) + 1 if reached.numel() else n
    model.mean.copy_(mean.float())
    model.components.zero_()
    model.components[:n] = comps.float()
    model.k.fill_(k)
    return {"k": k, "explained": float(share[k - 1]), "components": n,
            "val_mse": (total - float(captured[k - 1])) / v.numel()}
