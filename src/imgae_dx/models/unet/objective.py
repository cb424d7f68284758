"""The U-Net's denoising objective: ``x̃ = x + up(N(0, noise_std) at noise_resolution²)``
(:func:`~imgae_dx.models.noise.coarse_noise`: bilinear upsampling to H×W, optionally rolled and
kept to the foreground), target the clean x, per-pixel MSE; one Adam/AdamW optimiser."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from imgae_dx.config import UNetConfig
from imgae_dx.models.noise import coarse_noise
from imgae_dx.models.objective import ReconstructionObjective, StepContext, scalar_floats
from imgae_dx.models.unet.torch_model import UNet


class UNetObjective(ReconstructionObjective):
    """Denoising U-Net: loss = mean((UNet(x + coarse_noise) − x)²).

    ``val_loss`` reports ``loss`` (the same denoising loss with noise from a fixed-seed RNG, so
    epochs compare) and ``mse_clean`` (reconstruction of the uncorrupted input).
    """

    name = "unet"
    VAL_NOISE_SEED = 0

    def __init__(self, model: UNet, cfg: UNetConfig) -> None:
        super().__init__(model, cfg.optim)
        self.cfg = cfg

    def corrupt(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """x + N(0, noise_std) drawn at noise_resolution², upsampled (rolled with ``noise_roll``,
        only where x > ``noise_foreground_threshold`` when set); x itself if noise_std = 0."""
        c = self.cfg
        if c.noise_std <= 0:
            return x
        n = coarse_noise(x, c.noise_std, c.noise_resolution, generator, roll=c.noise_roll)
        return self.model.add_noise(x, n)

    @torch.no_grad()
    def val_loss(self, x: Tensor, ctx: StepContext) -> dict[str, float]:
        x = self.model.prepare(x)
        g = torch.Generator(device=x.device).manual_seed(self.VAL_NOISE_SEED)
        xin = self.corrupt(x, g)
        with ctx.autocast():
            y_noisy = self.model(xin)
            y_clean = self.model(x) if self.cfg.noise_std > 0 else y_noisy
        return scalar_floats({"loss": F.mse_loss(y_noisy.float(), x.float()),
                              "mse_clean": F.mse_loss(y_clean.float(), x.float())})
