"""Models: U-Net denoising AE, Reversed Autoencoder (Bercea et al. 2023), plain AE.

``create_model(name, image_size, **overrides)`` builds an ``nn.Module`` whose ``predict(x)``
(x: B×1×H×W in [0, 1]) returns a :class:`Prediction` (reconstruction B×1×H×W, anomaly_map
B×1×H×W, score B). ``create_objective(name, model, model_cfg)`` returns the :class:`Objective`
the step owner calls (``losses``/``val_loss``/``state_dict``/``load_state_dict``/``optimizers``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from imgae_dx.config import (
    MODEL_NAMES,
    AEConfig,
    ConfigError,
    PCAConfig,
    RAConfig,
    UNetConfig,
    _deep_merge,
    default_dict,
    format_validation_error,
)
from imgae_dx.models.ae import ConvAutoencoder
from imgae_dx.models.base import Prediction, ReconstructionModel
from imgae_dx.models.objectives import (
    AEObjective,
    LossPart,
    Objective,
    RAObjective,
    StepContext,
    UNetObjective,
)
from imgae_dx.models.pca import PCAModel
from imgae_dx.models.reversed_ae import ReversedAutoencoder
from imgae_dx.models.unet import UNet

__all__ = [
    "Prediction", "ReconstructionModel", "UNet", "ReversedAutoencoder", "ConvAutoencoder", "PCAModel",
    "Objective", "LossPart", "StepContext", "UNetObjective", "RAObjective", "AEObjective",
    "create_model", "create_objective", "model_config",
]

_CONFIGS: dict[str, type[BaseModel]] = {"unet": UNetConfig, "ra": RAConfig, "ae": AEConfig,
                                        "pca": PCAConfig}
_MODELS: dict[str, type[ReconstructionModel]] = {
    "unet": UNet, "ra": ReversedAutoencoder, "ae": ConvAutoencoder, "pca": PCAModel,
}
_OBJECTIVES: dict[str, type[Objective]] = {"unet": UNetObjective, "ra": RAObjective, "ae": AEObjective}


def _check_name(name: str) -> str:
    if name not in MODEL_NAMES:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    return name


def model_config(name: str, cfg: BaseModel | Mapping[str, Any] | None = None,
                 **overrides: Any) -> BaseModel:
    """Validated config of model ``name``: ``cfg`` (default: the packaged YAML) + ``overrides``.

    Overrides are field names of the model's section (``base_channels=8``,
    ``anomaly={"map": "ssim"}``); nested mappings merge. Bad keys/values raise
    :class:`ConfigError` naming them.
    """
    _check_name(name)
    if cfg is None:
        base = default_dict().get("model", {}).get(name, {})
    elif isinstance(cfg, BaseModel):
        base = cfg.model_dump()
    else:
        base = dict(cfg)
    data = _deep_merge(base, overrides)
    try:
        return _CONFIGS[name].model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, f"model.{name}", loc_prefix=("model", name))) from None


def create_model(name: str, image_size: int = 128, cfg: BaseModel | Mapping[str, Any] | None = None,
                 **overrides: Any) -> ReconstructionModel:
    """Build model ``name`` ("unet" | "ra" | "ae") for square images of side ``image_size``.

    Args:
        name: model name.
        image_size: input side in pixels; must be divisible by the model's total downsampling
            (U-Net 2^(depth−1), RA and AE 2^len(channels): 16/32/16 by default).
        cfg: the model's config section (e.g. ``config.model.ra``); default the packaged YAML.
        **overrides: fields of that section to change (``base_channels=8``, ``zdim=16``, …).

    Returns:
        The ``nn.Module`` (``forward(x)`` → reconstruction; ``predict(x)`` → :class:`Prediction`),
        with its validated config as ``model.cfg``.
    """
    mcfg = model_config(name, cfg, **overrides)
    try:
        return _MODELS[name](int(image_size), mcfg)  # type: ignore[arg-type]
    except ValueError as e:
        raise ConfigError(f"cannot build model {name!r} at image_size {image_size}: {e}") from None


def load_model(name: str, image_size: int, cfg: BaseModel | Mapping[str, Any] | None,
               state: Mapping[str, Any], where: str, device: Any = "cpu") -> ReconstructionModel:
    """:func:`create_model` with trained weights ``state`` (strict), in eval mode on ``device``;
    CheckpointError naming ``where`` when they do not fit."""
    from imgae_dx.errors import CheckpointError

    model = create_model(name, image_size=image_size, cfg=cfg)
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"{where} does not fit model {name!r}: {str(e)[:300]}") from None
    return model.to(device).eval()


def create_objective(name: str, model: ReconstructionModel,
                     model_cfg: BaseModel | Mapping[str, Any] | None = None) -> Objective:
    """The training objective of ``model`` (creates its optimiser(s)).

    Create it after moving the model to its device (fused Adam on CUDA). ``model_cfg`` defaults to
    ``model.cfg``; pass the section of the run's config to change optimiser/loss settings.
    """
    _check_name(name)
    if name not in _OBJECTIVES:
        raise ConfigError(f"{name!r} has no training objective: it is fitted after the others "
                          "(PCAModel.fit), not trained by gradient steps")
    if not isinstance(model, _MODELS[name]):
        raise ConfigError(f"create_objective({name!r}) needs a {_MODELS[name].__name__}, "
                          f"got {type(model).__name__}")
    cfg = model_config(name, model_cfg if model_cfg is not None else model.cfg)
    return _OBJECTIVES[name](model, cfg)  # type: ignore[arg-type]
