"""Detection-quality ablations: each recipe switch × several training seeds, on a development
archive (never the demo's test split), test AUROC as mean ± sd per setting and model.

    python benchmarks/quality_bench.py                     # 3 seeds, the demo recipe's switches
    python benchmarks/quality_bench.py --smoke             # CI: tiny archive, 1 seed, 1 epoch
    python benchmarks/quality_bench.py --variety wide --set training.epochs_per_stage=12 --keep DIR
                                                           # the harder archive, a probe, runs kept
    python benchmarks/quality_bench.py --rescore DIR       # those runs under every scoring, no training
    python benchmarks/quality_bench.py --archive A/data.zip --set data.view=all --keep DIR
                                                           # a given archive (the real development
                                                           # archive, benchmarks/real_dev_archive.py):
                                                           # AUROC per view with bootstrap CIs

Settings that need training (``--settings``):

* ``demo`` — ``configs/demo.yaml`` as shipped;
* ``dae`` — the same, with the U-Net as Kascenas et al.'s DAE (``configs/recipes/dae_kascenas.yaml``);
* ``replay`` — the same, with ``training.replay: all`` (earlier stages revisited; when built).

Each trained run is scored with its own configuration (``run``: what ``imgae-dx evaluate`` gives)
and with it plus a border mask (``RUN_SCORINGS``), then re-scored without retraining (``imgae-dx
evaluate --config``) with every scoring variant of ``SCORINGS`` (map × score), the one-model
variants of ``MODEL_SCORINGS`` (the U-Net's noise-then-restore, RA's encoder saliency) and the RA
authors' score. The archive is the demo's
sample recipe with another generator seed (``--archive-seed``, default 1; synthetic) or, with
``--archive``, a given NIH-layout archive (real radiographs: ``benchmarks/real_dev_archive.py``).
Besides the AUROC over the whole test split, every scoring gets the AUROC per view position with a
patient-bootstrap 95 % interval (``by_view``; the summary's mean ± sd over seeds per view): on the
real development archive the views are confounded with the class, so only per-view figures count.

Prints one JSON object and a Markdown table (``--markdown``) for ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "configs" / "recipes"

SSIM31 = {"map": "ssim", "score": "mean", "ssim_window": 31, "ssim_sigma": 4.23}

#: scoring overlays applied to every trained model (name → anomaly settings over the defaults)
SCORINGS: dict[str, dict[str, Any]] = {
    "l1_mean": {"map": "l1", "score": "mean"},
    "l1_top1": {"map": "l1", "score": "topk", "topk_percent": 1.0},
    "l2_mean": {"map": "l2", "score": "mean"},
    "clahe_mean": {"map": "clahe", "score": "mean"},
    "ssim_mean": {"map": "ssim", "score": "mean"},
    "ssim31_mean": SSIM31,
    "l1_median5_mean": {"map": "l1", "score": "mean", "median_filter": 5},
    "l1_rs1_mean": {"map": "l1", "score": "mean", "residual_sigma": 1.0},
    "l1_rs2_mean": {"map": "l1", "score": "mean", "residual_sigma": 2.0},
    "l1_rs4_mean": {"map": "l1", "score": "mean", "residual_sigma": 4.0},
    "l1_border10_mean": {"map": "l1", "score": "mean", "border": 0.1},
    "ssim_border10_mean": {"map": "ssim", "score": "mean", "border": 0.1},
}

#: scorings of one model only (name → (model, that model's overlay))
MODEL_SCORINGS: dict[str, tuple[str, dict[str, Any]]] = {
    # the U-Net denoising 4 fixed corruptions of x (noise-then-restore), SSIM 31 px
    "ssim31_restore4": ("unet", {"inference_samples": 4, "anomaly": SSIM31}),
    # RA's SSIM 31 px map × the saliency of its own encoder embeddings
    "ssim31_encoder": ("ra", {"anomaly": {**SSIM31, "saliency": "encoder"}}),
    # the same with the default 11 px SSIM window (the demo's U-Net scoring)
    "ssim_restore4": ("unet", {"inference_samples": 4, "anomaly": {"map": "ssim", "score": "mean"}}),
    "ssim_encoder": ("ra", {"anomaly": {"map": "ssim", "score": "mean", "saliency": "encoder"}}),
    # the U-Net's l1 residual of its restorations
    "l1_restore4": ("unet", {"inference_samples": 4, "anomaly": {"map": "l1", "score": "mean"}}),
}

#: the run's own scoring of every model with these anomaly settings on top (name → settings)
RUN_SCORINGS: dict[str, dict[str, Any]] = {
    "run_border05": {"border": 0.05},
    "run_border10": {"border": 0.1},
    "run_border15": {"border": 0.15},
}

#: every scoring's name (``--scorings`` picks some); ``run`` = the run's own configuration
ALL_SCORINGS = ["run", *RUN_SCORINGS, *SCORINGS, *MODEL_SCORINGS, "ra_authors"]

#: model keys outside ``anomaly`` that scoring reads, at the values that score x itself
PLAIN_INFERENCE = {"unet": {"inference_samples": 0}, "ra": {"inference_samples": 0}}


def _plain(model: str, over: dict[str, Any]) -> dict[str, Any]:
    """``model``'s settings ``over`` on top of the default anomaly settings and plain inference
    (nothing kept from the run's own scoring: a run trained with demo.yaml's saliency or inference
    samples is re-scored plainly)."""
    from imgae_dx.config import AnomalyConfig

    return {**PLAIN_INFERENCE.get(model, {}), **over,
            "anomaly": {**AnomalyConfig().model_dump(mode="json"), **over.get("anomaly", {})}}


def _overlay(models: list[str], anomaly: dict[str, Any]) -> dict[str, Any]:
    """Every model scored with ``anomaly`` (see :func:`_plain`)."""
    return {"model": {m: _plain(m, {"anomaly": anomaly}) for m in models}}


def view_figures(eval_dir: Path, bootstrap: int) -> dict[str, dict[str, dict[str, Any]]]:
    """Per model and view position: test AUROC with a patient-bootstrap 95 % interval and the class
    counts, from an evaluation's ``scores.csv`` (``{model: {view: {auroc, ci, n_pos, n_neg}}}``)."""
    from imgae_dx.evaluation.metrics import auroc, patient_bootstrap
    from imgae_dx.evaluation.score_files import read_scores

    table = read_scores(eval_dir / "scores.csv")
    views = np.asarray(table.views)
    patients = np.asarray(table.patients)
    out: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in table.models}
    for view in sorted(set(views.tolist())):
        sel = views == view
        y = table.labels[sel]
        if y.min() == y.max():
            continue
        boot = patient_bootstrap(y, {m: s[sel] for m, s in table.scores.items()}, patients[sel],
                                 n_resamples=bootstrap, seed=0) if bootstrap else None
        for m, s in table.scores.items():
            ci = [round(v, 4) for v in boot.ci(m, "auroc")] if boot else None
            out[m][view] = {"auroc": round(auroc(y, s[sel]), 4), "ci": ci,
                            "n_pos": int(y.sum()), "n_neg": int((y == 0).sum())}
    return out


def score_variants(out: Path, models: list[str], source: str | None = None,
                   only: set[str] | None = None, bootstrap: int = 200
                   ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, dict[str, Any]]]]:
    """Test AUROC of the trained run ``out`` under every scoring (no retraining), or under the
    scorings named in ``only``: ``(auroc[scoring][model], by_view[scoring][model][view])``."""
    from imgae_dx.evaluation.evaluator import evaluate_run

    auroc: dict[str, dict[str, float]] = {}
    by_view: dict[str, dict[str, dict[str, Any]]] = {}

    def score(name: str, overlay: dict[str, Any] | None, keep: list[str]) -> None:
        if only is not None and name not in only:
            return
        m = evaluate_run(out, source=source, scoring=overlay, name=None if name == "run" else name,
                         progress=False)
        auroc[name] = {k: v.auroc for k, v in m.models.items() if k in keep}
        views = view_figures(out / ("eval" if name == "run" else f"eval-{name}"), bootstrap)
        by_view[name] = {k: v for k, v in views.items() if k in keep}

    score("run", None, models)
    if any(only is None or n in only for n in RUN_SCORINGS):
        from imgae_dx.config import config_from_yaml_text

        cfg = config_from_yaml_text((out / "config.yaml").read_text(), str(out / "config.yaml"))
        for name, over in RUN_SCORINGS.items():
            score(name, {"model": {m: {"anomaly": {**getattr(cfg.model, m).anomaly.model_dump(mode="json"),
                                                   **over}} for m in models}}, models)
    for name, anomaly in SCORINGS.items():
        score(name, _overlay(models, anomaly), models)
    for name, (model, over) in MODEL_SCORINGS.items():
        if model in models:
            score(name, {"model": {model: _plain(model, over)}}, [model])
    if "ra" in models:
        score("ra_authors", ra_authors_overlay()[0], ["ra"])
    return auroc, by_view


def ra_authors_overlay() -> tuple[dict[str, Any], bool]:
    """The RA authors' scoring (``configs/recipes/ra_authors_scoring.yaml``) and whether it has
    its LPIPS saliency: only where the weights are cached (``imgae-dx fetch-weights``); without
    them the same scoring minus the saliency (the CLAHE residual of one sampled z)."""
    import yaml

    from imgae_dx.models import lpips_weights

    overlay = yaml.safe_load((RECIPES / "ra_authors_scoring.yaml").read_text())
    have = all(lpips_weights.find(w) is not None for w in (lpips_weights.BACKBONE, lpips_weights.HEADS))
    if not have:
        overlay["model"]["ra"]["anomaly"]["saliency"] = "none"
    return overlay, have


def train_and_score(setting: str, seed: int, archive: Path, out: Path, args: argparse.Namespace) -> dict:
    """Train one setting at one seed, then score it with every variant; returns the figures."""
    from imgae_dx.config import load_config, nest_dotted
    from imgae_dx.training.streaming_trainer import StreamingTrainer

    over: dict[str, Any] = {"source": str(archive), "out": str(out), "seed": seed,
                            "logging.progress": False, "evaluation.bootstrap": args.bootstrap,
                            "evaluation.examples": 0}
    if args.smoke:
        over.update({"training.epochs_per_stage": 1, "training.min_images_per_run": 0,
                     "model.unet.base_channels": 8,
                     "model.unet.groups": 4, "model.ra.channels": [4, 8, 8, 16, 16]})
    files = [ROOT / "configs" / "demo.yaml"]
    if setting == "dae":
        files.append(RECIPES / "dae_kascenas.yaml")
    elif setting.endswith((".yaml", ".yml")):
        files.append(Path(setting))
    elif setting not in ("demo", "replay"):
        raise SystemExit(f"unknown setting {setting!r}: demo, dae, replay or a YAML file")
    if setting == "replay":
        over["training.replay"] = "all"
    over.update(args.overrides)
    base: dict[str, Any] = {}
    import yaml

    from imgae_dx.config import deep_merge

    for f in files:
        base = deep_merge(base, yaml.safe_load(f.read_text()))
    merged = out.parent / f"{out.name}.yaml"
    merged.write_text(yaml.safe_dump(deep_merge(base, nest_dotted(over))))
    cfg = load_config(merged)
    t0 = time.perf_counter()
    res = StreamingTrainer(cfg).train_progressive_stages()
    train_s = time.perf_counter() - t0
    models = list(cfg.models)
    auroc, by_view = score_variants(out, models, only=args.scorings, bootstrap=args.bootstrap)
    row: dict[str, Any] = {"setting": setting, "seed": seed, "train_s": round(train_s, 1),
                           "val_loss": res.best_val, "auroc": auroc, "by_view": by_view}
    if "ra" in models:
        row["lpips_used"] = ra_authors_overlay()[1]
    return row


def rescore(kept: Path, only: set[str] | None = None, bootstrap: int = 200) -> list[dict]:
    """Re-score every run kept by ``--keep`` under ``kept`` (on its ``dev/data.zip``, else on each
    run's own source) with every scoring; nothing is retrained."""
    from imgae_dx.config import config_from_yaml_text
    from imgae_dx.run.checkpoint import checkpoint_file, read_checkpoint

    rows = []
    for run in sorted(p for p in kept.iterdir() if (p / "config.yaml").is_file()):
        cfg = config_from_yaml_text((run / "config.yaml").read_text(), str(run / "config.yaml"))
        setting, _, seed = run.name.rpartition("_")
        print(f"re-scoring {run.name} …", file=sys.stderr, flush=True)
        val = {m: read_checkpoint(checkpoint_file(run, m), model_name=m).val_loss
               for m in cfg.models if m != "pca"}
        dev = kept / "dev" / "data.zip"  # a synthetic archive kept with the runs; else the run's source
        auroc, by_view = score_variants(run, list(cfg.models), str(dev) if dev.is_file() else None,
                                        only=only, bootstrap=bootstrap)
        rows.append({"setting": setting, "seed": int(seed), "val_loss": val, "auroc": auroc,
                     "by_view": by_view})
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean ± sd over seeds per (setting, scoring, model, view); view ``all`` is the whole test
    split, the others its view positions (with each seed's value and bootstrap interval)."""
    from imgae_dx.visualization.seeds import mean_sd

    def figures(r: dict, scoring: str, model: str, view: str) -> dict[str, Any] | None:
        if view == "all":
            v = r["auroc"].get(scoring, {}).get(model)
            return None if v is None else {"auroc": v, "ci": None}
        return r.get("by_view", {}).get(scoring, {}).get(model, {}).get(view)

    keys = sorted({(r["setting"], s, m, v) for r in rows for s, per in r["auroc"].items() for m in per
                   for v in ["all", *r.get("by_view", {}).get(s, {}).get(m, {})]})
    out = []
    for setting, scoring, model, view in keys:
        got = [(r["seed"], f) for r in rows if r["setting"] == setting
               for f in [figures(r, scoring, model, view)] if f is not None]
        st = mean_sd([f["auroc"] for _, f in got])
        out.append({"setting": setting, "scoring": scoring, "model": model, "view": view, "n": st["n"],
                    **{k: None if st[k] is None else round(st[k], 4) for k in ("mean", "sd")},
                    "seeds": {str(seed): f for seed, f in got}})
    return out


def _cell(s: dict) -> str:
    if s["mean"] is None:
        return "-"
    txt = f"{s['mean']:.3f}" + (f" ± {s['sd']:.3f}" if s["sd"] is not None else "")
    if s["view"] != "all" and s["seeds"]:
        txt += " (" + ", ".join(f"{f['auroc']:.3f}" for f in s["seeds"].values()) + ")"
    return txt


def markdown(summary: list[dict], rows: list[dict]) -> str:
    """One table per view (the whole test split, then each view position): mean ± sd over seeds,
    per view also each seed's value; then the seeds' bootstrap 95 % intervals and validation loss."""
    models = sorted({s["model"] for s in summary}, key=["unet", "ra", "ae", "pca"].index)
    views = sorted({s["view"] for s in summary}, key=lambda v: (v != "all", v))
    lines: list[str] = []
    for view in views:
        lines += ["", f"Test AUROC, {'whole test split' if view == 'all' else 'view ' + view}"
                  + ("" if view == "all" else " — mean ± sd over seeds (each seed's value)") + ":", "",
                  "| setting | scoring | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
        cells: dict[tuple[str, str], dict[str, str]] = {}
        for s in summary:
            if s["view"] == view:
                cells.setdefault((s["setting"], s["scoring"]), {})[s["model"]] = _cell(s)
        for (setting, scoring), per in cells.items():
            lines.append(f"| {setting} | {scoring} | " + " | ".join(per.get(m, "") for m in models) + " |")
    cis = [f"{s['setting']}/{s['scoring']}/{s['model']}/{s['view']}: "
           + ", ".join(f"s{seed} [{f['ci'][0]:.2f}, {f['ci'][1]:.2f}]" for seed, f in s["seeds"].items())
           for s in summary if s["view"] != "all" and s["scoring"] == "run"
           and all(f.get("ci") for f in s["seeds"].values()) and s["seeds"]]
    if cis:
        lines += ["", "Patient-bootstrap 95 % intervals per seed (scoring `run`): " + "; ".join(cis)]
    val: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        for m, v in (r["val_loss"] or {}).items():
            if v is not None:
                val.setdefault((r["setting"], m), []).append(v)
    lines += ["", "Best validation loss (selection set), mean over seeds: " + "; ".join(
        f"{s}/{m} {np.mean(v):.5f}" for (s, m), v in sorted(val.items()))]
    return "\n".join(lines).lstrip("\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--settings", default="demo,dae",
                    help="comma-separated: demo, dae, replay, or YAML files merged over demo.yaml "
                         "(the setting is named after the file)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--archive-seed", type=int, default=1, help="sample generator seed (dev archive)")
    ap.add_argument("--variety", choices=["standard", "wide"], default="standard",
                    help="the dev archive's variety (wide: the harder one, see imgae_dx.testing.sample.plan)")
    ap.add_argument("--images-per-stage", type=int, default=800)
    ap.add_argument("--archive", default=None, metavar="ZIP",
                    help="train and score on this NIH-layout archive instead of a synthetic one "
                         "(e.g. the real development archive of benchmarks/real_dev_archive.py)")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--smoke", action="store_true", help="tiny archive, 1 epoch: checks the harness")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", default=None, metavar="DIR",
                    help="keep the dev archive and every trained run under DIR (to re-score later)")
    ap.add_argument("--rescore", default=None, metavar="DIR",
                    help="train nothing: re-score the runs a previous --keep DIR kept, with every scoring")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=YAML",
                    help="config override for every setting, e.g. training.epochs_per_stage=12 "
                         "or models=[unet,ra,pca] (repeatable; named in the table's setting)")
    ap.add_argument("--scorings", default=None, metavar="NAMES",
                    help="comma-separated scorings to run (default: all): "
                         + ", ".join(ALL_SCORINGS))
    args = ap.parse_args(argv)
    import yaml

    known = set(ALL_SCORINGS)
    args.scorings = None if args.scorings is None else {s.strip() for s in args.scorings.split(",") if s.strip()}
    if args.scorings and args.scorings - known:
        ap.error(f"unknown scorings {sorted(args.scorings - known)}; known: {sorted(known)}")

    args.overrides = {}
    for kv in args.sets:
        key, sep, val = kv.partition("=")
        if not sep:
            ap.error(f"--set needs KEY=VALUE, got {kv!r}")
        args.overrides[key.strip()] = yaml.safe_load(val)
    suffix = "".join(f" {k.rsplit('.', 1)[-1]}={v}" for k, v in args.overrides.items() if k != "models")
    if args.rescore:
        rows = rescore(Path(args.rescore), args.scorings, args.bootstrap)
        summary = summarise(rows)
        print(json.dumps({"rescored": args.rescore, "rows": rows, "summary": summary}, indent=1))
        if args.markdown:
            print(markdown(summary, rows))
        return 0
    from imgae_dx.testing.sample import write_sample_archive

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="quality_bench_", dir=args.workdir) as d:
        tmp = Path(d)
        n = 60 if args.smoke else args.images_per_stage
        archive = Path(args.archive) if args.archive else write_sample_archive(
            tmp / "dev", images_per_stage=n, stages=3 if not args.smoke else 2, seed=args.archive_seed,
            image_px=128, progress=False, variety=args.variety)
        rows = []
        for setting in [s.strip() for s in args.settings.split(",") if s.strip()]:
            for seed in seeds:
                name = Path(setting).stem if setting.endswith((".yaml", ".yml")) else setting
                out = tmp / f"{name}_{seed}"
                print(f"{name} seed {seed} …", file=sys.stderr, flush=True)
                row = train_and_score(setting, seed, archive, out, args)
                row["setting"] = name + suffix
                rows.append(row)
                if args.keep:
                    keep = Path(args.keep) / f"{name}{suffix.replace(' ', '_')}_{seed}"
                    shutil.rmtree(keep, ignore_errors=True)
                    shutil.move(str(out), keep)
                else:
                    shutil.rmtree(out, ignore_errors=True)
        if args.keep and not args.archive:  # a given archive stays where it is (the runs name it)
            (Path(args.keep) / "dev").mkdir(parents=True, exist_ok=True)
            shutil.copy2(archive, Path(args.keep) / "dev" / "data.zip")
        summary = summarise(rows)
    result = {"archive": args.archive or f"synthetic sample, seed {args.archive_seed}, {args.variety}",
              "overrides": args.overrides, "seeds": seeds, "rows": rows, "summary": summary}
    print(json.dumps(result, indent=1))
    if args.markdown:
        print(markdown(summary, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
