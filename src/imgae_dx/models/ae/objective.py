"""The plain AE's objective: per-pixel MSE to its input, one Adam/AdamW optimiser."""

from __future__ import annotations

from imgae_dx.config import AEConfig
from imgae_dx.models.ae.torch_model import ConvAutoencoder
from imgae_dx.models.objective import ReconstructionObjective


class AEObjective(ReconstructionObjective):
    """Plain AE: loss = mean over pixels of (AE(x) − x)²."""

    name = "ae"

    def __init__(self, model: ConvAutoencoder, cfg: AEConfig) -> None:
        super().__init__(model, cfg.optim)
        self.cfg = cfg
