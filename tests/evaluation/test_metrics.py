"""Metrics against scikit-learn and hand-computed values; bootstrap and DeLong behaviour."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from imgae_dx.evaluation import localisation, metrics, summary
from imgae_dx.evaluation.results import Counts, json_safe


def _vectors(seed: int, n: int = 300, ties: bool = True):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(int)
    y[:2] = [0, 1]
    s = rng.normal(size=n) + 0.9 * y
    if ties:
        s = np.round(s, 1)  # many tied scores
    return y, s


@pytest.mark.parametrize("seed", range(6))
def test_binary_metrics_match_sklearn(seed):
    y, s = _vectors(seed, n=50 + 40 * seed, ties=seed % 2 == 0)
    m = metrics.binary_metrics(y, s)
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert m["auprc"] == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    p, r, _ = skm.precision_recall_curve(y, s)
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0.0)
    assert m["f1_max"] == pytest.approx(f1.max(), abs=1e-12)
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    assert m["fpr_at_95_tpr"] == pytest.approx(fpr[tpr >= 0.95].min(), abs=1e-12)
    assert m["sensitivity_at_90_specificity"] == pytest.approx(tpr[fpr <= 0.10].max(), abs=1e-12)


def test_fixed_vector_values():
    # 4 positives, 4 negatives, one tie across classes (0.5): pairs won 4 + 4 + 3.5 + 3 of 16
    y = [1, 1, 1, 1, 0, 0, 0, 0]
    s = [0.9, 0.8, 0.5, 0.3, 0.5, 0.2, 0.1, 0.05]
    m = metrics.binary_metrics(y, s)
    assert m["auroc"] == pytest.approx(14.5 / 16)
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, s))
    # TPR reaches 1.0 only at threshold 0.3, where FPR = 1/4
    assert m["fpr_at_95_tpr"] == pytest.approx(0.25)
    # FPR <= 0.10 allows no false positive: the best TPR there is 2/4
    assert m["sensitivity_at_90_specificity"] == pytest.approx(0.5)


def test_weighted_curve_matches_sklearn_sample_weight():
    y, s = _vectors(7, n=200)
    w = np.random.default_rng(0).integers(0, 4, y.size).astype(float)
    got = metrics._curve_metrics(*metrics._SortedScores(y, s).counts(w))
    assert got["auroc"] == pytest.approx(skm.roc_auc_score(y, s, sample_weight=w), abs=1e-12)
    assert got["auprc"] == pytest.approx(skm.average_precision_score(y, s, sample_weight=w), abs=1e-9)


def test_undefined_metrics_are_nan_and_json_null():
    m = metrics.binary_metrics([0, 0, 0], [0.1, 0.2, 0.3])
    assert all(math.isnan(v) for v in m.values())
    assert json.loads(json.dumps(json_safe({"m": m, "a": np.arange(2)})))["m"]["auroc"] is None
    with pytest.raises(ValueError, match="differ in length"):
        metrics.binary_metrics([0, 1], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        metrics.binary_metrics([0, 1], [0.1, float("nan")])


# ------------------------------------------------------------------------------ bootstrap
def test_bootstrap_ci_contains_estimate_and_is_seeded():
    y, s = _vectors(1, n=400)
    pats = np.arange(y.size) // 2
    a = metrics.patient_bootstrap(y, {"m": s}, pats, n_resamples=300, seed=5)
    b = metrics.patient_bootstrap(y, {"m": s}, pats, n_resamples=300, seed=5)
    c = metrics.patient_bootstrap(y, {"m": s}, pats, n_resamples=300, seed=6)
    point = metrics.binary_metrics(y, s)
    for k in metrics.CURVE_METRICS:
        lo, hi = a.ci("m", k)
        assert lo <= point[k] <= hi, k
        assert a.ci("m", k) == b.ci("m", k)
    assert a.ci("m", "auroc") != c.ci("m", "auroc")
    assert a.n_patients == 200


def test_bootstrap_resamples_patients_not_images():
    """Each patient's images are duplicates: resampling images would understate the spread."""
    y0, s0 = _vectors(2, n=150)
    rep = 6
    y, s = np.repeat(y0, rep), np.repeat(s0, rep) + np.random.default_rng(0).normal(0, 1e-6, y0.size * rep)
    pats = np.repeat(np.arange(y0.size), rep)
    by_patient = metrics.patient_bootstrap(y, {"m": s}, pats, 400, seed=0)
    by_image = metrics.patient_bootstrap(y, {"m": s}, None, 400, seed=0)
    w_pat = np.subtract(*by_patient.ci("m", "auroc")[::-1])
    w_img = np.subtract(*by_image.ci("m", "auroc")[::-1])
    assert w_pat > 1.8 * w_img  # ≈ sqrt(6) wider


# ------------------------------------------------------------------------------ DeLong
def test_delong_hand_computed():
    # positives p1, p2; negatives n1, n2 (see the derivation in the test's comment)
    y = [1, 1, 0, 0]
    a = [3.0, 2.0, 1.0, 2.5]  # AUC 0.75; V10 = [1, .5], V01 = [1, .5]
    b = [0.5, 3.0, 1.0, 2.0]  # AUC 0.50; V10 = [0, 1],  V01 = [.5, .5]
    r = metrics.delong_test(y, a, b)
    assert r.auc_a == pytest.approx(0.75) and r.auc_b == pytest.approx(0.5)
    assert r.var_a == pytest.approx(0.125)  # .125/2 + .125/2
    assert r.var_b == pytest.approx(0.25)  # .5/2 + 0/2
    assert r.cov_ab == pytest.approx(-0.125)  # -.25/2 + 0/2
    assert r.se == pytest.approx(math.sqrt(0.625))
    assert r.p_value == pytest.approx(2 * stats.norm.sf(0.25 / math.sqrt(0.625)))


def _delong_bruteforce(y, a, b):
    y = np.asarray(y)

    def comps(s):
        x, z = s[y == 1], s[y == 0]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        return psi.mean(), psi.mean(axis=1), psi.mean(axis=0)

    (ta, v10a, v01a), (tb, v10b, v01b) = comps(np.asarray(a)), comps(np.asarray(b))
    s10 = np.cov(np.vstack([v10a, v10b]))
    s01 = np.cov(np.vstack([v01a, v01b]))
    S = s10 / v10a.size + s01 / v01a.size
    var = S[0, 0] + S[1, 1] - 2 * S[0, 1]
    return ta, tb, 2 * stats.norm.sf(abs(ta - tb) / math.sqrt(var))


@pytest.mark.parametrize("seed", range(4))
def test_delong_matches_bruteforce_definition(seed):
    y, a = _vectors(seed, n=120)
    b = np.round(a + np.random.default_rng(seed + 10).normal(0, 0.8, a.size), 1)
    r = metrics.delong_test(y, a, b)
    ta, tb, p = _delong_bruteforce(y, a, b)
    assert r.auc_a == pytest.approx(ta) and r.auc_b == pytest.approx(tb)
    assert r.auc_a == pytest.approx(skm.roc_auc_score(y, a))
    assert r.p_value == pytest.approx(p, rel=1e-9)


def test_delong_agrees_with_paired_bootstrap():
    rng = np.random.default_rng(3)
    n = 800
    y = (rng.random(n) < 0.4).astype(int)
    latent = rng.normal(size=n)
    a = latent + 1.0 * y + rng.normal(0, 0.5, n)
    b = latent + 0.7 * y + rng.normal(0, 0.5, n)
    d = metrics.delong_test(y, a, b)
    boot = metrics.patient_bootstrap(y, {"a": a, "b": b}, None, 1500, seed=1)
    se_boot = boot.paired_diff("a", "b").std(ddof=1)
    assert se_boot == pytest.approx(d.se, rel=0.2)
    assert d.p_value < 0.05 and boot.paired_p_value("a", "b") < 0.05
    # identical models: nothing to detect
    same = metrics.delong_test(y, a, a)
    assert same.p_value == 1.0 and same.diff == 0.0


# ------------------------------------------------------------------------------ subgroups
def test_per_finding_and_by_view_counts():
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.4, 0.2, 0.9, 0.3, 0.8, 0.05])
    findings = [("No Finding",)] * 3 + [("Mass", "Nodule"), ("Mass",), ("Effusion",), ("Nodule",)]
    pf = metrics.per_finding_auroc(findings, y, s)
    assert list(pf) == ["Effusion", "Mass", "Nodule"]
    assert pf["Mass"]["n_pos"] == 2 and pf["Mass"]["n_neg"] == 3
    assert pf["Mass"]["auroc"] == pytest.approx(skm.roc_auc_score([1, 1, 0, 0, 0], [0.9, 0.3, 0.1, 0.4, 0.2]))
    assert pf["Nodule"]["auroc"] == pytest.approx(0.5)  # 0.9 beats all, 0.05 beats none
    views = ["PA", "AP", "PA", "PA", "AP", "AP", "PA"]
    bv = metrics.auroc_by_group(views, y, s)
    assert bv["PA"]["n_pos"] == 2 and bv["PA"]["n_neg"] == 2 and bv["AP"]["n_pos"] == 2
    assert bv["AP"]["auroc"] == pytest.approx(skm.roc_auc_score([0, 1, 1], [0.4, 0.3, 0.8]))


# ------------------------------------------------------------------------------ localisation
def test_box_localisation_hit_and_miss():
    amap = np.zeros((64, 64))
    amap[20:24, 30:34] = 5.0  # a 16-pixel hot spot (≈ 0.4 % of the map)
    box_1024 = (30 * 16, 20 * 16, 4 * 16, 4 * 16)  # the same region in 1024-px coordinates
    hit = localisation.box_localisation(amap, box_1024, scale=64 / 1024, top_percent=0.39)
    assert hit["hit"] == 1.0 and hit["top_share"] == 1.0
    assert hit["area_share"] == pytest.approx(16 / 4096)
    assert hit["pixel_auroc"] == pytest.approx(1.0)
    miss = localisation.box_localisation(amap, (0, 0, 160, 160), scale=64 / 1024, top_percent=0.39)
    assert miss["hit"] == 0.0 and miss["top_share"] == 0.0 and miss["pixel_auroc"] < 0.5
    # chance of at least one of k random pixels in a box of A pixels out of N
    n_, a_, k = 4096, 100, 16
    exact = 1 - math.comb(n_ - a_, k) / math.comb(n_, k)
    got = localisation.box_localisation(np.random.default_rng(0).random((64, 64)), (0, 0, 10, 10), top_percent=100 * k / n_)
    assert got["hit_chance"] == pytest.approx(exact)


def test_localisation_summary():
    rows = [{"image": "a", "finding": "Mass", "hit": 1.0, "hit_chance": 0.2, "top_share": 0.5,
             "area_share": 0.1, "pixel_auroc": 0.9},
            {"image": "a", "finding": "Nodule", "hit": 0.0, "hit_chance": 0.1, "top_share": 0.0,
             "area_share": 0.01, "pixel_auroc": float("nan")},
            {"image": "b", "finding": "Mass", "hit": 0.0, "hit_chance": 0.3, "top_share": 0.1,
             "area_share": 0.2, "pixel_auroc": 0.5}]
    s = localisation.summarise_localisation(rows)
    assert s["n_boxes"] == 3 and s["n_images"] == 2
    assert s["hit_rate"] == pytest.approx(1 / 3)
    assert s["mean_pixel_auroc"] == pytest.approx(0.7)
    assert s["per_finding"]["Mass"]["n_boxes"] == 2


def test_summarise_scores_shapes_and_comparison():
    rng = np.random.default_rng(0)
    n = 300
    y = (rng.random(n) < 0.4).astype(int)
    scores = {"ra": rng.normal(size=n) + 0.5 * y, "unet": rng.normal(size=n) + 1.5 * y}
    out = summary.summarise_scores(y, scores, patients=[i // 3 for i in range(n)], views=["PA"] * n,
                             n_bootstrap=100, seed=0)
    first = out.comparisons[0]
    assert first.a == "unet" and first.b == "ra" and first.p_value < 0.01
    u = out.models["unet"]
    assert u.auroc_ci[0] <= u.auroc <= u.auroc_ci[1]
    assert len(u.curves.roc_tpr) == len(metrics.ROC_GRID)
    assert out.counts == Counts(images=n, normal=int((y == 0).sum()), abnormal=int(y.sum()), patients=100,
                                by_view={"PA": n})


def test_undefined_summary_values_are_none_not_nan():
    """One class only: no AUROC, no curves, no intervals — None in the results, null in JSON."""
    out = summary.summarise_scores([0, 0, 0, 0], {"unet": [0.1, 0.2, 0.3, 0.4], "ra": [0.4, 0.3, 0.2, 0.1]},
                             patients=[0, 0, 1, 1], n_bootstrap=20, seed=0)
    u = out.models["unet"]
    assert u.auroc is None and u.curves is None and u.auroc_ci == (None, None)
    assert out.comparisons[0].diff is None and out.comparisons[0].diff_ci == (None, None)
