"""Loss terms shared by the objectives: pure functions of tensors, float32 results.

* :func:`reconstruction_error` — squared error summed over pixels, per image.
* :func:`kl_divergence` — KL(N(μ, σ²) ‖ N(0, I)) per sample.
* :func:`embedding_loss` — the reversed-embedding loss of Bercea et al. (2023) over feature scales.
* :func:`exp_elbo` — Soft-IntroVAE's expELBO (Daniel & Tamar 2021).

The per-pixel MSE headline of every objective is ``F.mse_loss`` on float32 tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def reconstruction_error(x: Tensor, y: Tensor) -> Tensor:
    """Squared error summed over pixels: x, y B×C×H×W → B (float32)."""
    return (x.float() - y.float()).square().flatten(1).sum(dim=1)


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) per sample: μ, log σ² B×zdim → B (float32)."""
    mu, logvar = mu.float(), logvar.float()
    return -0.5 * (1.0 + logvar - logvar.exp() - mu.square()).sum(dim=1)


def embedding_loss(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """Reversed-embedding loss: Σ over scales of 0.5·MSE(a_i, b_i) + mean_B(1 − cos(a_i, b_i)).

    a_i, b_i: B×C_i×H_i×W_i (cosine over each sample's flattened map) → scalar (float32).
    """
    if len(a) != len(b):
        raise ValueError(f"embedding lists differ in length: {len(a)} vs {len(b)}")
    total = torch.zeros((), device=a[0].device, dtype=torch.float32)
    for ea, eb in zip(a, b, strict=True):
        ea, eb = ea.float(), eb.float()
        total = total + 0.5 * F.mse_loss(ea, eb)
        total = total + (1.0 - F.cosine_similarity(ea.flatten(1), eb.flatten(1), dim=1)).mean()
    return total


def exp_elbo(rec_err: Tensor, kl: Tensor, scale: float, beta_rec: float, beta_neg: float) -> Tensor:
    """Soft-IntroVAE's expELBO: mean_B exp(−2·scale·(β_rec·rec + β_neg·KL)); rec, KL: B → scalar."""
    return torch.exp(-2.0 * scale * (beta_rec * rec_err + beta_neg * kl)).mean()
