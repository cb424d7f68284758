"""A run's identity survives upgrades: a run started by an earlier version resumes after it."""

from __future__ import annotations

from pathlib import Path

from imgae_dx.config import config_from_yaml_text
from imgae_dx.run.identity import ADDED_KEYS, config_differences, config_fingerprint
from imgae_dx.training import run_folder

DATA = Path(__file__).parent / "data"
# config.yaml of the demo as version 3046cb0 wrote it, and the fingerprint its checkpoints carry
OLD_CONFIG = DATA / "config_3046cb0.yaml"
OLD_FINGERPRINT = "822b8451cae7fdada2880459c5706f0501ede6cb70671809e2bb4e88f94f93fe"


def _reloaded(text: str) -> dict:
    """What resume does with a run folder's config.yaml: validate it with this version's schema."""
    return run_folder.config_dict(config_from_yaml_text(text, "config.yaml"))


def test_an_earlier_versions_run_keeps_its_fingerprint():
    old = _reloaded(OLD_CONFIG.read_text())
    # keys added since fill in at the values that mean "as before": no difference, same fingerprint
    assert config_fingerprint(old) == OLD_FINGERPRINT, (
        "a config key added since 3046cb0 changes the identity of earlier runs: list it in "
        "imgae_dx.run.identity.ADDED_KEYS with the value that keeps the earlier behaviour")
    assert config_differences(old, old) == []


def test_an_added_key_counts_once_it_is_set():
    old = _reloaded(OLD_CONFIG.read_text())
    assert ADDED_KEYS["model.unet.inference_samples"] == 0
    changed = _reloaded(OLD_CONFIG.read_text().replace("    noise_std: 0.2\n",
                                                       "    noise_std: 0.2\n    inference_samples: 4\n", 1))
    assert changed["model"]["unet"]["inference_samples"] == 4
    assert config_fingerprint(changed) != OLD_FINGERPRINT
    assert config_differences(old, changed) == ["model.unet.inference_samples: 0 → 4"]


def test_a_run_saved_before_data_resize_keeps_squash(tmp_path):
    from imgae_dx.config import load_config

    assert load_config().data.resize == "crop"  # today's default, for new runs
    old = _reloaded(OLD_CONFIG.read_text())
    assert "resize" not in OLD_CONFIG.read_text() and old["data"]["resize"] == "squash"
    # `train --resume` re-reads the run's own config.yaml the same way: no difference, same fingerprint
    saved = tmp_path / "config.yaml"
    saved.write_text(OLD_CONFIG.read_text())
    resumed = run_folder.config_dict(load_config(saved, saved_run=True))
    assert resumed["data"]["resize"] == "squash" and config_differences(old, resumed) == []
    assert config_fingerprint(resumed) == OLD_FINGERPRINT
    # the same file given as a user config is a new run's settings: today's default
    assert load_config(saved).data.resize == "crop"
    assert config_differences(old, run_folder.config_dict(load_config(saved))) == ["data.resize: 'squash' → 'crop'"]


def test_runs_from_before_datasets_keep_their_fingerprint_once_the_dataset_is_resolved():
    old = _reloaded(OLD_CONFIG.read_text())
    assert old["data"]["dataset"] == "nih"  # the key did not exist: read as its earlier value
    resolved = dict(old, data={**old["data"], "dataset": "nih"})  # what the trainer writes now
    assert config_fingerprint(resolved) == OLD_FINGERPRINT
    assert config_differences(old, resolved) == []
    other = dict(old, data={**old["data"], "dataset": "zhanglab", "images_per_stage": 100})
    assert config_fingerprint(other) != OLD_FINGERPRINT
    assert config_differences(resolved, other) == ["data.dataset: 'nih' → 'zhanglab'",
                                                   "data.images_per_stage: 2500 → 100"]
