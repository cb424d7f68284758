"""Streaming evaluation: scores per test image, resume after interruption, metrics, W&B, CLI."""

from __future__ import annotations

import csv
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from imgae_dx.config import load_config
from imgae_dx.data.datasets.nih import NIHIndex
from imgae_dx.errors import CheckpointError, RunFolderError, UserError
from imgae_dx.evaluation.evaluator import CloudEvaluator, evaluate_run
from imgae_dx.evaluation.results import EVALUATION_FORMAT, read_evaluation
from imgae_dx.models import create_model
from imgae_dx.run.checkpoint import CheckpointPayload, Position
from imgae_dx.run.identity import config_fingerprint
from imgae_dx.streaming.sources import open_archive
from imgae_dx.training.checkpointer import write_payload

TINY = {
    "data.image_size": 64, "training.batch_size": 8, "training.device": "cpu",
    "evaluation.bootstrap": 50, "evaluation.examples": 4, "logging.progress": False,
    "model.unet.base_channels": 8, "model.unet.depth": 3, "model.ra.channels": [8, 16, 16],
    "model.ra.zdim": 16, "data.view": "all", "models": ["unet", "ra"],
}


def make_run(root: Path, archive: Path, *, logger: str = "jsonl", kind: str = "best",
             wandb_id: str | None = None, seed: int = 0, **over) -> Path:
    """A run folder with untrained (seeded) tiny models saved in the trainer's checkpoint format."""
    cfg = load_config(overrides={**TINY, "source": str(archive), "logging.logger": logger,
                                 "data.index_cache_dir": str(root / "idx"), **over})
    run = root / "run"
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(cfg.to_yaml())
    for i, name in enumerate(cfg.models):
        torch.manual_seed(seed + i)
        m = create_model(name, image_size=64, cfg=getattr(cfg.model, name))
        write_payload(run / "checkpoints" / name / f"{kind}.pt", CheckpointPayload(
            model_name=name, model=m.state_dict(), config_yaml=cfg.to_yaml(),
            fingerprint=config_fingerprint(cfg.model_dump(mode="json")), image_size=64,
            package_version="test", step=10, stage="images_003", stage_k=3, position=Position(2, 1, 0),
            val_loss=0.01 * (i + 1), val_stages=3, wandb_run_id=wandb_id, saved_at=1.0))
    return run


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def nih(small_archive):
    cfg = load_config(overrides=TINY)
    a = open_archive(str(small_archive), cfg.data)
    yield NIHIndex.from_archive(a)
    a.close()


def test_scores_every_test_image_once_with_metadata(tmp_path, small_archive, nih):
    run = make_run(tmp_path, small_archive)
    m = evaluate_run(run, stages="images_001,images_002")
    rows = _rows(run / "eval" / "scores.csv")
    assert list(rows[0]) == ["image", "patient", "view", "stage", "findings", "label", "unet", "ra"]
    want = np.concatenate([nih.split(s, "test", view="all") for s in ("images_001", "images_002")])
    recs = {r.image: r for r in (nih.record(int(i)) for i in want)}
    assert sorted(r["image"] for r in rows) == sorted(recs)  # each test image exactly once
    for r in rows:
        rec = recs[r["image"]]
        assert int(r["label"]) == rec.label and r["view"] == rec.view and int(r["patient"]) == rec.patient
        assert r["stage"] == rec.stage and np.isfinite(float(r["unet"])) and np.isfinite(float(r["ra"]))
    # counts against the metadata
    labels = np.asarray([recs[k].label for k in recs])
    assert m.counts.images == len(recs)
    assert m.counts.abnormal == int(labels.sum()) and m.counts.normal == int((labels == 0).sum())
    assert m.counts.patients == len({r.patient for r in recs.values()})
    # localisation: one row per (model, box) of the test images that have boxes
    n_boxes = sum(len(r.boxes) for r in recs.values())
    loc = _rows(run / "eval" / "localisation.csv")
    assert len(loc) == 2 * n_boxes and m.models["unet"].localisation.n_boxes == n_boxes
    # metrics.json is valid JSON with the contract's keys, the checkpoint it describes and a p-value;
    # what the evaluator returns is what a reader gets back from the file
    mj = json.loads((run / "eval" / "metrics.json").read_text())
    assert mj["format"] == EVALUATION_FORMAT and read_evaluation(run / "eval") == m
    for name in ("unet", "ra"):
        u = mj["models"][name]
        assert {"auroc", "auprc", "auroc_ci", "f1_max", "fpr_at_95_tpr", "sensitivity_at_90_specificity",
                "per_finding", "by_view", "localisation", "checkpoint"} <= set(u)
        assert u["checkpoint"]["file"] == f"checkpoints/{name}/best.pt"
    assert 0 <= mj["comparison"]["p_value"] <= 1 and mj["synthetic_data"] is True
    assert mj["stages"] == ["images_001", "images_002"]
    # examples for the report: most and least anomalous, re-read by name
    for name in ("unet", "ra"):
        with np.load(run / "eval" / "examples" / f"{name}.npz") as z:
            assert z["images"].shape == (4, 64, 64) and z["maps"].shape == (4, 64, 64)
            s = {r["image"]: float(r[name]) for r in rows}
            top = max(s, key=s.get)
            assert str(z["image_ids"][0]) == top


def test_interrupted_evaluation_resumes_without_rescoring(tmp_path, small_archive):
    ref = make_run(tmp_path / "ref", small_archive)
    evaluate_run(ref, stages="images_001,images_002")
    run = make_run(tmp_path / "cut", small_archive)

    def stop(n: int) -> None:
        if n >= 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        CloudEvaluator(run, stages="images_001,images_002", on_batch=stop).run()
    partial = _rows(run / "eval" / "scores.csv")
    assert 10 <= len(partial) < len(_rows(ref / "eval" / "scores.csv"))
    state = json.loads((run / "eval" / "state.json").read_text())
    assert state["current"]["dataset"]["position"] > 0
    # a torn last line (killed mid-write) is dropped on resume
    with (run / "eval" / "scores.csv").open("a") as f:
        f.write("99999999_000.png,1,PA,images_001,Mass,1,0.3")
    ev = CloudEvaluator(run, stages="images_001,images_002")
    ev.run()
    rows = _rows(run / "eval" / "scores.csv")
    got = {r["image"]: (float(r["unet"]), float(r["ra"])) for r in rows}
    want = {r["image"]: (float(r["unet"]), float(r["ra"])) for r in _rows(ref / "eval" / "scores.csv")}
    assert len(rows) == len(got)  # no image scored twice
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-6)
    assert partial[0]["image"] == rows[0]["image"]


def test_new_checkpoint_starts_a_fresh_evaluation(tmp_path, small_archive):
    run = make_run(tmp_path, small_archive)
    evaluate_run(run, stages="images_001")
    first = _rows(run / "eval" / "scores.csv")
    make_run(tmp_path, small_archive, seed=7)  # retrained: other weights, same folder
    evaluate_run(run, stages="images_001")
    second = _rows(run / "eval" / "scores.csv")
    assert len(second) == len(first)
    assert any(a["unet"] != b["unet"] for a, b in zip(first, second, strict=True))


def test_falls_back_to_last_and_explains_missing_pieces(tmp_path, small_archive):
    run = make_run(tmp_path, small_archive, kind="last")
    ev = CloudEvaluator(run)
    ev.load_models()
    assert ev.checkpoints["unet"].file == "checkpoints/unet/last.pt"
    shutil.rmtree(run / "checkpoints" / "ra")
    with pytest.raises(CheckpointError, match="no checkpoint for model 'ra'"):
        CloudEvaluator(run).load_models()
    with pytest.raises(RunFolderError, match="no config.yaml"):
        CloudEvaluator(tmp_path / "nowhere")


def test_logs_comparison_to_the_same_wandb_run(tmp_path, small_archive, monkeypatch):
    calls: dict[str, list] = {"init": [], "log": [], "finish": []}

    class Table:
        def __init__(self, columns):
            self.columns, self.data = columns, []

        def add_data(self, *row):
            self.data.append(row)

    class Run:
        summary: dict = {}

        def log(self, payload):
            calls["log"].append(payload)

        def finish(self):
            calls["finish"].append(True)

    fake = types.ModuleType("wandb")
    fake.Table = Table
    fake.plot = types.SimpleNamespace(line_series=lambda **kw: ("line_series", kw))

    def init(**kw):
        calls["init"].append(kw)
        return Run()

    fake.init = init
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run = make_run(tmp_path, small_archive, logger="wandb", wandb_id="run-abc123")
    ev = CloudEvaluator(run, stages="images_001")
    m = ev.run()
    assert ev.wandb_logged is True
    (kw,) = calls["init"]
    assert kw["id"] == "run-abc123" and kw["resume"] == "allow"
    (payload,) = calls["log"]
    tab = payload["eval/comparison"]
    assert tab.columns[:3] == ["stage", "model", "auroc"]
    assert [r[1] for r in tab.data] == ["unet", "ra"] and tab.data[0][2] == pytest.approx(m.models["unet"].auroc)
    assert payload["eval/roc"][1]["keys"] == ["unet", "ra"]
    assert payload["eval/delong_p"] == m.comparison.delong_p
    assert calls["finish"] == [True]


def test_cli_evaluate_prints_summary_and_writes_report(tmp_path, small_archive, capsys):
    from imgae_dx.cli import main

    run = make_run(tmp_path, small_archive)
    assert main(["evaluate", "--run", str(run), "--stages", "images_001"]) == 0
    out = capsys.readouterr().out
    assert "AUROC [95% CI]" in out and "DeLong p" in out and "report.html" in out
    assert (run / "report.html").is_file() and (run / "plots" / "roc_pr.png").is_file()
    assert main(["report", str(run)]) == 0
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert main(["evaluate", "--run", str(run), "--stages", "images_099"]) == 2
    assert "unknown stage" in capsys.readouterr().err


def test_script_wrapper_defaults_to_runs_latest():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "evaluate_streaming", Path(__file__).parents[2] / "scripts" / "evaluate_streaming.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.translate([]) == ["--run", "runs/latest"]
    assert mod.translate(["--run-dir", "r", "--stages", "all"]) == ["--run", "r", "--stages", "all"]
    assert mod.translate(["--run=x"]) == ["--run=x"]


def test_rescoring_without_retraining_goes_to_its_own_folder(tmp_path, small_archive, capsys):
    """A scoring overlay re-scores the trained checkpoints into eval-NAME/ (report-NAME.html);
    eval/ is left alone, models whose scoring did not change score the same."""
    from imgae_dx.cli import main

    run = make_run(tmp_path, small_archive)
    base = evaluate_run(run, stages="images_001")
    before = (run / "eval" / "scores.csv").read_bytes()
    overlay = tmp_path / "clahe_topk.yaml"
    overlay.write_text("model:\n  ra:\n    anomaly: {map: clahe, score: topk, topk_percent: 5}\n")
    assert main(["evaluate", "--run", str(run), "--stages", "images_001", "--config", str(overlay)]) == 0
    out = capsys.readouterr().out
    assert "scoring ra: map clahe, score topk 5.0 %" in out and "scoring unet: map l1, score mean" in out
    m = json.loads((run / "eval-clahe_topk" / "metrics.json").read_text())
    assert m["evaluation"] == "clahe_topk" and m["scoring"]["ra"]["map"] == "clahe"
    assert base.scoring["ra"]["map"] == "l1" and base.evaluation == "default"
    assert (run / "eval" / "scores.csv").read_bytes() == before  # the default evaluation untouched
    new, old = _rows(run / "eval-clahe_topk" / "scores.csv"), _rows(run / "eval" / "scores.csv")
    assert [r["unet"] for r in new] == [r["unet"] for r in old]
    assert [r["ra"] for r in new] != [r["ra"] for r in old]
    html = (run / "report-clahe_topk.html").read_text()
    assert "Re-scored evaluation <code>clahe_topk</code>" in html and "map clahe, score topk" in html


def test_overlays_that_need_retraining_are_refused(tmp_path, small_archive, capsys):
    from imgae_dx.cli import main

    run = make_run(tmp_path, small_archive)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  unet:\n    base_channels: 32\n    anomaly: {map: l2}\ntraining: {batch_size: 4}\n")
    assert main(["evaluate", "--run", str(run), "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "model.unet.base_channels, training.batch_size" in err and "another training run" in err
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("model:\n  ra:\n    anomaly: {map: fancy}\n")
    assert main(["evaluate", "--run", str(run), "--config", str(wrong)]) == 2
    assert "model.ra.anomaly.map" in capsys.readouterr().err
    assert not list(run.glob("eval*"))  # nothing written


def test_packaged_recipes_as_overlays():
    """The RA authors' scoring re-scores a trained run; the DAE recipe changes training and is refused."""
    from imgae_dx.config import ConfigError, load_config
    from imgae_dx.evaluation.scoring import apply_overlay, read_overlay

    recipes = Path(__file__).resolve().parents[2] / "configs" / "recipes"
    ov = read_overlay(recipes / "ra_authors_scoring.yaml")
    ra = apply_overlay(load_config(), ov).model.ra
    assert (ra.anomaly.map, ra.anomaly.saliency, ra.anomaly.score, ra.inference_samples) == (
        "clahe", "lpips", "mean", 1)
    with pytest.raises(ConfigError, match="model.unet.conv"):
        read_overlay(recipes / "dae_kascenas.yaml")


def _with_split(run: Path) -> Path:
    """Write the run's split.csv as the trainer does (the run's dataset, view and seed)."""
    from imgae_dx.config import config_from_yaml_text
    from imgae_dx.data.datasets import open_dataset
    from imgae_dx.run.splits import SplitTable, write_split_table

    cfg = config_from_yaml_text((run / "config.yaml").read_text())
    with open_archive(cfg.source, cfg.data) as a:
        write_split_table(run, SplitTable.from_index(open_dataset(a, cfg.data, cfg.seed, quiet=True)))
    return run


@pytest.fixture(scope="module")
def zhanglab_archive(tmp_path_factory):
    from imgae_dx.testing.sample import write_zhanglab_archive

    return write_zhanglab_archive(tmp_path_factory.mktemp("zl"), images=90, seed=2, image_px=96)


def test_a_zhanglab_run_names_dataset_protocol_and_findings(tmp_path, zhanglab_archive, capsys):
    from imgae_dx.cli import main

    run = _with_split(make_run(tmp_path, zhanglab_archive, **{"data.dataset": "zhanglab"}))
    assert main(["evaluate", "--run", str(run), "--dataset", "zhanglab"]) == 0
    out = capsys.readouterr().out
    assert "dataset: zhanglab — protocol: SQUID" in out
    m = json.loads((run / "eval" / "metrics.json").read_text())
    assert m["dataset"] == "zhanglab" and "train/NORMAL + val/NORMAL" in m["protocol"]
    assert m["synthetic_data"] is True and m["stages"] == ["part_001"]
    assert set(m["models"]["unet"]["per_finding"]) == {"bacteria", "virus"}
    rows = _rows(run / "eval" / "scores.csv")
    assert all(r["image"].startswith("test/") and r["view"] == "" for r in rows)
    assert {r["findings"] for r in rows} == {"No Finding", "bacteria", "virus"}
    doc = (run / "report.html").read_text()
    assert "SQUID" in doc and "0.876" in doc and "128 px" in doc and "0.60–0.78" not in doc
    assert "synthetic sample" in doc
    assert main(["evaluate", "--run", str(run), "--dataset", "nih"]) == 2
    assert "trained on the zhanglab dataset, not nih" in capsys.readouterr().err


@pytest.fixture(scope="module")
def rsna_archive(tmp_path_factory):
    from imgae_dx.testing.sample import write_rsna_archive

    return write_rsna_archive(tmp_path_factory.mktemp("rsna"), images=80, seed=2, image_px=64)


def test_an_rsna_run_reports_both_classes_boxes_and_the_published_figures(tmp_path, rsna_archive, capsys):
    from imgae_dx.cli import main

    run = _with_split(make_run(tmp_path, rsna_archive, **{"data.dataset": "rsna"}))
    assert main(["evaluate", "--run", str(run)]) == 0
    assert "dataset: rsna — protocol: test on a seeded share" in capsys.readouterr().out
    m = json.loads((run / "eval" / "metrics.json").read_text())
    assert m["dataset"] == "rsna" and m["synthetic_data"] is True
    assert set(m["models"]["unet"]["per_finding"]) == {"Lung Opacity", "No Lung Opacity / Not Normal"}
    loc = m["models"]["ra"]["localisation"]
    assert loc["n_boxes"] > 0 and set(loc["per_finding"]) == {"Lung Opacity"}
    rows = _rows(run / "eval" / "scores.csv")
    assert {r["view"] for r in rows} == {"PA", "AP"} and all(r["image"].endswith(".dcm") for r in rows)
    doc = (run / "report.html").read_text()
    assert "AE4AD" in doc and "0.729" in doc and "64 px" in doc and "CS-Flow" in doc


def test_an_archive_that_gives_another_split_is_refused(tmp_path, small_archive):
    run = _with_split(make_run(tmp_path, small_archive))
    split = run / "split.csv"
    lines = split.read_text().splitlines()
    i = next(k for k, ln in enumerate(lines) if ",train," in ln and ",images_001" in ln)
    lines[i] = lines[i].replace(",train,", ",test,")
    split.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match="another split than .* trained on .*split 'test' → 'train'"):
        evaluate_run(run, stages="images_001")
    # other stages are not affected by the change: evaluated
    assert evaluate_run(run, stages="images_002").counts.images > 0


def test_a_real_nih_subset_gets_no_synthetic_caveat(tmp_path, small_archive):
    """No marker member, however small the metadata: real data (the size guess is gone)."""
    import zipfile

    from imgae_dx.data.datasets.base import SYNTHETIC_MARKER

    subset = tmp_path / "subset.zip"
    with zipfile.ZipFile(small_archive) as src, zipfile.ZipFile(subset, "w") as dst:
        for info in src.infolist():
            if info.filename != SYNTHETIC_MARKER:
                dst.writestr(info, src.read(info.filename))
    run = make_run(tmp_path, subset)
    m = evaluate_run(run, stages="images_001")
    assert m.synthetic_data is False and m.dataset == "nih"
    from imgae_dx.visualization.report import write_report

    doc = write_report(run).read_text()
    assert "synthetic sample dataset" not in doc and "0.60–0.78" in doc
