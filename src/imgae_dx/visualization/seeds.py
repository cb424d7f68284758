"""Several training seeds of one recipe: test AUROC as mean ± sd, and the U-Net − RA gap.

A single seed's difference between two models is not a result (the demo's unet − ra ΔAUROC was
0.005 on one machine and 0.020 on another, same seed). ``imgae-dx demo --seeds 0,1,2`` trains the
recipe once per seed into ``OUT/seed-S/`` (each a complete run folder with its own report);
:func:`aggregate` reads their ``eval/metrics.json`` and :func:`write_seeds_report` writes
``OUT/report.html``: per model the mean ± sd (sample sd, n − 1) of test AUROC and AUPRC over the
seeds, the per-seed values, and the unet − ra gap per seed with its 95 % interval.
"""

from __future__ import annotations

import html
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from imgae_dx.errors import RunFolderError
from imgae_dx.evaluation.results import Evaluation, read_evaluation
from imgae_dx.utils.atomic import atomic_write_text


def seed_runs(root: Path) -> list[Path]:
    """The evaluated ``seed-*`` run folders under ``root`` (sorted by seed)."""
    runs = [p for p in Path(root).glob("seed-*") if (p / "eval" / "metrics.json").is_file()]
    return sorted(runs, key=lambda p: int(p.name.split("-", 1)[1]) if p.name.split("-", 1)[1].isdigit() else 0)


def mean_sd(values: list[float | None]) -> dict[str, Any]:
    """``{"n", "mean", "sd", "values"}`` of the finite values (sample sd, n − 1; None when undefined)."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    return {"n": len(v), "mean": float(np.mean(v)) if v else None,
            "sd": float(np.std(v, ddof=1)) if len(v) > 1 else None, "values": v}


def aggregate(runs: list[Path]) -> dict[str, Any]:
    """Mean ± sd over the runs of each model's test AUROC/AUPRC, and of the unet − ra gap."""
    if not runs:
        raise RunFolderError("no evaluated seed-* run folders to aggregate")
    metrics: dict[str, Evaluation] = {
        r.name: ev for r in runs if (ev := read_evaluation(r / "eval")) is not None}
    models: list[str] = []
    for m in metrics.values():
        models += [n for n in m.models if n not in models]
    out: dict[str, Any] = {"runs": list(metrics), "models": {}}
    for name in models:
        out["models"][name] = {
            k: mean_sd([m.models[name].value(k) if name in m.models else None for m in metrics.values()])
            for k in ("auroc", "auprc")}
    gaps = []
    for run, m in metrics.items():
        comp = m.comparison_of("unet", "ra")
        if comp:
            diff, ci = comp.oriented("unet")
            gaps.append({"run": run, "diff": _or_nan(diff), "ci": [_or_nan(v) for v in ci],
                         "delong_p": comp.delong_p})
    out["unet_minus_ra"] = {"per_seed": gaps, **mean_sd([g["diff"] for g in gaps])}
    return out


def _or_nan(v: float | None) -> float:
    return math.nan if v is None else v


def _fmt(s: dict[str, Any]) -> str:
    if s["mean"] is None:
        return "-"
    return f"{s['mean']:.3f}" + (f" ± {s['sd']:.3f}" if s["sd"] is not None else "") + f" (n={s['n']})"


def summary_lines(agg: dict[str, Any]) -> list[str]:
    """The aggregate as printable lines."""
    lines = [f"over {len(agg['runs'])} seeds ({', '.join(agg['runs'])}): test AUROC mean ± sd"]
    for name, s in agg["models"].items():
        lines.append(f"  {name:<6} AUROC {_fmt(s['auroc'])}   AUPRC {_fmt(s['auprc'])}")
    g = agg["unet_minus_ra"]
    if g["per_seed"]:
        per = ", ".join(f"{p['run']} {p['diff']:+.3f} [{p['ci'][0]:+.3f}, {p['ci'][1]:+.3f}]"
                        for p in g["per_seed"])
        lines.append(f"  unet − ra ΔAUROC {_fmt(g)}; per seed (95% CI): {per}")
    return lines


def write_seeds_report(root: str | Path) -> Path:
    """``ROOT/report.html``: the aggregate and links to each seed's report; also ``seeds.json``."""
    root = Path(root)
    agg = aggregate(seed_runs(root))
    atomic_write_text(root / "seeds.json", json.dumps(agg, indent=1))
    e = html.escape
    rows = "".join(
        f"<tr><td><b>{e(n)}</b></td><td>{e(_fmt(s['auroc']))}</td><td>{e(_fmt(s['auprc']))}</td>"
        f"<td>{e(', '.join(f'{v:.3f}' for v in s['auroc']['values']))}</td></tr>"
        for n, s in agg["models"].items())
    gaps = ""
    for p in agg["unet_minus_ra"]["per_seed"]:
        dp = "" if p["delong_p"] is None else f"{p['delong_p']:.3g}"
        gaps += (f"<tr><td>{e(p['run'])}</td><td>{p['diff']:+.3f}</td>"
                 f"<td>[{p['ci'][0]:+.3f}, {p['ci'][1]:+.3f}]</td><td>{dp}</td></tr>")
    links = "".join(f'<li><a href="{e(r)}/report.html">{e(r)}</a></li>' for r in agg["runs"])
    doc = (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8><link rel=icon href='data:,'>"
        "<title>ImgAE-Dx report: seeds</title><style>body{font-family:system-ui,sans-serif;margin:2em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccd;padding:4px 9px}</style></head><body>"
        f"<h1>ImgAE-Dx: {len(agg['runs'])} training seeds</h1>"
        f"<p>Written {e(time.strftime('%Y-%m-%d %H:%M:%S'))}. Test metrics of each seed's best.pt on the "
        "held-out test patients; mean ± sample sd over the seeds. The model with the highest mean is a "
        "description, not a selection; a gap smaller than its spread over seeds is not a result.</p>"
        "<table><tr><th>model</th><th>AUROC</th><th>AUPRC</th><th>AUROC per seed</th></tr>"
        f"{rows}</table><h2>unet − ra</h2><p>{e(_fmt(agg['unet_minus_ra']))}</p>"
        "<table><tr><th>seed</th><th>ΔAUROC</th><th>95% CI (patient bootstrap)</th><th>DeLong p</th></tr>"
        f"{gaps}</table><h2>Each seed's report</h2><ul>{links}</ul></body></html>")
    return atomic_write_text(root / "report.html", doc)
