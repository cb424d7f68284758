"""The benchmark scripts run end to end and compute their figures from what they measured.

Speed is not asserted here (the scripts measure it; ``benchmarks/RESULTS.md`` reports it). These
runs use the smallest settings on the 256 px session archive so the scripts cannot rot between
the sessions that quote them — in particular the GPU scenario, checked on the CPU with ``--tiny``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _run(script: str, *args: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _json(script: str, *args: str, cwd: Path) -> dict:
    out = _run(script, *args, cwd=cwd)
    return json.loads(out[out.index("{"):])  # compare_loaders prints a Markdown table first


def test_model_bench_times_every_model(tmp_path):
    out = _json("model_bench.py", "--device", "cpu", "--tiny", "--image-size", "64", "--batch-size", "2",
               "--steps", "1", "--warmup", "1", "--precisions", "fp32", "--compile", "eager", cwd=tmp_path)
    assert out["device"].startswith("CPU")
    assert [r["model"] for r in out["results"]] == ["unet", "ra", "ae"]
    for r in out["results"]:
        assert "error" not in r
        assert r["images_per_s"] > 0 and math.isfinite(r["loss"])


def test_train_bench_one_stream_and_gpu_harness(small_archive, tmp_path):
    out = _json("train_bench.py", "--scenario", "one_stream,gpu", "--tiny", "--archive", str(small_archive),
               "--bare-steps", "1", "--gpu-epochs", "2", "--batch-size", "4", "--gpu-image-size", "64",
               "--ceiling-images", "8", "--workdir", str(tmp_path), cwd=tmp_path)
    one = out["one_stream"]
    walls = one["wall_s"]
    assert set(walls) == {"unet", "ra", "ae", "all"} and all(w > 0 for w in walls.values())
    assert one["ratio_all_vs_slowest_single"] == pytest.approx(
        walls["all"] / max(walls["unet"], walls["ra"], walls["ae"]), abs=1e-3)
    steps = one["bare_step_ms"]
    assert one["compute_bound_ratio"] == pytest.approx(sum(steps.values()) / max(steps.values()), abs=1e-3)
    assert one["compute_bound_ratio"] >= 1.0
    g = out["gpu"]
    assert g["card"].startswith("none: CPU harness check")
    assert g["warm_trainer_images_per_s"] > 0 and g["decode_ceiling_images_per_s"] > 0
    assert g["ratio_warm_vs_bare"] == pytest.approx(
        g["warm_trainer_images_per_s"] / g["bare_all_models_images_per_s"], rel=0.01)
    assert g["cold_epoch_images_per_s"] > 0


def test_train_bench_gpu_scenario_says_why_it_skips(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the scenario for real")
    out = _json("train_bench.py", "--scenario", "gpu", "--workdir", str(tmp_path), cwd=tmp_path)
    assert "no CUDA device" in out["gpu"]["skipped"] and "--tiny" in out["gpu"]["skipped"]


def test_stream_bench_reports_every_target(small_archive, tmp_path):
    out = _json("stream_bench.py", "--archive", str(small_archive), "--selection", "stage",
               "--image-size", "64", cwd=tmp_path)
    r = out["stage"]
    assert set(r["meets_target"]) == set(out["targets"])
    assert 1.0 <= r["bytes_ratio"] <= 1.25  # every member of every stage, nothing read twice
    assert r["cold_images_per_s"] > 0 and r["ceiling_images_per_s"] > 0


def test_compare_loaders_naive_vs_streaming(small_archive, tmp_path):
    ratios = _json("compare_loaders.py", "--archive", str(small_archive), "--images", "40",
                   "--loaders", "a,c", "--image-size", "64", "--json", str(tmp_path / "c.json"), cwd=tmp_path)
    for key in ("naive_vs_imgae_cold_peak_rss", "naive_vs_imgae_cold_rss_above_imports",
                "naive_vs_imports_alone_peak_rss", "warm_vs_cold_images_per_s"):
        assert ratios[key] > 0, key
    # a loader can never beat one that holds nothing past its imports
    assert ratios["naive_vs_imports_alone_peak_rss"] >= ratios["naive_vs_imgae_cold_peak_rss"]
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["imgae_dx"]["cold"]["images"] == saved["naive"]["images"] == 40


def test_scaling_bench_rows(small_archive, tmp_path):
    table = _run("scaling_bench.py", "--stages-archive", str(small_archive), "--stage-archive",
                 str(small_archive), "--per-stage", "10,40", "--image-size", "64",
                 "--json", str(tmp_path / "s.json"), cwd=tmp_path)
    rows = json.loads((tmp_path / "s.json").read_text())["rows"]
    assert len(table.strip().splitlines()) == 2 + len(rows)  # the Markdown table, one line a run
    assert [r["images"] for r in rows][3:] == [10, 40]
    assert len(rows[2]["rss_after_stage_mb"]) == 3  # one reading per stage of the 3-stage run


def test_ablation_bench_scores_each_variant(small_archive, tmp_path):
    out = _json("ablation_bench.py", "--archive", str(small_archive), "--steps", "3", "--batch-size", "4",
               "--base-channels", "8", "--variants", "unet_skips_no_noise,unet_skips_dae", cwd=tmp_path)
    assert [r["variant"] for r in out["results"]] == ["unet_skips_no_noise", "unet_skips_dae"]
    for r in out["results"]:
        assert all(0.0 <= v <= 1.0 for k, v in r.items() if k.startswith("auroc"))


def test_predict_bench_measures_predict_against_the_decode_ceiling(tmp_path):
    out = _json("predict_bench.py", "--images", "6", "--image-px", "128", "--repeats", "1", "--tiny",
               "--batch-size", "4", "--workdir", str(tmp_path), cwd=tmp_path)
    assert out["images"] == 6 and out["models"] == ["unet", "ra", "ae"]
    assert out["decode_ceiling_median"] > 0 and out["predict_median"] > 0
    assert out["ratio"] == pytest.approx(out["predict_median"] / out["decode_ceiling_median"], rel=0.05)
    assert len(list((tmp_path / "out" / "overlays").glob("*.png"))) == 6
