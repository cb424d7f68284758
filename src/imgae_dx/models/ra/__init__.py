"""The Reversed Autoencoder (Bercea et al. 2023): the network (:mod:`.torch_model`) and its
Soft-IntroVAE + reversed-embedding objective (:mod:`.objective`)."""

from imgae_dx.models.ra.objective import RAObjective
from imgae_dx.models.ra.torch_model import ReversedAutoencoder

__all__ = ["RAObjective", "ReversedAutoencoder"]
