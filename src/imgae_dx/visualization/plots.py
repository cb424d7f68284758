"""Report figures (matplotlib, headless ``Agg``): every function writes one PNG and returns its path.

Inputs are what a run folder holds, as its typed readers give it (``eval/metrics.json`` as an
:class:`~imgae_dx.evaluation.results.Evaluation`, ``eval/scores.csv``, ``eval/examples/*.npz``,
``metrics.jsonl`` records); nothing here knows about models or streaming. A figure
whose data is missing is not drawn (the function returns ``None``), never faked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgae_dx.run.records import Record, TrainRecord

if TYPE_CHECKING:  # the live plot (imported by training) needs none of evaluation/
    from imgae_dx.evaluation.results import Evaluation, Interval

MODEL_COLOURS = {"unet": "#1f77b4", "ra": "#d62728", "ae": "#2ca02c"}
_FALLBACK = ["#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


class _FigureFactory:
    """``plt.subplots`` without pyplot: figures not tied to any backend, so drawing a report
    never switches a notebook's inline backend and is safe from worker threads."""

    @staticmethod
    def subplots(
        nrows: int = 1, ncols: int = 1, *, figsize: Any = None, layout: Any = None, **kw: Any
    ) -> Any:
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize, layout=layout)
        return fig, fig.subplots(nrows, ncols, **kw)

    @staticmethod
    def close(fig: Any) -> None:
        fig.clear()


def _plt() -> _FigureFactory:
    return _FigureFactory()


def colour(model: str, i: int = 0) -> str:
    """Stable colour of a model across every figure."""
    return MODEL_COLOURS.get(model, _FALLBACK[i % len(_FALLBACK)])


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def fmt_num(v: Any, digits: int = 3) -> str:
    """``v`` with ``digits`` decimals; ``n/a`` for a missing or non-finite value."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def fmt_p(v: Any) -> str:
    """A p-value: 3 decimals, scientific below 0.001; ``n/a`` when missing."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.2e}" if v < 1e-3 else f"{v:.3f}"


def fmt_ci(value: float | None, ci: Interval) -> str:
    """``value [lo, hi]``; the value alone when the interval is undefined."""
    if ci[0] is None:
        return fmt_num(value)
    return f"{fmt_num(value)} [{fmt_num(ci[0])}, {fmt_num(ci[1])}]"


# ------------------------------------------------------------------------------ ROC / PR
def _array(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=float)


def plot_roc_pr(metrics: Evaluation, path: Path) -> Path | None:
    """ROC and precision-recall curves of every model on one chart each, with bootstrap 95 % bands.

    Args:
        metrics: the evaluation; uses each model's :class:`~imgae_dx.evaluation.results.Curves`
            and headline numbers.
    """
    models = {k: (v, v.curves) for k, v in metrics.models.items() if v.curves is not None}
    if not models:
        return None
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.8), layout="constrained")
    prevalence = None
    counts = metrics.counts
    if counts.images:
        prevalence = (counts.abnormal or 0) / counts.images
    for i, (name, (m, c)) in enumerate(models.items()):
        g = np.asarray(c.grid, dtype=float)
        col = colour(name, i)
        ax1.plot(g, _array(c.roc_tpr), color=col, lw=2, drawstyle="steps-post",
                 label=f"{name}  AUROC {fmt_ci(m.auroc, m.auroc_ci)}")
        if c.has_roc_band:
            ax1.fill_between(g, _array(c.roc_lo), _array(c.roc_hi), color=col, alpha=0.18, step="post")
        ax2.plot(g, _array(c.pr_precision), color=col, lw=2,
                 label=f"{name}  AUPRC {fmt_ci(m.auprc, m.auprc_ci)}")
        if c.has_pr_band:
            ax2.fill_between(g, _array(c.pr_lo), _array(c.pr_hi), color=col, alpha=0.18)
    ax1.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax1.set(xlabel="false positive rate", ylabel="true positive rate (sensitivity)",
            title="ROC (shaded: patient-bootstrap 95% band)", xlim=(0, 1), ylim=(0, 1.01))
    if prevalence is not None:
        ax2.axhline(prevalence, ls="--", color="grey", lw=1, label=f"chance ({prevalence:.2f})")
    ax2.set(xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.01))
    for ax in (ax1, ax2):
        ax.legend(loc="lower right" if ax is ax1 else "upper right", fontsize=8)
        ax.grid(alpha=0.3)
    return _save(fig, path)


# ------------------------------------------------------------------------------ histograms
def plot_score_histograms(
    labels: np.ndarray, scores: Mapping[str, np.ndarray], path: Path
) -> Path | None:
    """Per model, the distribution of anomaly scores of normal vs abnormal test images.

    Args:
        labels: (N,) 0/1. scores: model → (N,) scores.
    """
    if not scores or labels.size == 0:
        return None
    plt = _plt()
    names = list(scores)
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 3.8), squeeze=False, layout="constrained")
    for ax, name in zip(axes[0], names, strict=True):
        s = np.asarray(scores[name], dtype=float)
        bins = np.histogram_bin_edges(s, bins=40)
        for lab, txt, col in ((0, "normal", "#4c72b0"), (1, "abnormal", "#dd8452")):
            v = s[labels == lab]
            if v.size:
                ax.hist(v, bins=bins, alpha=0.55, density=True, color=col, label=f"{txt} (n={v.size})")
        ax.set(title=f"{name}: anomaly score", xlabel="score (higher = more anomalous)", ylabel="density")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return _save(fig, path)


# ------------------------------------------------------------------------------ per finding
def plot_per_finding(metrics: Evaluation, path: Path) -> Path | None:
    """Horizontal bars: AUROC of each finding's images vs normals, one bar per model, with counts."""
    models = {k: v.subgroups("per_finding") for k, v in metrics.models.items()}
    findings = sorted({f for pf in models.values() for f in pf})
    if not findings:
        return None
    plt = _plt()
    h = max(3.0, 0.42 * len(findings) * max(1, len(models)) ** 0.5 + 1)
    fig, ax = plt.subplots(figsize=(8.5, h))
    width = 0.8 / max(1, len(models))
    y = np.arange(len(findings))
    for i, (name, pf) in enumerate(models.items()):
        vals = _array([pf[f].auroc if f in pf else None for f in findings])
        ax.barh(y + i * width - 0.4 + width / 2, vals, height=width, color=colour(name, i), label=name)
    any_pf = next(iter(models.values()))
    ax.set_yticks(y, [f"{f} (n={any_pf[f].n_pos if f in any_pf else '?'})" for f in findings], fontsize=8)
    ax.axvline(0.5, ls="--", color="grey", lw=1)
    ax.set(xlim=(0, 1), xlabel="AUROC vs normal test images", title="AUROC per finding")
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


# ------------------------------------------------------------------------------ training logs
def plot_losses(records: Sequence[Record], path: Path) -> Path | None:
    """Training loss (per logged step) and validation loss per model, stages marked.

    Args:
        records: ``metrics.jsonl`` records; validation points are each epoch's loss on the
            stage's own validation split.
    """
    models: dict[str, dict[str, list[tuple[float, float]]]] = {}
    stage_spans: dict[str, dict[str, tuple[float, float]]] = {}
    for r in records:
        d = models.setdefault(r.model, {"train": [], "val": []})
        value = r.loss if isinstance(r, TrainRecord) else r.val_loss
        if _finite(value):  # NaN is written as null: no point to draw
            d["train" if isinstance(r, TrainRecord) else "val"].append((float(r.step), float(value)))
        lo, hi = stage_spans.setdefault(r.model, {}).get(r.stage, (math.inf, -math.inf))
        stage_spans[r.model][r.stage] = (min(lo, float(r.step)), max(hi, float(r.step)))
    models = {k: v for k, v in models.items() if v["train"] or v["val"]}
    if not models:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(models), figsize=(5.6 * len(models), 3.8), squeeze=False, layout="constrained")
    for i, (ax, (name, d)) in enumerate(zip(axes[0], models.items(), strict=True)):
        col = colour(name, i)
        if d["train"]:
            t = np.asarray(sorted(d["train"]))
            ax.plot(t[:, 0], t[:, 1], color=col, lw=1, alpha=0.8, label="train")
        if d["val"]:
            v = np.asarray(sorted(d["val"]))
            ax.plot(v[:, 0], v[:, 1], "o-", color="black", ms=4, lw=1, label="validation (normal)")
        spans = sorted(stage_spans.get(name, {}).items(), key=lambda kv: kv[1])
        # a stage starts where the one before it ended (its first logged step comes later)
        starts = [(stage, spans[k - 1][1][1] if k else lo) for k, (stage, (lo, _)) in enumerate(spans)]
        for _, s0 in starts:
            ax.axvline(s0, color="grey", ls=":", lw=1)
        if starts:  # stage names on a top axis, clear of the curves
            top = ax.secondary_xaxis("top")
            top.set_xticks([s0 for _, s0 in starts], [stage for stage, _ in starts], fontsize=7,
                           color="grey")
            top.tick_params(length=0)
        ax.set(title=f"{name}: loss per stage", xlabel="optimiser step", ylabel="loss")
        if (np.asarray([p[1] for p in d["train"] + d["val"]]) > 0).all():
            ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_throughput(records: Sequence[Record], path: Path) -> Path | None:
    """Training images/s and resident memory (RSS, MB) over the run (by optimiser step).

    The models train on the same batches, so these are run-wide figures: one point per logged
    training step (validation records add RSS points).
    """
    rows = list(records)
    if not rows:
        return None
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    ips: dict[float, float] = {}
    rss: dict[float, float] = {}
    for r in rows:
        x = float(r.step)
        if isinstance(r, TrainRecord) and _finite(r.images_per_s):
            ips.setdefault(x, float(r.images_per_s))
        if _finite(r.rss_mb):
            rss[x] = max(rss.get(x, 0.0), float(r.rss_mb))
    if ips:
        xs = sorted(ips)
        ax1.plot(xs, [ips[x] for x in xs], color="#444", lw=1, marker="." if len(xs) < 60 else None)
    if rss:
        xs = sorted(rss)
        ax2.plot(xs, [rss[x] for x in xs], color="#8c564b", lw=1, marker="." if len(xs) < 60 else None)
    xl = "optimiser step"
    ax1.set(title="training throughput (all models, same batches)", xlabel=xl, ylabel="images/s")
    ax2.set(title="resident memory of the process (RSS)", xlabel=xl, ylabel="MB")
    for ax, series in ((ax1, ips), (ax2, rss)):
        ax.set_ylim(0, 1.08 * max(series.values(), default=1.0) or 1.0)  # from 0, with headroom
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(float(v))


# ------------------------------------------------------------------------------ examples
def plot_examples(
    model: str,
    items: Sequence[Mapping[str, Any]],
    path: Path,
) -> Path | None:
    """Grid: one row per image (input, reconstruction, anomaly heat-map overlay with its boxes).

    Args:
        items: dicts with ``image`` (H×W uint8 or float in [0, 1]), ``reconstruction`` (H×W),
            ``anomaly_map`` (H×W), ``title`` (str), ``boxes`` (list of (finding, x, y, w, h) in map
            pixels).
    """
    if not items:
        return None
    plt = _plt()
    from matplotlib.patches import Rectangle

    n = len(items)
    maps = [np.asarray(it["anomaly_map"], dtype=float) for it in items]
    # one colour scale for every row: a least-anomalous image must look cool next to the most
    # anomalous ones (a per-image scale would paint every map's own maximum equally hot)
    pooled = np.concatenate([m.ravel() for m in maps])
    lo = float(pooled.min()) if pooled.size else 0.0
    hi = max(float(np.percentile(pooled, 99.5)) if pooled.size else 1.0, lo + 1e-12)
    fig, axes = plt.subplots(n, 3, figsize=(7.2, 2.45 * n), squeeze=False, layout="constrained")
    heat = None
    for r, (it, amap) in enumerate(zip(items, maps, strict=True)):
        img = np.asarray(it["image"], dtype=float)
        img = img / 255.0 if img.max() > 1.0 else img
        rec = np.asarray(it["reconstruction"], dtype=float)
        rec = rec / 255.0 if rec.max() > 1.0 else rec
        axes[r, 0].imshow(img, cmap="gray", vmin=0, vmax=1)
        axes[r, 1].imshow(rec, cmap="gray", vmin=0, vmax=1)
        axes[r, 2].imshow(img, cmap="gray", vmin=0, vmax=1)
        heat = axes[r, 2].imshow(amap, cmap="inferno", alpha=0.55, vmin=lo, vmax=hi)
        for finding, x, y, w, h in it.get("boxes", []):
            axes[r, 2].add_patch(Rectangle((x, y), w, h, fill=False, ec="#00ff66", lw=1.5))
            axes[r, 2].text(x, y - 1, str(finding), color="#00ff66", fontsize=6, va="bottom")
        axes[r, 0].set_ylabel(it.get("title", ""), fontsize=7)
        for c in range(3):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
    for c, t in enumerate(("input", "reconstruction", "anomaly map (box: ground truth)")):
        axes[0, c].set_title(t, fontsize=9)
    fig.colorbar(heat, ax=axes[:, 2], shrink=0.3, aspect=30, pad=0.02,
                 label="anomaly map (one scale for all rows)")
    fig.suptitle(f"{model}: most and least anomalous test images", fontsize=10)
    return _save(fig, path)
