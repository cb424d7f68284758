"""The one registry of models: it agrees with the config's torch-free names, and each entry builds
its config, network and objective."""

from __future__ import annotations

import pytest

from imgae_dx.config import MODEL_NAMES, ConfigError
from imgae_dx.models import GRADIENT_MODELS, MODELS, create_model, create_objective, model_config
from imgae_dx.models.registry import spec

SMALL = {"unet": {"base_channels": 4, "groups": 2, "depth": 3}, "ra": {"channels": [4, 8], "zdim": 4},
         "ae": {"channels": [4, 8], "latent_dim": 4}, "pca": {"max_components": 4}}


def test_the_registry_and_the_config_name_the_same_models_in_the_same_order():
    assert tuple(MODELS) == MODEL_NAMES
    assert all(s.name == n for n, s in MODELS.items())
    assert GRADIENT_MODELS == ("unet", "ra", "ae")  # the trainer steps these; pca is fitted after them
    assert not MODELS["pca"].trained_by_gradient and MODELS["pca"].objective is None


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_each_spec_builds_its_config_network_and_objective(name):
    s = spec(name)
    model = create_model(name, 16, **SMALL[name])
    assert type(model) is s.network and isinstance(model.cfg, s.config)
    assert isinstance(model_config(name), s.config)
    if s.trained_by_gradient:
        obj = create_objective(name, model)
        assert type(obj) is s.objective and obj.name == name and obj.optim == model.cfg.optim
    else:
        with pytest.raises(ConfigError, match="no training objective"):
            create_objective(name, model)


def test_an_objective_needs_its_own_network():
    with pytest.raises(ConfigError,
                       match=r"create_objective\('ra'\) needs a ReversedAutoencoder, got ConvAutoencoder"):
        create_objective("ra", create_model("ae", 16, **SMALL["ae"]))
    with pytest.raises(ConfigError, match="unknown model 'vae'; choose one of: unet, ra, ae, pca"):
        spec("vae")
