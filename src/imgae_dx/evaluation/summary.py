"""The whole evaluation summary of one run: every metric per model, the comparisons, the counts.

:func:`summarise_scores` turns the test scores (and localisation rows) into the typed parts of
``eval/metrics.json`` (:mod:`imgae_dx.evaluation.results`): a :class:`ScoreSummary`. Undefined
values (an AUROC with one class absent, intervals without bootstrap) are None.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
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
from imgae_dx.evaluation.results import (
    NO_INTERVAL,
    Bootstrap,
    Comparison,
    Counts,
    Curves,
    FindingLocalisation,
    Localisation,
    ModelResult,
    SubgroupAUROC,
    finite,
    interval,
)


@dataclass(frozen=True)
class ScoreSummary:
    """What the test scores alone give: per-model results (without checkpoint and operating
    point), the paired comparisons, the counts and the bootstrap settings."""

    models: dict[str, ModelResult]
    comparisons: list[Comparison]
    counts: Counts
    bootstrap: Bootstrap


def _values(a: Any) -> list[float | None]:
    return [finite(v) for v in np.asarray(a, dtype=np.float64).tolist()]


def _subgroups(groups: Mapping[str, Mapping[str, Any]]) -> dict[str, SubgroupAUROC]:
    return {g: SubgroupAUROC(finite(v["auroc"]), int(v["n_pos"]), int(v["n_neg"])) for g, v in groups.items()}


def _localisation(rows: Sequence[Mapping[str, Any]]) -> Localisation:
    s = summarise_localisation(rows)
    if not s["n_boxes"]:
        return Localisation(n_images=int(s["n_images"]))
    return Localisation(
        n_boxes=int(s["n_boxes"]), n_images=int(s["n_images"]), hit_rate=finite(s["hit_rate"]),
        mean_hit_chance=finite(s["mean_hit_chance"]), mean_top_share=finite(s["mean_top_share"]),
        mean_area_share=finite(s["mean_area_share"]), mean_pixel_auroc=finite(s["mean_pixel_auroc"]),
        per_finding={f: FindingLocalisation(int(v["n_boxes"]), finite(v["hit_rate"]),
                                            finite(v["mean_pixel_auroc"]))
                     for f, v in s["per_finding"].items()})


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
) -> ScoreSummary:
    """The per-model results, comparisons and counts of ``eval/metrics.json`` from per-image
    labels and scores.

    Args:
        labels: (N,) 0 = normal, 1 = abnormal. scores: model → (N,) scores.
        patients: (N,) patient ids (bootstrap unit; None = images independent).
        views: (N,) view positions. findings: (N,) per-image finding tuples.
        localisation: model → :func:`box_localisation` rows (with ``image``, ``finding``).
        n_bootstrap: resamples (0 = no intervals). seed: bootstrap seed.
        compare: model pairs to test; default: every pair in the given order (``unet`` vs ``ra``
            first when both exist).
    """
    y = np.asarray(labels).astype(np.int64).ravel()
    names = list(scores)
    arrays = {m: _as_xy(y, scores[m])[1] for m in names}
    boot = (
        patient_bootstrap(y, arrays, patients, n_bootstrap, seed)
        if n_bootstrap > 0 and y.size
        else None
    )
    models: dict[str, ModelResult] = {}
    for m in names:
        s = arrays[m]
        point = binary_metrics(y, s)
        curves = None
        if y.size and 0 < y.sum() < y.size:
            tps, fps = _SortedScores(y, s).counts()
            roc, pr = _curves_on_grid(tps, fps, ROC_GRID)
            roc_lo, roc_hi = boot.band(m, "roc") if boot else (roc * math.nan, roc * math.nan)
            pr_lo, pr_hi = boot.band(m, "pr") if boot else (pr * math.nan, pr * math.nan)
            curves = Curves(grid=ROC_GRID.tolist(), roc_tpr=_values(roc), roc_lo=_values(roc_lo),
                            roc_hi=_values(roc_hi), pr_precision=_values(pr), pr_lo=_values(pr_lo),
                            pr_hi=_values(pr_hi))
        models[m] = ModelResult(
            **{k: finite(point[k]) for k in CURVE_METRICS},
            **{f"{k}_ci": interval(boot.ci(m, k)) if boot else NO_INTERVAL for k in CURVE_METRICS},
            auroc_delong_ci=interval(delong_ci(y, s)),
            curves=curves,
            per_finding=_subgroups(per_finding_auroc(findings, y, s)) if findings is not None else None,
            by_view=_subgroups(auroc_by_group(views, y, s)) if views is not None else None,
            localisation=_localisation(localisation.get(m, [])) if localisation is not None else None,
        )
    if compare is None:
        order = sorted(names, key=lambda n: (n not in ("unet", "ra"), n != "unet"))
        compare = [(a, b) for i, a in enumerate(order) for b in order[i + 1:]]
    comparisons = []
    for a, b in compare:
        d = delong_test(y, arrays[a], arrays[b])
        diffs = boot.paired_diff(a, b) if boot else np.zeros(0)
        comparisons.append(Comparison(
            a=a, b=b, metric="auroc", auroc_a=finite(d.auc_a), auroc_b=finite(d.auc_b), diff=finite(d.diff),
            diff_ci=interval(np.percentile(diffs, [2.5, 97.5])) if diffs.size else NO_INTERVAL,
            delong_z=finite(d.z), delong_p=finite(d.p_value),
            bootstrap_p=finite(boot.paired_p_value(a, b)) if boot else None,
            p_value=finite(d.p_value),
            test="DeLong (paired, two-sided); bootstrap_p: paired patient bootstrap",
        ))
    by_view = None
    if views is not None:
        groups, n = np.unique(np.asarray([str(x) for x in views]), return_counts=True) if len(views) else ((), ())
        by_view = {str(v): int(c) for v, c in zip(groups, n, strict=True)}
    counts = Counts(images=int(y.size), normal=int((y == 0).sum()), abnormal=int((y == 1).sum()),
                    patients=len(set(patients)) if patients is not None else int(y.size), by_view=by_view)
    return ScoreSummary(
        models=models, comparisons=comparisons, counts=counts,
        bootstrap=Bootstrap(resamples=n_bootstrap, seed=seed, unit="patient" if patients is not None else "image",
                            skipped_resamples=boot.skipped if boot else 0, level=0.95),
    )
