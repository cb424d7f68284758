"""The PCA baseline: the network (:mod:`.torch_model`, buffers and the projection) and its fit
(:mod:`.fit`; no gradient training)."""

from imgae_dx.models.pca.fit import fit_principal_components
from imgae_dx.models.pca.torch_model import PCAModel, PCAProjection

__all__ = ["PCAModel", "PCAProjection", "fit_principal_components"]
