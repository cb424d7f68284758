"""The U-Net denoising autoencoder: the network (:mod:`.torch_model`) and its denoising objective
(:mod:`.objective`)."""

from imgae_dx.models.unet.objective import UNetObjective
from imgae_dx.models.unet.torch_model import UNet

__all__ = ["UNet", "UNetObjective"]
