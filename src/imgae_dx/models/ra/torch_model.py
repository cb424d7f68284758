"""Reversed Autoencoder (RA) of Bercea et al., MIDL 2023 — the network (a Soft-IntroVAE).

"Generalizing Unsupervised Anomaly Detection: Towards Unbiased Pathology Screening"; the
objective (Soft-IntroVAE + reversed-embedding loss, alternating encoder/decoder updates) is
:class:`imgae_dx.models.ra.objective.RAObjective`.

With ``channels = (c0, …, c_{n−1})`` (paper: 64, 128, 256, 512, 512) and x: B×1×H×W, H = W = S,
S divisible by 2^n, r = S / 2^n:

Encoder
    conv5×5 (1 → c0) → BatchNorm → LeakyReLU(0.2) → AvgPool2      → e₀: B×c0×S/2×S/2
    for i = 1 … n−1: ResidualBlock(c_{i−1} → c_i) → AvgPool2       → e_i: B×c_i×S/2^{i+1}×…
    ResidualBlock(c_{n−1} → c_{n−1}); flatten; Linear → 2·zdim      → μ, log σ²: B×zdim each
    The n pooled maps (e₀ … e_{n−1}) are the multi-scale embeddings (five in the paper).
Decoder
    Linear(zdim → c_{n−1}·r·r) → ReLU → B×c_{n−1}×r×r
    for c in reversed(channels): ResidualBlock(prev → c) → nearest upsample ×2
    ResidualBlock(c0 → c0) → conv5×5 (c0 → 1) → sigmoid             → B×1×S×S
ResidualBlock(cin → cout)
    conv3×3-BN-LReLU-conv3×3-BN, plus identity (1×1 conv, no bias, when cin ≠ cout), then LReLU.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from imgae_dx.config import RAConfig
from imgae_dx.models.base import ReconstructionModel, conv_out_hw


class ResidualBlock(nn.Module):
    """B×cin×H×W → B×cout×H×W: LReLU(BN(conv(LReLU(BN(conv(x))))) + identity(x))."""

    def __init__(self, cin: int, cout: int, slope: float = 0.2) -> None:
        super().__init__()
        self.expand = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else None
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = nn.LeakyReLU(slope)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = nn.LeakyReLU(slope)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.expand is None else self.expand(x)
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act2(y + identity)


class RAEncoder(nn.Module):
    """x: B×1×S×S → (μ B×zdim, log σ² B×zdim, embeddings: list of n maps B×c_i×S/2^{i+1}×…)."""

    def __init__(self, image_size: int, cfg: RAConfig) -> None:
        super().__init__()
        ch = list(cfg.channels)
        r = conv_out_hw(image_size, len(ch), "ra")
        s = cfg.lrelu_slope
        self.stem = nn.Sequential(
            nn.Conv2d(1, ch[0], 5, 1, 2, bias=False), nn.BatchNorm2d(ch[0]), nn.LeakyReLU(s)
        )
        self.blocks = nn.ModuleList(ResidualBlock(ch[i - 1], ch[i], s) for i in range(1, len(ch)))
        self.pool = nn.AvgPool2d(2)
        self.final = ResidualBlock(ch[-1], ch[-1], s)
        self.fc = nn.Linear(ch[-1] * r * r, 2 * cfg.zdim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        h = self.pool(self.stem(x))
        embeddings = [h]
        for block in self.blocks:
            h = self.pool(block(h))
            embeddings.append(h)
        h = self.final(h)
        y = self.fc(h.flatten(1))
        mu, logvar = y.chunk(2, dim=1)
        return mu, logvar, embeddings


class RADecoder(nn.Module):
    """z: B×zdim → image B×1×S×S in (0, 1)."""

    def __init__(self, image_size: int, cfg: RAConfig) -> None:
        super().__init__()
        ch = list(cfg.channels)
        self.r = conv_out_hw(image_size, len(ch), "ra")
        self.c_in = ch[-1]
        s = cfg.lrelu_slope
        self.fc = nn.Sequential(nn.Linear(cfg.zdim, ch[-1] * self.r * self.r), nn.ReLU())
        layers: list[nn.Module] = []
        cc = ch[-1]
        for c in reversed(ch):
            layers += [ResidualBlock(cc, c, s), nn.Upsample(scale_factor=2, mode="nearest")]
            cc = c
        layers += [ResidualBlock(cc, cc, s), nn.Conv2d(cc, 1, 5, 1, 2), nn.Sigmoid()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        h = self.fc(z).view(z.shape[0], self.c_in, self.r, self.r)
        return self.main(h)


def reparameterize(mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
    """z = μ + exp(½·log σ²)·ε (all B×zdim)."""
    return mu + eps * torch.exp(0.5 * logvar)


class ReversedAutoencoder(ReconstructionModel):
    """Soft-IntroVAE with multi-scale embeddings. ``forward(x)`` = decode(μ(x)): B×1×S×S → same."""

    name = "ra"

    def __init__(self, image_size: int, cfg: RAConfig) -> None:
        super().__init__(image_size, cfg.anomaly)
        self.cfg = cfg
        self.downsamplings = len(cfg.channels)
        self.zdim = cfg.zdim
        self.encoder = RAEncoder(image_size, cfg)
        self.decoder = RADecoder(image_size, cfg)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """x: B×1×S×S → (μ, log σ², embeddings) — see :class:`RAEncoder`."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """z: B×zdim → B×1×S×S."""
        return self.decoder(z)

    def embeddings(self, x: Tensor) -> list[Tensor]:
        """The encoder's n multi-scale embeddings of x (B×1×S×S) → [B×c_i×S/2^{i+1}×S/2^{i+1}]."""
        return self.encoder(x)[2]

    def forward(self, x: Tensor) -> Tensor:
        """Deterministic reconstruction (z = μ): B×1×S×S → B×1×S×S."""
        mu, _, _ = self.encoder(x)
        return self.decoder(mu)

    def reconstruct(self, x: Tensor) -> Tensor:
        """Inference reconstruction: z = μ, or (``inference_samples`` K > 0, the authors' way) the
        mean of K decodes of z ~ q(z|x). The noise of each image is drawn from a generator seeded
        by its own pixels, so an image gets the same reconstruction in any batch, run or process."""
        k = self.cfg.inference_samples
        if k <= 0:
            return self(x)
        mu, logvar, _ = self.encoder(x)
        mu, logvar = mu.float(), logvar.float()
        eps = torch.stack([torch.randn((k, mu.shape[1]), generator=_image_generator(xi))
                           for xi in x]).to(mu.device)  # B×K×zdim
        acc = torch.zeros(x.shape, device=x.device, dtype=torch.float32)
        for j in range(k):
            acc = acc + self.decoder(reparameterize(mu, logvar, eps[:, j])).float()
        return acc / k


def _image_generator(xi: Tensor) -> torch.Generator:
    """A CPU generator seeded by the CRC-32 of an image's pixels quantised to 16 bits."""
    import zlib

    q = (xi.detach().float().clamp(0, 1) * 65535).round().to(torch.int32).cpu().numpy()
    return torch.Generator().manual_seed(zlib.crc32(q.tobytes()))
