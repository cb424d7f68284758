"""Models: U-Net denoising AE, Reversed Autoencoder (Bercea et al. 2023), plain AE, PCA baseline.

``create_model(name, image_size, **overrides)`` builds an ``nn.Module`` whose ``predict(x)``
(x: B×1×H×W in [0, 1]) returns a :class:`Prediction` (reconstruction B×1×H×W, anomaly_map
B×1×H×W, score B). ``create_objective(name, model, model_cfg)`` returns the :class:`Objective`
the step owner calls (``losses``/``val_loss``/``param_groups``/``optim``).

=====================  ===========================================================================
:mod:`.registry`       name → :class:`ModelSpec` (config, network, objective); ``create_model``,
                       ``create_objective``, ``load_model``, ``model_config``
:mod:`.base`           :class:`ReconstructionModel` (``predict``, ``prepare``), :class:`Prediction`
:mod:`.objective`      the :class:`Objective` interface, :class:`StepContext`, :class:`LossPart`,
                       the per-pixel MSE objective the U-Net and AE share
``unet/``, ``ra/``,    per model: ``torch_model.py`` (the ``nn.Module``, nothing of training) and
``ae/``, ``pca/``      ``objective.py`` (its losses; PCA: ``fit.py``, its one-off fit)
:mod:`.losses`         loss terms (reconstruction error, KL, reversed embedding, expELBO)
:mod:`.noise`          seeded normal draws and the U-Net's coarse noise (training and inference)
:mod:`.anomaly`        anomaly maps and image scores; :mod:`.perceptual`, :mod:`.lpips_weights`
:mod:`.input_norm`     the per-image input normalisation every model applies first
=====================  ===========================================================================
"""

from __future__ import annotations

from imgae_dx.models.ae import AEObjective, ConvAutoencoder
from imgae_dx.models.base import Prediction, ReconstructionModel
from imgae_dx.models.objective import LossPart, Objective, StepContext
from imgae_dx.models.pca import PCAModel, fit_principal_components
from imgae_dx.models.ra import RAObjective, ReversedAutoencoder
from imgae_dx.models.registry import (
    GRADIENT_MODELS,
    MODELS,
    ModelSpec,
    create_model,
    create_objective,
    load_model,
    model_config,
)
from imgae_dx.models.unet import UNet, UNetObjective

__all__ = [
    "Prediction", "ReconstructionModel", "UNet", "ReversedAutoencoder", "ConvAutoencoder", "PCAModel",
    "Objective", "LossPart", "StepContext", "UNetObjective", "RAObjective", "AEObjective",
    "ModelSpec", "MODELS", "GRADIENT_MODELS", "fit_principal_components",
    "create_model", "create_objective", "load_model", "model_config",
]
