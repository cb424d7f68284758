"""A run's identity: the configuration keys that define it, its fingerprint, and differences.

A resumed run must be the same run: every configuration key except :data:`RESUMABLE_KEYS` (speed,
I/O and reporting knobs) is part of its identity. Checkpoints carry the fingerprint; the run
folder's ``config.yaml`` is compared key by key to say what differs.

A key added by a later version (:data:`ADDED_KEYS`) counts only when it is set to something else
than the value that reproduces the earlier behaviour (or to null, which is how a ``config.yaml``
written before the key existed reads it): a run started before an upgrade keeps its fingerprint
and resumes after it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

# Config keys that may change between a run and its resume (speed, I/O and reporting knobs);
# every other key is part of the run's identity.
RESUMABLE_KEYS: tuple[str, ...] = (
    "out",
    "logging",
    "evaluation",
    "training.device",
    "training.compile",
    "training.cudnn_benchmark",
    "training.tf32",
    "training.dist_backend",
    "training.checkpoint_every_steps",
    "training.checkpoint_every_minutes",
    "training.log_every_steps",
    "training.live_plot_every_s",
    "training.memory_check_every_steps",
    "data.requests_in_flight",
    "data.decode_workers",
    "data.cache",
    "data.cache_dir",
    "data.memory_budget_mb",
    "data.index_cache_dir",
    "data.http",
)


# Keys added after runs already existed, with the value that means "as before the key existed".
# Append new keys here (never remove one): at that value they are left out of the identity.
ADDED_KEYS: dict[str, Any] = {
    "model.unet.inference_samples": 0,
    "model.unet.inference_noise_seed": 0,
    "training.min_images_per_run": 0,
    "data.resize": "squash",
    "data.dataset": "nih",  # null in a config.yaml from before datasets: NIH, the only one then
    "data.test_fraction": 0.2,
    "data.images_per_stage": 2500,
    "model.pca.components": None,
    **{f"model.{m}.anomaly.border": 0.0 for m in ("unet", "ra", "ae", "pca")},
    **{f"model.{m}.input.{k}": v for m in ("unet", "ra", "ae", "pca")
       for k, v in (("normalise", "none"), ("clahe_clip", 2.0), ("clahe_tiles", 8),
                    ("robust_percentiles", [1.0, 99.0]))},
}


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def identity_items(config_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The flattened config keys that define a run (everything not in :data:`RESUMABLE_KEYS`)."""
    flat = _flatten(config_dict)
    return {
        k: v
        for k, v in sorted(flat.items())
        if not any(k == r or k.startswith(r + ".") for r in RESUMABLE_KEYS)
        and not (k in ADDED_KEYS and (v == ADDED_KEYS[k] or v is None))
    }


def config_fingerprint(config_dict: Mapping[str, Any]) -> str:
    """SHA-256 of the run-defining configuration (JSON-mode dump of :class:`Config`)."""
    blob = json.dumps(identity_items(config_dict), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human-readable ``key: old → new`` lines for run-defining keys that differ."""
    a, b = identity_items(old), identity_items(new)
    lines = []
    for k in sorted(set(a) | set(b)):
        va, vb = (d.get(k, ADDED_KEYS.get(k, "<unset>")) for d in (a, b))
        if va != vb:
            lines.append(f"{k}: {va!r} → {vb!r}")
    return lines
