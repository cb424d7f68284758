"""The whole evaluation summary of one run: every metric per model, the comparisons, JSON.

:func:`summarise_scores` turns the test scores (and localisation rows) into the content of
``eval/metrics.json``; :func:`best_by_auroc` picks the model with the highest test AUROC (a
description of the results, not a selection: nothing is tuned on the test split).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from imgae_dx.evaluation.localisation import summarise_localisation
from imgae_dx.evaluation.metrics import (
    CURVE_METRICS,
    ROC_GRID,
    _as_xy,
    _curves_on_grid,
    _SortedScores,
    auroc_by_group,
    binary_metrics,
    delong_ci,
    delong_test,
    patient_bootstrap,
    per_finding_auroc,
)


def summarise_scores(
    labels: Any,
    scores: Mapping[str, Any],
    *,
    patients: Sequence[Any] | None = None,
    views: Sequence[Any] | None = None,
    findings: Sequence[Iterable[str]] | None = None,
    localisation: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    compare: Sequence[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """Everything ``eval/metrics.json`` holds, computed from per-image labels and scores.

    Args:
        labels: (N,) 0 = normal, 1 = abnormal. scores: model → (N,) scores.
        patients: (N,) patient ids (bootstrap unit; None = images independent).
        views: (N,) view positions. findings: (N,) per-image finding tuples.
        localisation: model → :func:`box_localisation` rows (with ``image``, ``finding``).
        n_bootstrap: resamples (0 = no intervals). seed: bootstrap seed.
        compare: model pairs to test; default: every pair in the given order (``unet`` vs ``ra``
            first when both exist).
    Returns:
        ``{"models": {m: {...}}, "comparison": {...} | None, "comparisons": [...], "counts": {...},
        "bootstrap": {...}}`` (may contain ``nan``: pass through :func:`json_safe` for JSON).
    """
    y = np.asarray(labels).astype(np.int64).ravel()
    names = list(scores)
    arrays = {m: _as_xy(y, scores[m])[1] for m in names}
    boot = (
        patient_bootstrap(y, arrays, patients, n_bootstrap, seed)
        if n_bootstrap > 0 and y.size
        else None
    )
    models: dict[str, Any] = {}
    for m in names:
        s = arrays[m]
        entry: dict[str, Any] = dict(binary_metrics(y, s))
        for k in CURVE_METRICS:
            entry[f"{k}_ci"] = list(boot.ci(m, k)) if boot else [math.nan, math.nan]
        entry["auroc_delong_ci"] = list(delong_ci(y, s))
        if y.size and 0 < y.sum() < y.size:
            tps, fps = _SortedScores(y, s).counts()
            roc, pr = _curves_on_grid(tps, fps, ROC_GRID)
            roc_lo, roc_hi = boot.band(m, "roc") if boot else (roc * math.nan, roc * math.nan)
            pr_lo, pr_hi = boot.band(m, "pr") if boot else (pr * math.nan, pr * math.nan)
            entry["curves"] = {
                "grid": ROC_GRID, "roc_tpr": roc, "roc_lo": roc_lo, "roc_hi": roc_hi,
                "pr_precision": pr, "pr_lo": pr_lo, "pr_hi": pr_hi,
            }
        if findings is not None:
            entry["per_finding"] = per_finding_auroc(findings, y, s)
        if views is not None:
            entry["by_view"] = auroc_by_group(views, y, s)
        if localisation is not None:
            entry["localisation"] = summarise_localisation(localisation.get(m, []))
        models[m] = entry
    if compare is None:
        order = sorted(names, key=lambda n: (n not in ("unet", "ra"), n != "unet"))
        compare = [(a, b) for i, a in enumerate(order) for b in order[i + 1:]]
    comparisons = []
    for a, b in compare:
        d = delong_test(y, arrays[a], arrays[b])
        comparisons.append({
            "a": a, "b": b, "metric": "auroc",
            "auroc_a": d.auc_a, "auroc_b": d.auc_b, "diff": d.diff,
            "diff_ci": list(np.percentile(boot.paired_diff(a, b), [2.5, 97.5]))
            if boot and boot.paired_diff(a, b).size else [math.nan, math.nan],
            "delong_z": d.z, "delong_p": d.p_value,
            "bootstrap_p": boot.paired_p_value(a, b) if boot else math.nan,
            "p_value": d.p_value,
            "test": "DeLong (paired, two-sided); bootstrap_p: paired patient bootstrap",
        })
    n_pat = len(set(patients)) if patients is not None else int(y.size)
    counts: dict[str, Any] = {
        "images": int(y.size), "normal": int((y == 0).sum()), "abnormal": int((y == 1).sum()),
        "patients": n_pat,
    }
    if views is not None:
        counts["by_view"] = {str(v): int(c) for v, c in zip(*np.unique(np.asarray([str(x) for x in views]), return_counts=True), strict=True)} if len(views) else {}
    return {
        "models": models,
        "comparison": comparisons[0] if comparisons else None,
        "comparisons": comparisons,
        "counts": counts,
        "bootstrap": {
            "resamples": n_bootstrap, "seed": seed, "unit": "patient" if patients is not None else "image",
            "skipped_resamples": boot.skipped if boot else 0, "level": 0.95,
        },
    }


# ------------------------------------------------------------------------------ JSON
def best_by_auroc(metrics: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The model of ``eval/metrics.json`` with the highest test AUROC, or None when none has one."""
    scored = {n: m for n, m in (metrics.get("models") or {}).items() if m.get("auroc") is not None}
    return max(scored.items(), key=lambda kv: kv[1]["auroc"]) if scored else None


def json_safe(obj: Any) -> Any:
    """Recursively convert numpy scalars/arrays to Python and non-finite floats to ``None``."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj
