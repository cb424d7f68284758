"""``imgae-dx demo``: the whole pipeline (sample → loopback HTTP → train → evaluate → report).

The end-to-end test runs the real demo code path on a tiny archive with tiny models (hidden
``args`` options); the packaged ``demo.yaml`` itself is checked for validity and for the settings
the demo promises.
"""

from __future__ import annotations

import argparse
import csv
import json
import zipfile
from pathlib import Path

import pytest
import yaml

from imgae_dx.cli import demo
from imgae_dx.errors import RunFolderError

TINY_OVERRIDES = {
    "model.unet.depth": 3,
    "model.unet.base_channels": 8,
    "model.ra.channels": [8, 8, 16, 16, 16],
    "model.ra.zdim": 8,
    "model.ae.channels": [8, 8, 16, 16],
    "data.view": "all",
    "training.epochs_per_stage": 1,
    "training.min_images_per_run": 0,
    "training.batch_size": 4,
    "training.device": "cpu",
    "evaluation.bootstrap": 50,
    "evaluation.examples": 2,
    "logging.progress": False,
}


def _args(out: Path, sample: Path | None = None, **kw) -> argparse.Namespace:
    ns = argparse.Namespace(out=str(out), images_per_stage=40, image_px=64,
                            overrides=dict(TINY_OVERRIDES))
    if sample is not None:
        ns.sample_dir = str(sample)
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns


def test_packaged_demo_config_is_valid_and_small():
    cfg = demo.build_config(Path("runs/x"), "http://127.0.0.1:9/data.zip")
    assert cfg.data.image_size == 64
    assert cfg.models == ["unet", "ra", "ae", "pca"]
    assert cfg.stages == "all"
    assert cfg.source == "http://127.0.0.1:9/data.zip"
    assert cfg.out == "runs/x"
    # the loopback URL changes per run: the index cache stays inside the run folder
    assert Path(cfg.data.index_cache_dir) == Path("runs/x/index_cache")
    # same shape as streaming_config.yaml: every top-level key of demo.yaml is a config section
    from imgae_dx.config import Config, packaged_config_path

    keys = set(yaml.safe_load(packaged_config_path("demo.yaml").read_text()))
    assert keys <= set(Config.model_fields)
    assert demo.SAMPLE.stages == 3


def test_sample_cache_location_and_key(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert demo.sample_cache_root() == tmp_path / "xdg" / "imgae_dx" / "sample"
    k1 = demo.SampleSpec(images_per_stage=10).key()
    k2 = demo.SampleSpec(images_per_stage=11).key()
    assert k1 != k2 and k1.startswith("s3x10-px")
    assert k1 == demo.SampleSpec(images_per_stage=10).key()  # stable


def test_out_folder_that_is_not_a_demo_run_is_refused_untouched(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(RunFolderError, match="not a previous demo run"):
        demo.run(_args(out, tmp_path / "sample"))
    assert (out / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "sample").exists()  # refused before generating anything
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(RunFolderError, match="not a folder"):
        demo.prepare_out(f)


def test_bad_override_is_a_config_error_before_any_work(tmp_path):
    from imgae_dx.config import ConfigError

    args = _args(tmp_path / "run", tmp_path / "sample")
    args.overrides["data.image_size"] = 65
    with pytest.raises(ConfigError, match="image_size"):
        demo.run(args)
    assert not (tmp_path / "run").exists() and not (tmp_path / "sample").exists()


@pytest.mark.slow
def test_demo_end_to_end_on_a_tiny_archive(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    out = tmp_path / "runs" / "demo"
    assert demo.run(_args(out)) == 0
    printed = capsys.readouterr().out

    # the sample went to the user cache, keyed by its parameters
    spec = demo.SampleSpec(images_per_stage=40, image_px=64)
    archive = demo.sample_cache_root() / spec.key() / "data.zip"
    assert archive.is_file()
    assert f"[1/6] sample archive: {archive}" in printed and "generated" in printed

    # a complete run folder
    for rel in ("config.yaml", "metrics.jsonl", demo.MARKER, "eval/metrics.json", "eval/scores.csv",
                "report.html", "checkpoints/unet/best.pt", "checkpoints/ra/best.pt", "checkpoints/ae/best.pt",
                "checkpoints/unet/stage_3.pt", "checkpoints/ra/stage_3.pt", "checkpoints/ae/stage_3.pt"):
        assert (out / rel).is_file(), rel
    assert list((out / "plots").glob("*.png"))
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["source"].startswith("http://127.0.0.1:")  # trained through the range-reading path
    assert cfg["models"] == ["unet", "ra", "ae", "pca"] and cfg["data"]["image_size"] == 64
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in records if r.get("kind") == "train"} == {
        "images_001", "images_002", "images_003"}
    assert {r["model"] for r in records} == {"unet", "ra", "ae"}

    # the printed summary: the evaluator's table, the comparison, the best model, the report path
    from imgae_dx.cli.evaluate import summary_lines
    from imgae_dx.evaluation.results import read_evaluation

    metrics = read_evaluation(out / "eval")
    for line in summary_lines(metrics):
        assert line in printed
    assert "unet vs ra: ΔAUROC" in printed and "DeLong p =" in printed
    best = max(metrics.models.items(), key=lambda kv: kv[1].auroc)
    assert f"highest test AUROC (descriptive): {best[0]}, {best[1].auroc:.3f}" in printed
    report_line = [x for x in printed.splitlines() if x.startswith("report:")]
    assert report_line and Path(report_line[-1].split(None, 1)[1]) == out / "report.html"
    assert "<h1>ImgAE-Dx report</h1>" in (out / "report.html").read_text()
    streamed = [x for x in printed.splitlines() if x.startswith("streamed ")]
    assert streamed and int(streamed[0].split(" in ")[1].split()[0]) > 0  # range requests served
    for step in ("[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]"):
        assert step in printed

    # the last step scored held-out test images from files and the report links its gallery
    heldout = sorted((out / "heldout").glob("*.png"))
    assert heldout
    test_names = set(zipfile.ZipFile(archive).read("test_list.txt").decode().split())
    assert {p.name for p in heldout} <= test_names  # held-out patients only
    with (out / "predict" / "predictions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * len(heldout) and all(r["error"] == "" and r["score"] for r in rows)  # 4 models
    assert len(list((out / "predict" / "overlays").glob("*.png"))) == len(heldout)
    assert 'href="predict/index.html"' in (out / "report.html").read_text()
    assert f"gallery: {out / 'predict' / 'index.html'}" in printed

    # a second demo into the same folder reuses the sample and replaces the previous run
    (out / "stale.txt").write_text("from the first run")
    mtime = archive.stat().st_mtime_ns
    assert demo.run(_args(out)) == 0
    printed2 = capsys.readouterr().out
    assert "reused" in printed2 and "previous demo run replaced" in printed2
    assert archive.stat().st_mtime_ns == mtime
    assert not (out / "stale.txt").exists() and (out / "report.html").is_file()


@pytest.mark.slow
def test_demo_over_seeds_reports_mean_and_sd(tmp_path, capsys):
    from imgae_dx.cli.demo import run

    out = tmp_path / "seeds"
    args = _args(out, tmp_path / "sample", seeds="3,4",
                 overrides={**TINY_OVERRIDES, "models": ["unet", "ra"]})
    assert run(args) == 0
    printed = capsys.readouterr().out
    assert "over 2 seeds (seed-3, seed-4)" in printed and "unet − ra ΔAUROC" in printed
    for s in (3, 4):
        run_dir = out / f"seed-{s}"
        assert (run_dir / "report.html").is_file()
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] == s
    agg = json.loads((out / "seeds.json").read_text())
    assert agg["models"]["unet"]["auroc"]["n"] == 2 and agg["models"]["ra"]["auroc"]["sd"] is not None
    assert "2 training seeds" in (out / "report.html").read_text()
