"""Detection metrics for anomaly scores: point estimates, patient bootstrap, DeLong, localisation.

Pure numpy / scipy (scikit-learn is the reference the tests compare against). Conventions:

- ``y`` is a 1-D int array of labels (1 = abnormal, the positive class), ``s`` a 1-D float array
  of anomaly scores (higher = more anomalous), same length N.
- A metric that is undefined (one class absent) is ``nan``; :func:`json_safe` turns it into ``null``.
- Operating-point metrics (FPR at 95 % TPR, sensitivity at 90 % specificity, F1-max) are read off
  the empirical curve without interpolation. F1-max picks its threshold *on the data it reports*, so
  it is an optimistic (oracle) summary; it is never used to choose a threshold for anything else.

Every curve statistic is computed from one sort of the scores and weighted cumulative sums, so the
patient bootstrap (which only changes per-image weights) costs O(N) per resample.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

CURVE_METRICS: tuple[str, ...] = (
    "auroc",
    "auprc",
    "f1_max",
    "fpr_at_95_tpr",
    "sensitivity_at_90_specificity",
)
ROC_GRID = np.linspace(0.0, 1.0, 201)


# ------------------------------------------------------------------------------ input checks
def _as_xy(y: Any, s: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(np.int64).ravel()
    s = np.asarray(s, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.shape[0]}) and scores ({s.shape[0]}) differ in length")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (normal) or 1 (abnormal)")
    if not np.isfinite(s).all():
        raise ValueError(f"{int((~np.isfinite(s)).sum())} scores are NaN or infinite")
    return y, s


# ------------------------------------------------------------------------------ weighted curve
class _SortedScores:
    """Scores sorted once (descending) with the indices of distinct thresholds.

    ``counts(w)`` gives the weighted true/false positive counts at every distinct threshold
    (predict abnormal when score >= threshold) for per-image weights ``w`` (N,).
    """

    def __init__(self, y: np.ndarray, s: np.ndarray) -> None:
        self.order = np.argsort(-s, kind="mergesort")
        s_sorted = s[self.order]
        self.y_sorted = y[self.order].astype(np.float64)
        distinct = np.flatnonzero(np.diff(s_sorted))
        self.thr_idx = np.r_[distinct, s_sorted.size - 1]
        self.thresholds = s_sorted[self.thr_idx]

    def counts(self, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        if w is None:
            wp, wn = self.y_sorted, 1.0 - self.y_sorted
        else:
            ws = w[self.order]
            wp, wn = ws * self.y_sorted, ws * (1.0 - self.y_sorted)
        return np.cumsum(wp)[self.thr_idx], np.cumsum(wn)[self.thr_idx]


def _curve_metrics(tps: np.ndarray, fps: np.ndarray) -> dict[str, float]:
    """All of :data:`CURVE_METRICS` from cumulative counts at descending thresholds."""
    nan = dict.fromkeys(CURVE_METRICS, math.nan)
    if tps.size == 0:
        return nan
    p, n = tps[-1], fps[-1]
    if p <= 0 or n <= 0:
        return nan
    tpr = np.r_[0.0, tps / p]
    fpr = np.r_[0.0, fps / n]
    auroc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0)
    ps = tps + fps
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(ps > 0, tps / np.where(ps > 0, ps, 1.0), 1.0)
    recall = tps / p
    auprc = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    denom = precision + recall
    f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1.0), 0.0)
    i95 = int(np.searchsorted(tpr, 0.95 - 1e-12, side="left"))  # first point with TPR >= 0.95
    i90 = int(np.searchsorted(fpr, 0.10 + 1e-12, side="right")) - 1  # last point with FPR <= 0.10
    return {
        "auroc": auroc,
        "auprc": auprc,
        "f1_max": float(f1.max()),
        "fpr_at_95_tpr": float(fpr[min(i95, fpr.size - 1)]),
        "sensitivity_at_90_specificity": float(tpr[max(i90, 0)]),
    }


def binary_metrics(y: Any, s: Any) -> dict[str, float]:
    """AUROC, AUPRC (average precision), F1-max, FPR at 95 % TPR, sensitivity at 90 % specificity.

    Args:
        y: (N,) labels, 1 = abnormal.
        s: (N,) anomaly scores, higher = more anomalous.
    """
    y, s = _as_xy(y, s)
    if y.size == 0:
        return dict.fromkeys(CURVE_METRICS, math.nan)
    return _curve_metrics(*_SortedScores(y, s).counts())


def auroc(y: Any, s: Any) -> float:
    """Area under the ROC curve (ties count one half); ``nan`` when one class is absent."""
    return binary_metrics(y, s)["auroc"]


def auprc(y: Any, s: Any) -> float:
    """Average precision (step-wise area under the precision-recall curve, as scikit-learn)."""
    return binary_metrics(y, s)["auprc"]


def _curves_on_grid(tps: np.ndarray, fps: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TPR at each FPR of ``grid`` (best TPR with FPR <= g) and precision at each recall of ``grid``
    (precision of the first threshold reaching that recall)."""
    p, n = tps[-1], fps[-1]
    tpr = np.r_[0.0, tps / p]
    fpr = np.r_[0.0, fps / n]
    roc = tpr[np.searchsorted(fpr, grid + 1e-12, side="right") - 1]
    recall = tps / p
    precision = tps / np.maximum(tps + fps, 1e-300)
    j = np.minimum(np.searchsorted(recall, grid - 1e-12, side="left"), recall.size - 1)
    pr = precision[j]
    return roc, pr


# ------------------------------------------------------------------------------ bootstrap
def _patient_codes(groups: Any, n: int) -> tuple[np.ndarray, int]:
    if groups is None:
        return np.arange(n), n
    g = np.asarray(groups).ravel()
    if g.size != n:
        raise ValueError(f"groups ({g.size}) and scores ({n}) differ in length")
    _, codes = np.unique(g, return_inverse=True)
    return codes.astype(np.int64), int(codes.max()) + 1 if n else 0


@dataclass
class BootstrapResult:
    """Patient-resampling bootstrap of every curve metric for several models scored on one set.

    ``samples[model][metric]`` is (B,) (``nan`` where a resample lacked a class); ``diffs[(a, b)]``
    the paired AUROC differences a − b; ``roc_band[model]`` / ``pr_band[model]`` are (B, G) curves
    on :data:`ROC_GRID`.
    """

    n_resamples: int
    seed: int
    n_patients: int
    samples: dict[str, dict[str, np.ndarray]]
    roc_band: dict[str, np.ndarray]
    pr_band: dict[str, np.ndarray]
    skipped: int

    def ci(self, model: str, metric: str, level: float = 0.95) -> tuple[float, float]:
        v = self.samples[model][metric]
        v = v[np.isfinite(v)]
        if v.size == 0:
            return (math.nan, math.nan)
        a = (1 - level) / 2 * 100
        lo, hi = np.percentile(v, [a, 100 - a])
        return float(lo), float(hi)

    def paired_diff(self, a: str, b: str, metric: str = "auroc") -> np.ndarray:
        d = self.samples[a][metric] - self.samples[b][metric]
        return d[np.isfinite(d)]

    def paired_p_value(self, a: str, b: str, metric: str = "auroc") -> float:
        """Two-sided bootstrap p-value of "metric(a) = metric(b)" from the paired resamples."""
        d = self.paired_diff(a, b, metric)
        if d.size == 0:
            return math.nan
        le = (1 + np.sum(d <= 0)) / (d.size + 1)
        ge = (1 + np.sum(d >= 0)) / (d.size + 1)
        return float(min(1.0, 2 * min(le, ge)))

    def band(self, model: str, kind: str = "roc", level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        arr = (self.roc_band if kind == "roc" else self.pr_band)[model]
        arr = arr[np.isfinite(arr).all(axis=1)]
        if arr.size == 0:
            nan = np.full(ROC_GRID.size, math.nan)
            return nan, nan
        a = (1 - level) / 2 * 100
        return np.percentile(arr, a, axis=0), np.percentile(arr, 100 - a, axis=0)


def patient_bootstrap(
    y: Any,
    scores: Mapping[str, Any],
    groups: Any = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> BootstrapResult:
    """Resample *patients* with replacement (all of a patient's images go together).

    The same resampled patients are used for every model, so differences are paired. Seeded:
    the same inputs and seed give identical results.

    Args:
        y: (N,) labels. scores: model name → (N,) scores. groups: (N,) patient ids (None = images
            are independent). n_resamples: B. seed: RNG seed.
    """
    names = list(scores)
    if not names:
        raise ValueError("no model scores to bootstrap")
    y0, _ = _as_xy(y, np.zeros(np.asarray(y).size))
    sorted_ = {m: _SortedScores(*_as_xy(y0, scores[m])) for m in names}
    codes, n_pat = _patient_codes(groups, y0.size)
    rng = np.random.default_rng(seed)
    samples = {m: {k: np.full(n_resamples, math.nan) for k in CURVE_METRICS} for m in names}
    roc_band = {m: np.full((n_resamples, ROC_GRID.size), math.nan) for m in names}
    pr_band = {m: np.full((n_resamples, ROC_GRID.size), math.nan) for m in names}
    skipped = 0
    for b in range(n_resamples):
        if n_pat == 0:
            skipped += 1
            continue
        counts = np.bincount(rng.integers(0, n_pat, n_pat), minlength=n_pat).astype(np.float64)
        w = counts[codes]
        pos = float(w @ y0)
        if pos <= 0 or pos >= w.sum():
            skipped += 1
            continue
        for m in names:
            tps, fps = sorted_[m].counts(w)
            for k, v in _curve_metrics(tps, fps).items():
                samples[m][k][b] = v
            roc_band[m][b], pr_band[m][b] = _curves_on_grid(tps, fps, ROC_GRID)
    return BootstrapResult(n_resamples, seed, n_pat, samples, roc_band, pr_band, skipped)


# ------------------------------------------------------------------------------ DeLong
@dataclass
class DeLongResult:
    """DeLong et al. (1988) test of two correlated AUROCs measured on the same images."""

    auc_a: float
    auc_b: float
    diff: float
    se: float
    z: float
    p_value: float
    var_a: float
    var_b: float
    cov_ab: float


def _structural_components(y: np.ndarray, s: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Fast DeLong (Sun & Xu 2014): AUC, V10 (per positive) and V01 (per negative) via midranks."""
    pos, neg = s[y == 1], s[y == 0]
    m, n = pos.size, neg.size
    tx = stats.rankdata(pos)
    ty = stats.rankdata(neg)
    tz = stats.rankdata(np.r_[pos, neg])
    auc = (tz[:m].sum() / m - (m + 1) / 2.0) / n
    v10 = (tz[:m] - tx) / n
    v01 = 1.0 - (tz[m:] - ty) / m
    return float(auc), v10, v01


def delong_test(y: Any, s_a: Any, s_b: Any) -> DeLongResult:
    """Paired two-sided DeLong test of AUROC(s_a) = AUROC(s_b) on the same labelled images.

    Treats images as independent (patients with several images make it slightly optimistic; the
    patient bootstrap in :func:`patient_bootstrap` does not assume that).
    """
    y, s_a = _as_xy(y, s_a)
    _, s_b = _as_xy(y, s_b)
    m, n = int((y == 1).sum()), int((y == 0).sum())
    if m < 2 or n < 2:
        nan = math.nan
        return DeLongResult(nan, nan, nan, nan, nan, nan, nan, nan, nan)
    a, v10a, v01a = _structural_components(y, s_a)
    b, v10b, v01b = _structural_components(y, s_b)
    s10 = np.cov(np.vstack([v10a, v10b]))
    s01 = np.cov(np.vstack([v01a, v01b]))
    cov = s10 / m + s01 / n
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = a - b
    if var <= 1e-15:
        z = 0.0 if abs(diff) < 1e-15 else math.copysign(math.inf, diff)
        p = 1.0 if abs(diff) < 1e-15 else 0.0
        se = 0.0
    else:
        se = math.sqrt(var)
        z = diff / se
        p = float(2 * stats.norm.sf(abs(z)))
    return DeLongResult(a, b, diff, se, z, p, float(cov[0, 0]), float(cov[1, 1]), float(cov[0, 1]))


def delong_ci(y: Any, s: Any, level: float = 0.95) -> tuple[float, float]:
    """Normal-approximation DeLong interval of one AUROC (clipped to [0, 1])."""
    y, s = _as_xy(y, s)
    if (y == 1).sum() < 2 or (y == 0).sum() < 2:
        return (math.nan, math.nan)
    auc, v10, v01 = _structural_components(y, s)
    var = v10.var(ddof=1) / v10.size + v01.var(ddof=1) / v01.size
    h = stats.norm.ppf(0.5 + level / 2) * math.sqrt(max(var, 0.0))
    return max(0.0, auc - h), min(1.0, auc + h)


# ------------------------------------------------------------------------------ subgroups
def per_finding_auroc(
    findings: Sequence[Iterable[str]], y: Any, s: Any, min_count: int = 1
) -> dict[str, dict[str, Any]]:
    """AUROC of each finding's images vs the normal images, with counts.

    Args:
        findings: per image, the findings (empty or ``("No Finding",)`` for normals).
        y, s: (N,) labels and scores. min_count: findings with fewer images get ``auroc: nan``.
    Returns:
        finding → {"auroc", "n_pos", "n_neg"}, sorted by finding name.
    """
    y, s = _as_xy(y, s)
    if len(findings) != y.size:
        raise ValueError(f"findings ({len(findings)}) and scores ({y.size}) differ in length")
    normal = y == 0
    by: dict[str, list[int]] = {}
    for i, fs in enumerate(findings):
        if y[i] == 1:
            for f in fs:
                if f and f != "No Finding":
                    by.setdefault(f, []).append(i)
    out: dict[str, dict[str, Any]] = {}
    n_neg = int(normal.sum())
    for f in sorted(by):
        idx = np.asarray(by[f])
        ok = idx.size >= min_count and n_neg > 0
        yy = np.r_[np.ones(idx.size, np.int64), np.zeros(n_neg, np.int64)]
        ss = np.r_[s[idx], s[normal]]
        out[f] = {"auroc": auroc(yy, ss) if ok else math.nan, "n_pos": int(idx.size), "n_neg": n_neg}
    return out


def auroc_by_group(groups: Sequence[Any], y: Any, s: Any) -> dict[str, dict[str, Any]]:
    """AUROC within each group (e.g. view position), with positive/negative counts."""
    y, s = _as_xy(y, s)
    g = np.asarray([str(v) for v in groups])
    out: dict[str, dict[str, Any]] = {}
    for v in sorted(set(g.tolist())):
        mask = g == v
        out[v] = {
            "auroc": auroc(y[mask], s[mask]),
            "n_pos": int(y[mask].sum()),
            "n_neg": int((y[mask] == 0).sum()),
        }
    return out
