"""``write_report(run_dir)``: RUN_DIR/report.html (one self-contained file) and RUN_DIR/plots/*.png.

The page embeds every figure as a base64 PNG and its style inline: no network, no external CSS or
JavaScript, so it can be mailed, archived or opened offline. It is built only from what the run
folder holds:

- ``config.yaml`` (the resolved configuration),
- ``metrics.jsonl`` (training log: loss, validation loss, images/s, RSS),
- ``eval/metrics.json``, ``eval/scores.csv`` and ``eval/examples/<model>.npz`` (from the evaluator),
- ``predict/index.html`` when present (the demo's ``predict`` gallery: linked, not embedded).

Parts whose inputs are missing (e.g. not evaluated yet) are stated as missing, never invented.
"""

from __future__ import annotations

import base64
import html
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imgae_dx.errors import RunFolderError
from imgae_dx.evaluation.published import published_for
from imgae_dx.evaluation.results import Evaluation, Interval, ModelResult, read_evaluation
from imgae_dx.evaluation.score_files import load_examples, read_scores
from imgae_dx.evaluation.scoring import describe
from imgae_dx.run.records import Record, TrainRecord, read_records
from imgae_dx.utils.atomic import atomic_write_text
from imgae_dx.visualization import plots

METRIC_LABELS: tuple[tuple[str, str], ...] = (
    ("auroc", "AUROC"),
    ("auprc", "AUPRC"),
    ("f1_max", "F1-max*"),
    ("fpr_at_95_tpr", "FPR @ 95% TPR ↓"),
    ("sensitivity_at_90_specificity", "Sensitivity @ 90% spec."),
)

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:24px 28px 60px;background:#fff}
h1{font-size:1.6em;margin:.2em 0}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #dde;padding-bottom:.2em}
h3{font-size:1.05em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #d6d9e0;padding:4px 9px;text-align:right}th{background:#eef1f6}
td:first-child,th:first-child{text-align:left}
img{max-width:100%;height:auto;display:block;margin:.5em 0;border:1px solid #eee}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:10px 14px;margin:1em 0}
.headline{background:#eef6ff;border-left:4px solid #1f77b4;padding:10px 14px;margin:1em 0;font-size:1.05em}
.muted{color:#667}pre{background:#f3f4f7;padding:10px;overflow:auto;font-size:.82em;max-height:520px}
"""


# ------------------------------------------------------------------------------ reading
def _config_dataset(cfg_text: str) -> str:
    """``data.dataset`` of a run's config.yaml text (``nih`` when unset or unreadable)."""
    import yaml

    try:
        cfg = yaml.safe_load(cfg_text)
    except yaml.YAMLError:
        return "nih"
    data = cfg.get("data") if isinstance(cfg, dict) else None
    return str((data or {}).get("dataset") or "nih") if isinstance(data, dict) else "nih"


# ------------------------------------------------------------------------------ html helpers
def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _num(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return f"{int(v):,}"
    return f"{float(v):.{digits}f}"


def _ci(value: float | None, ci: Interval) -> str:
    if ci[0] is None:
        return _num(value)
    return f"{_num(value)} <span class=muted>[{_num(ci[0])}, {_num(ci[1])}]</span>"


def _with_ci(m: ModelResult, key: str) -> str:
    return _ci(m.value(key), m.ci(key))


def _img(path: Path | None, alt: str) -> str:
    if path is None or not path.is_file():
        return f"<p class=muted>({_e(alt)}: no data in this run folder)</p>"
    b64 = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{b64}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    h = "".join(f"<th>{c}</th>" for c in header)
    b = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{b}</tbody></table>"


# ------------------------------------------------------------------------------ sections
def stage_table(records: Sequence[Record]) -> list[dict[str, Any]]:
    """Per (stage, model): last training loss, best validation loss on the stage's own validation
    split, mean images/s, steps."""
    acc: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        a = acc.setdefault((r.stage, r.model), {"stage": r.stage, "model": r.model, "train_loss": None,
                                                 "val_loss": None, "ips": [], "steps": 0})
        if isinstance(r, TrainRecord):
            a["train_loss"] = r.loss
            a["steps"] = max(a["steps"], int(r.step))
            if r.images_per_s is not None:
                a["ips"].append(float(r.images_per_s))
        elif r.val_loss is not None and math.isfinite(r.val_loss):
            a["val_loss"] = r.val_loss if a["val_loss"] is None else min(a["val_loss"], r.val_loss)
    out = []
    for a in acc.values():
        a["images_per_s"] = float(np.mean(a.pop("ips"))) if a["ips"] else None
        out.append(a)
    return sorted(out, key=lambda a: (a["stage"], a["model"]))


def _honest_note(metrics: Evaluation | None, dataset: str) -> str:
    """What to expect and how the figures were made; ``dataset``: the run's when not evaluated."""
    src = (metrics.source or "") if metrics else ""
    synthetic = bool(metrics and metrics.synthetic_data)
    top = metrics.best_by_auroc() if metrics else None
    best = top[1].auroc if top else None
    nih = published_for("nih")[0]
    lines = [] if metrics is None or metrics.protocol is None else [
        f"<b>Dataset:</b> {_e(metrics.dataset_title or dataset)} (<code>{_e(dataset)}</code>). "
        f"<b>Protocol:</b> {_e(metrics.protocol)}."]
    if dataset == "nih":
        lines.append(
            "<b>What to expect on real data.</b> Published unsupervised (train-on-normal) detectors on "
            f"NIH ChestX-ray14 reach an image-level AUROC of roughly <b>{nih.auroc:.2f}–{nih.auroc_high:.2f}</b>. "
            "A much higher figure on real NIH images usually means leakage: the same patient in training "
            "and test, a mix of view positions (PA vs AP) that the model separates instead of disease, or "
            "thresholds chosen on the test split.")
    elif published_for(dataset):
        lines.append("<b>What to expect.</b> The published figures for this dataset and protocol are "
                     "listed under the comparison below, with the image size each was measured at.")
    lines += [
        "Here the test split holds patients never seen in training; checkpoints were chosen on normal "
        "validation images only; no threshold was tuned on the test split. *F1-max picks its "
        "threshold on the test scores themselves, so it is an optimistic upper bound, not an "
        "operating point.",
    ]
    if synthetic:
        lines.append(
            "<b>This run used the synthetic sample dataset</b> (generated images with planted "
            "anomalies): its figures check that the pipeline works and say nothing about chest X-rays."
        )
    elif dataset == "nih" and best is not None and best > 0.85:
        lines.append(
            f"<b>Warning:</b> the best AUROC here ({best:.3f}) is above the range expected on real NIH "
            "data; check the cohort (view position) and the patient split before trusting it."
        )
    if src:
        lines.append(f"Source: <code>{_e(src)}</code>.")
    return '<div class="note">' + "".join(f"<p>{t}</p>" for t in lines) + "</div>"


def _scoring_html(metrics: Evaluation) -> str:
    """Which anomaly map and score each model's test scores come from."""
    scoring = metrics.scoring
    if not scoring:
        return ""
    name = metrics.evaluation
    head = ("Scoring of the trained checkpoints" if name == "default"
            else f"Re-scored evaluation <code>{_e(name)}</code> of the trained checkpoints")
    items = "".join(f"<li><b>{_e(m)}</b>: {_e(describe(s))}</li>" for m, s in scoring.items())
    return f"<p class=muted>{head}:</p><ul class=muted>{items}</ul>"


def _comparison_html(metrics: Evaluation) -> str:
    rows = []
    for name, m in metrics.models.items():
        ck = m.checkpoint
        rows.append([f"<b>{_e(name)}</b>"] + [_with_ci(m, k) for k, _ in METRIC_LABELS] + [
            _e(ck.stage if ck else "n/a"), _num(ck.val_loss if ck else None, 4)])
    out = _table(["model"] + [lbl for _, lbl in METRIC_LABELS] + ["checkpoint stage", "val loss"], rows)
    if metrics.comparisons:
        crow = []
        for c in metrics.comparisons:
            crow.append([
                f"{_e(c.a)} − {_e(c.b)}", _num(c.diff),
                f"[{_num(c.diff_ci[0])}, {_num(c.diff_ci[1])}]", _num(c.delong_z, 2),
                f"<b>{plots.fmt_p(c.delong_p)}</b>", plots.fmt_p(c.bootstrap_p),
            ])
        out += "<h3>Paired comparison of AUROC</h3>" + _table(
            ["pair", "ΔAUROC", "95% CI (patient bootstrap)", "DeLong z", "DeLong p", "bootstrap p"], crow)
        out += ("<p class=muted>Both models scored the same test images, so the test is paired. DeLong "
                "treats images as independent; the patient bootstrap resamples patients and does not.</p>")
    b = metrics.bootstrap
    if b:
        out += (f"<p class=muted>Intervals: {b.level:.0%} percentile intervals from "
                f"{_num(b.resamples)} bootstrap resamples of {_e(b.unit)}s "
                f"(seed {_e(b.seed)}).</p>")
    return out


def _published_html(metrics: Evaluation) -> str:
    """The published AUROCs on this dataset (:mod:`imgae_dx.evaluation.published`) beside ours."""
    figs = metrics.published
    if not figs:
        return ""
    size = metrics.image_size
    rows = [[f"<b>{_e(n)}</b> (this run)", _num(m.auroc), _e(f"{size} px" if size else "n/a"),
             "this run's test split"] for n, m in metrics.models.items()]
    for f in figs:
        rows.append([_e(f.method), f.auroc_text, _e(f"{f.image_size} px" if f.image_size else "not stated here"),
                     _e(f.source)])
    note = ("<p class=muted>Published figures are as their papers report them; one measured at another "
            "image size or on another split is a guide, not a like-for-like comparison.</p>")
    if metrics.synthetic_data:
        note += ("<p class=muted>This run's figures come from a synthetic sample archive and are not "
                 "comparable to them at all.</p>")
    return ("<h3>Published figures on this dataset</h3>"
            + _table(["method", "image-level AUROC", "image size", "source"], rows) + note)


def _counts_html(metrics: Evaluation) -> str:
    c = metrics.counts.items()
    if not c:
        return ""
    rows = [[_e(k.replace("_", " ")), _num(v) if not isinstance(v, dict) else
             _e(", ".join(f"{kk}: {vv}" for kk, vv in v.items()))] for k, v in c]
    return _table(["test set", "count"], rows)


def _subgroup_html(metrics: Evaluation, key: str, title: str) -> str:
    models = {n: m.subgroups(key) for n, m in metrics.models.items()}
    groups = sorted({g for sub in models.values() for g in sub})
    if not groups:
        return ""
    rows = []
    for g in groups:
        first = next(sub[g] for sub in models.values() if g in sub)
        rows.append([_e(g), _num(first.n_pos), _num(first.n_neg)]
                    + [_num(sub[g].auroc if g in sub else None) for sub in models.values()])
    return f"<h3>{_e(title)}</h3>" + _table(
        [key.replace("_", " "), "abnormal", "normal"] + [f"{_e(n)} AUROC" for n in models], rows)


def _localisation_html(metrics: Evaluation) -> str:
    models = {n: m.localisation for n, m in metrics.models.items() if m.localisation is not None}
    if not any(loc.n_boxes for loc in models.values()):
        return "<p class=muted>No test image with a ground-truth box (BBox_List_2017.csv) was scored.</p>"
    rows = []
    for n, loc in models.items():
        rows.append([_e(n), _num(loc.n_boxes), _num(loc.n_images), _num(loc.hit_rate),
                     _num(loc.mean_hit_chance), _num(loc.mean_top_share),
                     _num(loc.mean_area_share), _num(loc.mean_pixel_auroc)])
    top = metrics.top_percent_localisation if metrics.top_percent_localisation is not None else 1.0
    return _table(["model", "boxes", "images", f"box hit rate (top {top:g}% px)", "hit rate by chance",
                   "share of top px in box", "box area share (chance)", "pixel AUROC in vs out"], rows)


# ------------------------------------------------------------------------------ operating point
#: Where the demo's ``predict`` step writes its gallery (linked from the report when present).
GALLERY = "predict/index.html"


def _operating_point_html(metrics: Evaluation) -> str:
    """Test sensitivity/specificity at the threshold calibrated on the validation normals."""
    ops = {n: m.operating_point for n, m in metrics.models.items() if m.operating_point is not None}
    if not ops:
        return ""
    rows, notes = [], []
    for n, op in ops.items():
        if op.threshold is None:
            notes.append(f"{_e(n)}: {_e(op.note or 'no calibration')}")
            continue
        sci, eci = op.specificity_ci, op.sensitivity_ci
        rows.append([f"<b>{_e(n)}</b>", f"{op.target_specificity:.0%}", _num(op.threshold, 5),
                     f"{_num(op.specificity)} <span class=muted>[{_num(sci[0])}, {_num(sci[1])}]</span>",
                     f"{_num(op.sensitivity)} <span class=muted>[{_num(eci[0])}, {_num(eci[1])}]</span>",
                     _num(op.calibration_images)])
    out = "<h2>Operating point</h2><p>The flag of <code>imgae-dx predict</code>: a score above the "
    out += ("threshold that leaves the target share of the <i>validation</i> normals below it (no test "
            "image is used to set it). On the test split it gives:</p>")
    if rows:
        out += _table(["model", "target specificity", "threshold", "test specificity [95% CI]",
                       "test sensitivity [95% CI]", "validation normals"], rows)
    if notes:
        out += "<p class=muted>" + "<br>".join(notes) + "</p>"
    return out


def _gallery_html(run_dir: Path) -> str:
    """A link to the ``predict`` gallery in the run folder, when there is one."""
    if not (run_dir / GALLERY).is_file():
        return ""
    return (f'<h2>Predictions on image files</h2><p><a href="{GALLERY}">Gallery of <code>imgae-dx '
            "predict</code> on held-out image files</a> (overlays of the anomaly maps, flags at the "
            "operating point).</p>")


# ------------------------------------------------------------------------------ main
def make_plots(run_dir: Path, metrics: Evaluation | None, records: Sequence[Record],
               evaluation: str | None = None) -> dict[str, Path | None]:
    """Draw every figure the run folder has data for into RUN_DIR/plots/ (``plots-NAME/`` for the
    evaluation ``eval-NAME``); returns name → path.

    Args:
        metrics: the evaluation's ``metrics.json`` as read (None before evaluation).
        records: ``metrics.jsonl`` as read.
    """
    pd = run_dir / (f"plots-{evaluation}" if evaluation else "plots")
    ev = run_dir / (f"eval-{evaluation}" if evaluation else "eval")
    table = read_scores(ev / "scores.csv")
    labels, scores = table.labels, table.scores
    out: dict[str, Path | None] = {
        "roc_pr": plots.plot_roc_pr(metrics, pd / "roc_pr.png") if metrics else None,
        "score_histograms": plots.plot_score_histograms(labels, scores, pd / "score_histograms.png"),
        "per_finding": plots.plot_per_finding(metrics, pd / "per_finding_auroc.png") if metrics else None,
        "loss": plots.plot_losses(records, pd / "loss.png"),
        "throughput": plots.plot_throughput(records, pd / "throughput_memory.png"),
    }
    for name in (metrics.models if metrics else None) or scores:
        out[f"examples_{name}"] = plots.plot_examples(name, load_examples(ev, name),
                                                      pd / f"examples_{name}.png")
    return out


def write_report(run_dir: str | Path, evaluation: str | None = None) -> Path:
    """Write RUN_DIR/report.html and RUN_DIR/plots/*.png from the run folder; returns the HTML path.
    For a re-scored evaluation (``eval-NAME``): ``report-NAME.html`` and ``plots-NAME/``.

    Raises:
        RunFolderError: RUN_DIR is not a run folder (no config.yaml, metrics.jsonl or eval/).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not any(
        (run_dir / p).exists() for p in ("config.yaml", "metrics.jsonl", "eval/metrics.json")
    ):
        raise RunFolderError(
            f"{run_dir} is not an ImgAE-Dx run folder (no config.yaml, metrics.jsonl or "
            "eval/metrics.json); pass the --out folder of `imgae-dx train`"
        )
    ev = run_dir / (f"eval-{evaluation}" if evaluation else "eval")
    if evaluation and not (ev / "metrics.json").is_file():
        raise RunFolderError(f"{ev} holds no metrics.json: run `imgae-dx evaluate --run {run_dir} "
                             f"--config OVERLAY --name {evaluation}` first")
    metrics = read_evaluation(ev)
    records = read_records(run_dir / "metrics.jsonl")
    cfg_path = run_dir / "config.yaml"
    cfg_text = cfg_path.read_text() if cfg_path.is_file() else "(config.yaml missing)"
    figs = make_plots(run_dir, metrics, records, evaluation)

    parts = [f"<h1>ImgAE-Dx report</h1><p class=muted>Run folder <code>{_e(run_dir.resolve())}</code> · "
             f"written {_e(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>"]
    if metrics and metrics.models:
        best_name, best = metrics.best_by_auroc() or next(iter(metrics.models.items()))
        comp = metrics.comparison
        ptxt = (f" · {_e(comp.a)} vs {_e(comp.b)}: ΔAUROC {_num(comp.diff)}, "
                f"DeLong p = {plots.fmt_p(comp.delong_p)}") if comp else ""
        ci = best.auroc_ci
        parts.append(
            f'<div class="headline">Highest test AUROC (descriptive): <b>{_e(best_name)}</b>, '
            f"<b>{_num(best.auroc)}</b> (95% CI {_num(ci[0])}–{_num(ci[1])}) on "
            f"{_num(metrics.counts.images)} test images{ptxt}.</div>")
        parts.append(_honest_note(metrics, metrics.dataset))
        parts.append("<h2>Comparison</h2>" + _scoring_html(metrics) + _comparison_html(metrics)
                     + _published_html(metrics) + _counts_html(metrics))
        parts.append(_operating_point_html(metrics))
        parts.append("<h2>Curves</h2>" + _img(figs["roc_pr"], "ROC and precision-recall curves"))
        parts.append("<h2>Score distributions</h2>" + _img(figs["score_histograms"], "score histograms"))
        parts.append("<h2>Per finding and view</h2>" + _img(figs["per_finding"], "AUROC per finding")
                     + _subgroup_html(metrics, "per_finding", "AUROC per finding (finding vs normal)")
                     + _subgroup_html(metrics, "by_view", "AUROC by view position"))
        parts.append("<h2>Localisation (ground-truth boxes)</h2>" + _localisation_html(metrics))
        ex = [k for k in figs if k.startswith("examples_")]
        parts.append("<h2>Examples</h2>" + "".join(_img(figs[k], k.replace("_", " ")) for k in ex))
    else:
        parts.append('<div class="note">Not evaluated yet: run <code>imgae-dx evaluate --run '
                     f"{_e(run_dir)}</code> for the test metrics.</div>")
        parts.append(_honest_note(None, _config_dataset(cfg_text)))
    parts.append(_gallery_html(run_dir))
    parts.append("<h2>Training</h2>" + _img(figs["loss"], "training and validation loss")
                 + _img(figs["throughput"], "images per second and memory"))
    st = stage_table(records)
    if st:
        parts.append(_table(["stage", "model", "last train loss", "best val loss", "mean images/s", "steps"],
                            [[_e(a["stage"]), _e(a["model"]), _num(a["train_loss"], 4), _num(a["val_loss"], 4),
                              _num(a["images_per_s"], 1), _num(a["steps"])] for a in st]))
    parts.append(f"<h2>Configuration</h2><pre>{_e(cfg_text)}</pre>")
    doc = ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
           "<meta name=viewport content='width=device-width,initial-scale=1'><link rel=icon href='data:,'>"
           f"<title>ImgAE-Dx report</title><style>{_CSS}</style></head><body><main>"
           + "\n".join(parts) + "</main></body></html>")
    return atomic_write_text(run_dir / (f"report-{evaluation}.html" if evaluation else "report.html"), doc)
