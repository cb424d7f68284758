"""The one registry of models: name → :class:`ModelSpec` (config, network, objective), and the
functions every caller builds models with (:func:`model_config`, :func:`create_model`,
:func:`load_model`, :func:`create_objective`).

The names are :data:`imgae_dx.config.MODEL_NAMES` (kept there so the config and the CLI read them
without importing torch), in that order; ``tests/models/test_registry.py`` checks that both agree.
To add a model: a folder ``models/<name>/`` with ``torch_model.py`` (the ``nn.Module``, a
:class:`~imgae_dx.models.base.ReconstructionModel`) and ``objective.py`` (its
:class:`~imgae_dx.models.objective.Objective`), its config class in ``config.py``, its name in
``MODEL_NAMES`` and a :class:`ModelSpec` here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from imgae_dx.config import (
    MODEL_NAMES,
    AEConfig,
    ConfigError,
    PCAConfig,
    RAConfig,
    UNetConfig,
    deep_merge,
    default_dict,
    format_validation_error,
)
from imgae_dx.models.ae import AEObjective, ConvAutoencoder
from imgae_dx.models.base import ReconstructionModel
from imgae_dx.models.objective import Objective
from imgae_dx.models.pca import PCAModel
from imgae_dx.models.ra import RAObjective, ReversedAutoencoder
from imgae_dx.models.unet import UNet, UNetObjective


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows of a model.

    Attributes:
        name: the model's name (``model.<name>`` in the config, ``checkpoints/<name>/``).
        config: its pydantic config class (the ``model.<name>`` section).
        network: its ``nn.Module`` class, built as ``network(image_size, config)``.
        objective: its training objective class, built as ``objective(model, config)``; None for a
            model fitted once rather than trained by gradient steps (the PCA baseline).
    """

    name: str
    config: type[BaseModel]
    network: type[ReconstructionModel]
    objective: type[Objective] | None

    @property
    def trained_by_gradient(self) -> bool:
        """True for the models the trainer steps (they have an objective)."""
        return self.objective is not None


#: Every model, in :data:`~imgae_dx.config.MODEL_NAMES` order.
MODELS: dict[str, ModelSpec] = {s.name: s for s in (
    ModelSpec("unet", UNetConfig, UNet, UNetObjective),
    ModelSpec("ra", RAConfig, ReversedAutoencoder, RAObjective),
    ModelSpec("ae", AEConfig, ConvAutoencoder, AEObjective),
    ModelSpec("pca", PCAConfig, PCAModel, None),
)}

#: The models trained by gradient steps, in that order (``pca`` is fitted once, after them).
GRADIENT_MODELS: tuple[str, ...] = tuple(n for n, s in MODELS.items() if s.trained_by_gradient)


def spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name``; :class:`ConfigError` naming the choices otherwise."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    return MODELS[name]


def model_config(name: str, cfg: BaseModel | Mapping[str, Any] | None = None,
                 **overrides: Any) -> BaseModel:
    """Validated config of model ``name``: ``cfg`` (default: the packaged YAML) + ``overrides``.

    Overrides are field names of the model's section (``base_channels=8``,
    ``anomaly={"map": "ssim"}``); nested mappings merge. Bad keys/values raise
    :class:`ConfigError` naming them.
    """
    s = spec(name)
    if cfg is None:
        base = default_dict().get("model", {}).get(name, {})
    elif isinstance(cfg, BaseModel):
        base = cfg.model_dump()
    else:
        base = dict(cfg)
    data = deep_merge(base, overrides)
    try:
        return s.config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, f"model.{name}", loc_prefix=("model", name))) from None


def create_model(name: str, image_size: int = 128, cfg: BaseModel | Mapping[str, Any] | None = None,
                 **overrides: Any) -> ReconstructionModel:
    """Build model ``name`` ("unet" | "ra" | "ae" | "pca") for square images of side ``image_size``.

    Args:
        name: model name.
        image_size: input side in pixels; must be divisible by the model's total downsampling
            (U-Net 2^(depth−1), RA and AE 2^len(channels): 16/32/16 by default).
        cfg: the model's config section (e.g. ``config.model.ra``); default the packaged YAML.
        **overrides: fields of that section to change (``base_channels=8``, ``zdim=16``, …).

    Returns:
        The ``nn.Module`` (``forward(x)`` → reconstruction; ``predict(x)`` →
        :class:`~imgae_dx.models.base.Prediction`), with its validated config as ``model.cfg``.
    """
    mcfg = model_config(name, cfg, **overrides)
    try:
        return MODELS[name].network(int(image_size), mcfg)  # type: ignore[call-arg]
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
    """The training objective of ``model``: its losses, parameter groups and optimiser settings
    (the step owner, :class:`~imgae_dx.training.step.TrainStep`, builds the optimisers).

    ``model_cfg`` defaults to ``model.cfg``; pass the section of the run's config to change
    optimiser/loss settings.
    """
    s = spec(name)
    if s.objective is None:
        raise ConfigError(f"{name!r} has no training objective: it is fitted after the others "
                          "(models.pca.fit_principal_components), not trained by gradient steps")
    if not isinstance(model, s.network):
        raise ConfigError(f"create_objective({name!r}) needs a {s.network.__name__}, "
                          f"got {type(model).__name__}")
    cfg = model_config(name, model_cfg if model_cfg is not None else model.cfg)
    return s.objective(model, cfg)  # type: ignore[call-arg]
