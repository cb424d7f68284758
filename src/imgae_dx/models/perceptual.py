"""LPIPS on SqueezeNet features: the perceptual saliency of the RA authors' anomaly maps.

:class:`LPIPS` is Zhang et al.'s learned perceptual distance (``lpips`` package, ``net='squeeze'``,
version 0.1, ``spatial=True``) rebuilt here so that no torchvision is needed: the SqueezeNet 1.1
feature extractor (:class:`SqueezeFeatures`, the layer names of torchvision's
``squeezenet1_1().features``), the input scaling layer, channel-normalised feature differences at
the 7 taps and the learned 1×1 "linear" heads, each upsampled to the input size and summed::

    x ∈ [0, 1]  →  2x − 1  →  (· − shift) / scale  →  SqueezeNet taps f_l (l = 1..7)
    d_l = (f_l(x)/‖f_l(x)‖ − f_l(y)/‖f_l(y)‖)²  →  w_l · d_l (1×1 conv)  →  bilinear to H×W  →  Σ_l

Inputs are B×1×H×W gray images: they broadcast over the three RGB channels in the scaling layer,
as in the authors' code. Output: B×1×H×W (float32).

Weights: torchvision's ``squeezenet1_1-b8a52dc0.pth`` (the backbone) and the lpips package's
``v0.1/squeeze.pth`` (the heads), in the standard caches, SHA-256-verified and loaded with
``weights_only=True`` (:mod:`imgae_dx.models.lpips_weights`: the layout, ``imgae-dx
fetch-weights``). :func:`load_lpips` downloads a missing file where the network allows; where it
cannot, it raises :class:`~imgae_dx.models.lpips_weights.LPIPSWeightsError` naming the file, its
cache path and how to provide it — a run configured with ``saliency: lpips`` never silently scores
without it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: channels of the 7 taps
CHANNELS: tuple[int, ...] = (64, 128, 256, 384, 384, 512, 512)
#: SqueezeNet 1.1 ``features`` indices after which a tap is taken (as the lpips package slices it)
TAPS: tuple[int, ...] = (1, 4, 7, 9, 10, 11, 12)


class Fire(nn.Module):
    """SqueezeNet's fire module: 1×1 squeeze, then 1×1 and 3×3 expands concatenated."""

    def __init__(self, inplanes: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze, kernel_size=1)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, kernel_size=1)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.expand1x1(x)), F.relu(self.expand3x3(x))], 1)


class SqueezeFeatures(nn.Module):
    """torchvision's ``squeezenet1_1().features`` (same parameter names under ``features.``)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=3, stride=2), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(64, 16, 64, 64), Fire(128, 16, 64, 64),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(128, 32, 128, 128), Fire(256, 32, 128, 128),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(256, 48, 192, 192), Fire(384, 48, 192, 192),
            Fire(384, 64, 256, 256), Fire(512, 64, 256, 256),
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: B×3×H×W → the 7 tap activations."""
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAPS:
                taps.append(x)
        return taps


class LPIPS(nn.Module):
    """Spatial LPIPS (SqueezeNet, v0.1): ``lpips(x, y)`` → B×1×H×W for x, y B×1×H×W in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.net = SqueezeFeatures()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def load_heads(self, sd: dict[str, Tensor]) -> None:
        """The lpips package's head weights (``lin{k}.model.1.weight``)."""
        for k, lin in enumerate(self.lins):
            lin.weight.copy_(sd[f"lin{k}.model.1.weight"])

    @torch.no_grad()
    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        fx = self.net((2 * x.float() - 1 - self.shift) / self.scale)
        fy = self.net((2 * y.float() - 1 - self.shift) / self.scale)
        out = torch.zeros((x.shape[0], 1, h, w), device=x.device)
        for a, b, lin in zip(fx, fy, self.lins, strict=True):
            d = (_unit(a) - _unit(b)).square()
            out += F.interpolate(lin(d), size=(h, w), mode="bilinear", align_corners=False)
        return out


def _unit(t: Tensor, eps: float = 1e-10) -> Tensor:
    """Divide by the L2 norm over channels (as ``lpips.normalize_tensor``)."""
    return t / (t.square().sum(dim=1, keepdim=True).sqrt() + eps)


_CACHE: dict[str, LPIPS] = {}


def load_lpips(device: torch.device | str = "cpu") -> LPIPS:
    """The pretrained LPIPS-SqueezeNet on ``device`` (cached per device for the process).

    Raises:
        LPIPSWeightsError: a weight file is missing and cannot be downloaded, or fails its
            SHA-256 check.
    """
    from imgae_dx.models import lpips_weights

    key = str(torch.device(device))
    if key in _CACHE:
        return _CACHE[key]
    backbone = torch.load(lpips_weights.ensure(lpips_weights.BACKBONE), map_location="cpu", weights_only=True)
    heads = torch.load(lpips_weights.ensure(lpips_weights.HEADS), map_location="cpu", weights_only=True)
    net = LPIPS()
    net.net.load_state_dict({k: v for k, v in backbone.items() if k.startswith("features.")})
    net.load_heads(heads)
    _CACHE[key] = net.to(device)
    return _CACHE[key]
