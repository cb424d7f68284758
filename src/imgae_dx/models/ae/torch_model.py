"""Plain convolutional autoencoder with a small fully connected bottleneck (the baseline).

With ``channels = (c0, …, c_{n−1})`` (default 32, 64, 128, 256), x: B×1×S×S, r = S / 2^n:

Encoder: per width c_i a conv4×4 stride 2 → BatchNorm → LeakyReLU        → B×c_{n−1}×r×r
         flatten → Linear → z: B×latent_dim (default 16)
Decoder: Linear(latent → c_{n−1}·r·r) → LeakyReLU → B×c_{n−1}×r×r
         per width (reversed, ending at c0) a transposed conv4×4 stride 2 → BatchNorm → LeakyReLU
         conv3×3 (c0 → 1) → sigmoid                                        → B×1×S×S
"""

from __future__ import annotations

from torch import Tensor, nn

from imgae_dx.config import AEConfig
from imgae_dx.models.base import ReconstructionModel, conv_out_hw


class ConvAutoencoder(ReconstructionModel):
    """Dense-bottleneck AE. ``forward(x)``: B×1×S×S → B×1×S×S; ``encode``: → B×latent_dim."""

    name = "ae"

    def __init__(self, image_size: int, cfg: AEConfig) -> None:
        super().__init__(image_size, cfg.anomaly)
        self.cfg = cfg
        ch = list(cfg.channels)
        if not ch:
            raise ValueError("ae: model.ae.channels needs at least one width")
        self.downsamplings = len(ch)
        self.r = conv_out_hw(image_size, len(ch), self.name)
        s = cfg.lrelu_slope
        enc: list[nn.Module] = []
        cin = 1
        for c in ch:
            enc += [nn.Conv2d(cin, c, 4, 2, 1, bias=False), nn.BatchNorm2d(c), nn.LeakyReLU(s)]
            cin = c
        self.enc = nn.Sequential(*enc)
        flat = ch[-1] * self.r * self.r
        self.to_latent = nn.Linear(flat, cfg.latent_dim)
        self.from_latent = nn.Sequential(nn.Linear(cfg.latent_dim, flat), nn.LeakyReLU(s))
        dec: list[nn.Module] = []
        outs = list(reversed(ch[:-1])) + [ch[0]]
        cin = ch[-1]
        for c in outs:
            dec += [nn.ConvTranspose2d(cin, c, 4, 2, 1, bias=False), nn.BatchNorm2d(c), nn.LeakyReLU(s)]
            cin = c
        dec += [nn.Conv2d(cin, 1, 3, padding=1), nn.Sigmoid()]
        self.dec = nn.Sequential(*dec)
        self.c_last = ch[-1]

    def encode(self, x: Tensor) -> Tensor:
        """x: B×1×S×S → z: B×latent_dim."""
        return self.to_latent(self.enc(x).flatten(1))

    def decode(self, z: Tensor) -> Tensor:
        """z: B×latent_dim → B×1×S×S."""
        h = self.from_latent(z).view(z.shape[0], self.c_last, self.r, self.r)
        return self.dec(h)

    def forward(self, x: Tensor) -> Tensor:
        """x: B×1×S×S → reconstruction B×1×S×S."""
        return self.decode(self.encode(x))
