"""Noise shared by the models and their objectives.

* :func:`standard_normal` — float32 N(0, 1) from a given generator (or the device's global RNG):
  RA's reparameterisation and fakes, and every draw below.
* :func:`coarse_fields` / :func:`upsample_noise` / :func:`coarse_noise` — the U-Net's corruption:
  N(0, std²) drawn at resolution×resolution and bilinearly upsampled to the image's H×W. Training
  (:class:`~imgae_dx.models.unet.objective.UNetObjective`) draws fresh fields per batch with
  :func:`coarse_noise`; inference (:meth:`~imgae_dx.models.unet.torch_model.UNet.reconstruct`) draws
  its K fields once with :func:`coarse_fields` and upsamples them with :func:`upsample_noise`, so
  both corrupt an image the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def standard_normal(shape: Sequence[int], generator: torch.Generator | None = None,
                    device: torch.device | str | None = None) -> Tensor:
    """Standard normal float32 noise of ``shape`` on ``device`` (default: the CPU).

    Drawn from ``generator`` when given (on the generator's device, then moved), else from the
    global RNG of ``device``.
    """
    if generator is None:
        return torch.randn(tuple(shape), device=device, dtype=torch.float32)
    out = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=torch.float32)
    return out.to(device) if device is not None else out


def coarse_fields(n: int, channels: int, std: float, resolution: int,
                  generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> Tensor:
    """n×channels×resolution×resolution float32 fields of N(0, std²) on ``device``."""
    return standard_normal((n, channels, resolution, resolution), generator, device) * std


def upsample_noise(fields: Tensor, size: Sequence[int]) -> Tensor:
    """Fields N×C×r×r bilinearly upsampled (``align_corners=False``) to N×C×H×W, ``size`` = (H, W);
    the fields themselves when they are already that size."""
    h, w = int(size[0]), int(size[1])
    if tuple(fields.shape[-2:]) == (h, w):
        return fields
    return F.interpolate(fields, size=(h, w), mode="bilinear", align_corners=False)


def coarse_noise(
    x: Tensor, std: float, resolution: int, generator: torch.Generator | None = None,
    *, roll: bool = False,
) -> Tensor:
    """N(0, std²) noise drawn at resolution×resolution, bilinearly upsampled to x's H×W.

    x: B×C×H×W → noise B×C×H×W float32 on x's device. With ``roll`` the upsampled noise is shifted
    by one random (dy, dx) for the batch, wrapping around (as Kascenas et al. do), drawn from
    ``generator`` after the noise.
    """
    b, c, h, w = x.shape
    n = upsample_noise(coarse_fields(b, c, std, resolution, generator, x.device), (h, w))
    if roll:
        dev = generator.device if generator is not None else "cpu"
        dy = int(torch.randint(0, h, (1,), generator=generator, device=dev))
        dx = int(torch.randint(0, w, (1,), generator=generator, device=dev))
        n = torch.roll(n, shifts=(dy, dx), dims=(-2, -1))
    return n
