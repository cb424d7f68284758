"""The validated configuration: defaults load, bad values name key + value + what is allowed."""

from __future__ import annotations

import pytest

from imgae_dx.config import Config, ConfigError, config_from_yaml_text, load_config


def test_packaged_defaults_load_and_roundtrip():
    cfg = load_config()
    assert cfg.source == "kaggle:nih-chest-xrays/data"
    assert cfg.data.memory_budget_mb == 512
    assert cfg.model.ra.optim.lr == pytest.approx(5e-5)
    assert config_from_yaml_text(cfg.to_yaml()) == cfg


@pytest.mark.parametrize(("text", "why"), [("data: [1", "is not valid YAML"),
                                          ("- 1\n", "must hold a mapping at the top")])
def test_a_broken_run_config_is_a_config_error_naming_it(text, why):
    with pytest.raises(ConfigError, match=f"runs/x/config.yaml {why}"):
        config_from_yaml_text(text, "runs/x/config.yaml")


def test_override_wins_over_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("training:\n  batch_size: 8\ndata:\n  image_size: 64\n")
    cfg = load_config(f, overrides={"training.batch_size": 4, "data.view": None})
    assert cfg.training.batch_size == 4
    assert cfg.data.image_size == 64
    assert cfg.data.view == "PA"


@pytest.mark.parametrize(
    "overrides, needles",
    [
        ({"data.image_size": "abc"}, ["data.image_size", "'abc'", "integer"]),
        ({"data.image_size": 100}, ["data.image_size", "100", "divisible by 32"]),
        ({"data.view": "LL"}, ["data.view", "'LL'", "PA", "AP"]),
        ({"data.cahce": "memory"}, ["data.cahce", "unknown key", "cache"]),
        ({"stages": "images_1"}, ["stages", "images_1", "images_001", "part_001"]),
        ({"data.dataset": "rsna2"}, ["data.dataset", "'rsna2'", "nih, zhanglab, rsna, folder"]),
        ({"data.test_fraction": 1.0}, ["data.test_fraction", "less than 1"]),
        ({"data.images_per_stage": 0}, ["data.images_per_stage", "greater than or equal to 1"]),
        ({"training.batch_size": 0}, ["training.batch_size", "0", "greater than or equal to 1"]),
    ],
)
def test_bad_values_are_named(overrides, needles):
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=overrides)
    msg = str(exc.value)
    for n in needles:
        assert n in msg, (n, msg)
    assert "command-line flags" in msg


def test_bad_yaml_file_names_the_file(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(f)
    g = tmp_path / "list.yaml"
    g.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(g)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_stage_list_normalised():
    assert Config(stages="images_001, images_002").stages == ["images_001", "images_002"]
    assert Config(stages="part_001,part_003").stages == ["part_001", "part_003"]
    assert Config(stages="all").stages == "all"


def test_dataset_keys_and_their_defaults():
    d = load_config().data
    assert (d.dataset, d.test_fraction, d.images_per_stage) == (None, 0.2, 2500)
    assert load_config(overrides={"data.dataset": "zhanglab"}).data.dataset == "zhanglab"


def test_unknown_profile():
    with pytest.raises(ConfigError, match="local, colab"):
        load_config(profile="aws")
    assert load_config(profile="colab").out.startswith("/content/drive/MyDrive/ImgAE-Dx-Checkpoints")


def test_the_gpu_recipe_is_valid_and_builds_at_128_px():
    from imgae_dx.config import packaged_config_path
    from imgae_dx.models import create_model

    cfg = load_config(packaged_config_path("gpu.yaml"))
    assert cfg.data.image_size == 128 and cfg.training.min_images_per_run >= 64000
    for name in cfg.models:
        create_model(name, 128, cfg=getattr(cfg.model, name))
