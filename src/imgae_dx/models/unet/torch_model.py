"""U-Net denoising autoencoder: the network (its denoising objective: ``unet/objective.py``).

Levels ``i = 0 … depth−1`` have ``base_channels·2^i`` channels; each level is two
conv3×3 → GroupNorm → SiLU (``conv: ws``: weight-standardised convolutions; ``padding: reflect``:
reflection padding — Kascenas et al.'s DAE uses both). Down: 2×2 average pooling; up: 2×2 stride-2 transposed conv halving the
channels, then (with ``skip_connections``) concatenation with the encoder feature of that level.
Output: 1×1 conv to one channel, sigmoid (or linear). For x: B×1×H×W, H and W divisible by
``2^(depth−1)``; the bottleneck is B×(base·2^(depth−1))×H/2^(depth−1)×W/2^(depth−1).

:meth:`UNet.add_noise` is the corruption (shared by training and inference); with
``inference_samples`` K > 0, :meth:`UNet.reconstruct` denoises K fixed corruptions of x and
averages them: K coarse fields drawn once from ``inference_noise_seed``
(:func:`~imgae_dx.models.noise.coarse_fields`, upsampled by
:func:`~imgae_dx.models.noise.upsample_noise` as training's noise is), so every image, batch and
exported graph sees the same ones.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from imgae_dx.config import UNetConfig
from imgae_dx.models.base import ReconstructionModel, conv_out_hw
from imgae_dx.models.noise import coarse_fields, upsample_noise


class WSConv2d(nn.Conv2d):
    """Conv2d with weight standardisation (Qiao et al. 2019): each filter is centred and divided
    by its standard deviation (+1e-5) before the convolution."""

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        w = w - w.mean(dim=(1, 2, 3), keepdim=True)
        w = w / (w.flatten(1).std(dim=1).view(-1, 1, 1, 1) + 1e-5)
        return self._conv_forward(x, w, self.bias)


def conv3x3(cin: int, cout: int, cfg: UNetConfig) -> nn.Conv2d:
    """The level's 3×3 convolution as configured (standard or weight-standardised; padding)."""
    cls = WSConv2d if cfg.conv == "ws" else nn.Conv2d
    return cls(cin, cout, 3, padding=1, padding_mode=cfg.padding, bias=False)


class ConvBlock(nn.Sequential):
    """(conv3×3 → GroupNorm → SiLU) × 2: B×cin×H×W → B×cout×H×W."""

    def __init__(self, cin: int, cout: int, cfg: UNetConfig) -> None:
        super().__init__(
            conv3x3(cin, cout, cfg),
            nn.GroupNorm(cfg.groups, cout),
            nn.SiLU(inplace=True),
            conv3x3(cout, cout, cfg),
            nn.GroupNorm(cfg.groups, cout),
            nn.SiLU(inplace=True),
        )


class UpBlock(nn.Module):
    """Transposed conv ×2 (cin → cout), optional skip concat, ConvBlock → B×cout×2H×2W."""

    def __init__(self, cin: int, cout: int, cfg: UNetConfig) -> None:
        super().__init__()
        self.skip = cfg.skip_connections
        self.up = nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)
        self.block = ConvBlock(2 * cout if self.skip else cout, cout, cfg)

    def forward(self, x: Tensor, skip: Tensor | None) -> Tensor:
        """x: B×cin×h×w, skip: B×cout×2h×2w (ignored without skips) → B×cout×2h×2w."""
        y = self.up(x)
        if self.skip and skip is not None:
            y = torch.cat([y, skip], dim=1)
        return self.block(y)


class UNet(ReconstructionModel):
    """U-Net autoencoder (see module docstring). ``forward(x)``: B×1×H×W → B×1×H×W."""

    name = "unet"

    def __init__(self, image_size: int, cfg: UNetConfig) -> None:
        super().__init__(image_size, cfg.anomaly)
        self.cfg = cfg
        self.downsamplings = cfg.depth - 1
        conv_out_hw(image_size, self.downsamplings, self.name)
        widths = [cfg.base_channels * 2**i for i in range(cfg.depth)]
        for w in widths:
            if w % cfg.groups:
                raise ValueError(
                    f"unet: GroupNorm groups={cfg.groups} must divide every level width {widths}; "
                    "set model.unet.groups to a divisor of base_channels"
                )
        self.widths = widths
        self.inc = ConvBlock(1, widths[0], cfg)
        self.pool = nn.AvgPool2d(2)
        self.downs = nn.ModuleList(ConvBlock(widths[i - 1], widths[i], cfg) for i in range(1, cfg.depth))
        self.ups = nn.ModuleList(UpBlock(widths[i], widths[i - 1], cfg) for i in range(cfg.depth - 1, 0, -1))
        self.out = nn.Conv2d(widths[0], 1, kernel_size=1)
        self.out_act: nn.Module = nn.Sigmoid() if cfg.output_activation == "sigmoid" else nn.Identity()
        g = torch.Generator().manual_seed(cfg.inference_noise_seed)
        fields = coarse_fields(cfg.inference_samples, 1, cfg.noise_std, cfg.noise_resolution, g)
        self.register_buffer("inference_noise", fields, persistent=False)  # K×1×r×r

    def forward(self, x: Tensor) -> Tensor:
        """x: B×1×H×W → reconstruction B×1×H×W."""
        feats = []
        h = self.inc(x)
        for down in self.downs:
            feats.append(h)
            h = down(self.pool(h))
        for up, skip in zip(self.ups, reversed(feats), strict=True):
            h = up(h, skip)
        return self.out_act(self.out(h))

    def add_noise(self, x: Tensor, noise: Tensor) -> Tensor:
        """x + noise (B×1×H×W, or 1×1×H×W for all), only where x > ``noise_foreground_threshold``
        when that is set."""
        t = self.cfg.noise_foreground_threshold
        if t is not None:
            noise = noise * (x > t)
        return x + noise.to(x.dtype)

    def reconstruct(self, x: Tensor) -> Tensor:
        """x (B×1×H×W) → B×1×H×W: ``forward(x)``, or with ``inference_samples`` K > 0 the mean of
        ``forward(add_noise(x, n_k))`` over the K noise fields n_k upsampled (bilinear) to H×W."""
        k = self.cfg.inference_samples
        if k <= 0:
            return self(x)
        fields = upsample_noise(self.inference_noise, x.shape[-2:])
        acc = torch.zeros(x.shape, device=x.device, dtype=torch.float32)
        for j in range(k):
            acc = acc + self(self.add_noise(x, fields[j:j + 1])).float()
        return acc / k
