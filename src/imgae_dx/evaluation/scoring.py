"""Re-scoring a trained run without retraining: which settings may change and how they apply.

``imgae-dx evaluate --run RUN_DIR --config OVERLAY.yaml`` scores the run's checkpoints with other
anomaly-map/score settings. An overlay has the shape of a config file but may only hold the keys
that act after training:

* ``model.<unet|ra|ae|pca>.anomaly.*`` — the map, its post-processing, the saliency and the image score;
* ``model.ra.inference_samples`` — reconstruct from μ or from sampled z;
* ``model.unet.inference_samples`` — reconstruct x itself or average the denoised corruptions of x.

Anything else (widths, losses, data, training…) would need another training run and is refused
with the keys named. The evaluation goes to its own folder (``RUN_DIR/eval-NAME``, NAME from
``--name`` or the overlay's file name) so the default ``eval/`` is never overwritten, and its
``metrics.json`` records the scoring used.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from imgae_dx.config import Config, ConfigError, deep_merge, format_validation_error, read_yaml

#: dotted keys an overlay may set (regular expressions over the flattened keys)
SCORING_KEYS: tuple[str, ...] = (r"model\.(unet|ra|ae|pca)\.anomaly\.[a-z_]+", r"model\.(unet|ra)\.inference_samples")


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def read_overlay(path: str | Path) -> dict[str, Any]:
    """The overlay file's mapping, refused (:class:`ConfigError`) if it sets any other key."""
    data = read_yaml(Path(path))
    keys = _flatten(data)
    bad = sorted(k for k in keys if not any(re.fullmatch(p, k) for p in SCORING_KEYS))
    if not keys:
        raise ConfigError(f"scoring overlay {path} sets nothing; give e.g. model.ra.anomaly.map: clahe")
    if bad:
        raise ConfigError(
            f"scoring overlay {path} changes {', '.join(bad)}: that needs another training run. "
            "An evaluation overlay may only set model.<unet|ra|ae|pca>.anomaly.* and "
            "model.<unet|ra>.inference_samples")
    return data


def apply_overlay(cfg: Config, overlay: Mapping[str, Any], origin: str = "scoring overlay") -> Config:
    """The run's configuration with the overlay's scoring settings (validated)."""
    from pydantic import ValidationError

    try:
        return Config.model_validate(deep_merge(cfg.model_dump(), overlay))
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, origin)) from None


def scoring_of(cfg: Config, models: list[str]) -> dict[str, dict[str, Any]]:
    """What each model's scores mean: its anomaly settings (and U-Net's/RA's ``inference_samples``)."""
    from imgae_dx.run.calibration import model_scoring

    return {name: model_scoring(getattr(cfg.model, name)) for name in models}


def describe(scoring: Mapping[str, Any]) -> str:
    """One line: ``map l1, score mean`` plus the settings that are not at their defaults."""
    parts = [f"map {scoring.get('map')}", f"score {scoring.get('score')}"]
    if scoring.get("map") == "ssim" and (scoring.get("ssim_window"), scoring.get("ssim_sigma")) not in (
            (11, 1.5), (None, None)):
        parts[0] += f" ({scoring.get('ssim_window')} px window, σ {scoring.get('ssim_sigma')})"
    if scoring.get("score") == "topk":
        parts[-1] += f" {scoring.get('topk_percent')} %"
    if scoring.get("saliency", "none") != "none":
        parts.append(f"saliency {scoring['saliency']} (σ {scoring.get('saliency_sigma')})")
    for k, label in (("residual_sigma", "residual smoothed σ"),
                     ("foreground_threshold", "body mask >"), ("median_filter", "median"),
                     ("smoothing_sigma", "smoothing σ"), ("inference_samples", "inference samples ×")):
        if scoring.get(k):
            parts.append(f"{label} {scoring[k]}")
    return ", ".join(parts)
