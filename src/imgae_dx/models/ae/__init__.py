"""The plain convolutional autoencoder (the baseline): the network (:mod:`.torch_model`) and its
MSE objective (:mod:`.objective`)."""

from imgae_dx.models.ae.objective import AEObjective
from imgae_dx.models.ae.torch_model import ConvAutoencoder

__all__ = ["AEObjective", "ConvAutoencoder"]
