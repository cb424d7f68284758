"""What a report says about the scoring: the demo's settings named in one line each."""

from __future__ import annotations

from importlib import resources

import pytest

from imgae_dx.config import ConfigError, load_config
from imgae_dx.evaluation.scoring import describe, read_overlay, scoring_of

DEMO = resources.files("imgae_dx") / "configs" / "demo.yaml"


def test_the_demos_scoring_is_described_in_full():
    s = scoring_of(load_config(str(DEMO)), ["unet", "ra", "ae", "pca"])
    assert describe(s["unet"]) == "map ssim, score mean, inference samples × 4"
    assert describe(s["ra"]) == "map ssim, score mean"
    assert describe(s["ae"]) == describe(s["pca"]) == "map l1, score mean"


def test_an_overlay_may_set_the_unets_inference_samples_but_not_its_noise(tmp_path):
    ok = tmp_path / "ok.yaml"
    ok.write_text("model:\n  unet:\n    inference_samples: 8\n")
    assert read_overlay(ok) == {"model": {"unet": {"inference_samples": 8}}}
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  unet:\n    inference_samples: 8\n    noise_std: 0.4\n")
    with pytest.raises(ConfigError, match=r"changes model\.unet\.noise_std: that needs another training run"):
        read_overlay(bad)
