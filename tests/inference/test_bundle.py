"""``imgae-dx export``: safetensors + JSON bundles that load without unpickling, score as the run
folder does, carry the calibration and a model card; ``--onnx`` matches PyTorch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import imgae_dx
from imgae_dx.cli import main
from imgae_dx.inference.bundle import export_run
from imgae_dx.inference.errors import BundleError
from imgae_dx.inference.images import load_file, to_unit

from .conftest import make_run_folder


def _scores(results) -> dict[tuple[str, str], float]:
    return {(r.source, r.model): r.score for r in results}


def test_export_load_predict_gives_the_run_folders_scores(tmp_path, sample_pngs, monkeypatch, capsys):
    run = make_run_folder(tmp_path / "run")
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text(json.dumps({
        "models": {"unet": {"auroc": 0.812, "auroc_ci": [0.75, 0.86], "auprc": 0.7,
                            "operating_point": {"target_specificity": 0.95, "threshold": 0.2,
                                                "specificity": 0.94, "sensitivity": 0.41}}},
        "counts": {"images": 100, "normal": 60, "abnormal": 40}, "view": "all", "synthetic_data": True}))
    bundle = tmp_path / "bundle"
    assert main(["export", "--run", str(run), "--out", str(bundle)]) == 0
    assert "bundle:" in capsys.readouterr().out
    for m in ("unet", "ra", "ae"):
        files = sorted(p.name for p in (bundle / m).iterdir())
        assert files == ["MODEL_CARD.md", "calibration.json", "config.json", "model.safetensors"]
        cfg = json.loads((bundle / m / "config.json").read_text())
        assert cfg["format"] == "imgae_dx.bundle/1" and cfg["model"] == m and cfg["image_size"] == 64
        assert cfg["preprocessing"]["resize"].startswith("area") and cfg["anomaly"]["map"] == "l1"
        assert cfg["checkpoint"]["step"] == 120 and cfg["package_version"] == imgae_dx.__version__
        assert cfg["onnx"] is None
        assert (bundle / m / "calibration.json").read_bytes() == (run / "checkpoints" / m / "calibration.json").read_bytes()
    card = (bundle / "unet" / "MODEL_CARD.md").read_text()
    for text in ("Research only", "0.812 [0.750, 0.860]", "images_001, images_002", "Steps: 120",
                 "0.01230", "synthetic sample dataset", "24 normal validation images"):
        assert text in card, text
    assert "Not evaluated" in (bundle / "ra" / "MODEL_CARD.md").read_text()

    want = _scores(imgae_dx.load(run).predict(sample_pngs))
    # loading a bundle never unpickles: torch.load is not even called
    def no_pickle(*a, **k):
        raise AssertionError("torch.load called while loading a bundle")

    monkeypatch.setattr(torch, "load", no_pickle)
    got = _scores(imgae_dx.load(bundle).predict(sample_pngs))
    assert got == want
    one = imgae_dx.load(bundle / "ra")  # one model folder of a bundle works too
    assert one.names == ["ra"]


def test_export_refuses_a_foreign_out_folder_and_replaces_a_previous_bundle(tmp_path, capsys):
    run = make_run_folder(tmp_path / "run", models=("ae",))
    out = tmp_path / "b"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["export", "--run", str(run), "--out", str(out)]) == 2
    assert "not empty and not a bundle" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
    out2 = tmp_path / "b2"
    export_run(run, out2)
    export_run(run, out2)  # again: the previous bundle's model folder is replaced
    assert sorted(p.name for p in out2.iterdir()) == ["ae"]


def test_a_damaged_bundle_is_a_clear_error(tmp_path):
    run = make_run_folder(tmp_path / "run", models=("ae",))
    out = tmp_path / "b"
    export_run(run, out)
    (out / "ae" / "model.safetensors").write_bytes(b"\0" * 20)
    with pytest.raises(BundleError, match="model.safetensors is damaged"):
        imgae_dx.load(out)
    (out / "ae" / "config.json").write_text('{"format": "other"}')
    with pytest.raises(BundleError, match="not an imgae-dx bundle config"):
        imgae_dx.load(out)


@pytest.mark.slow
def test_onnx_matches_pytorch_on_the_sample_images(tmp_path, sample_pngs):
    import onnxruntime as ort

    # the demo's scorings: U-Net denoising fixed corruptions, RA with its encoder saliency
    run = make_run_folder(tmp_path / "run", overrides={
        "model.unet.anomaly": {"score": "topk"}, "model.unet.inference_samples": 2,
        "model.ra.anomaly": {"map": "ssim", "saliency": "encoder"}})
    out = tmp_path / "b"
    export_run(run, out, onnx=True)
    x = np.stack([to_unit(load_file(p, 64)) for p in sample_pngs])[:, None]
    loaded = {m.name: m.model for m in imgae_dx.load(out).models}
    worst = 0.0
    for name, model in loaded.items():
        cfg = json.loads((out / name / "config.json").read_text())
        assert cfg["onnx"]["file"] == "model.onnx" and max(cfg["onnx"]["max_abs_diff"].values()) <= 1e-4
        sess = ort.InferenceSession(str(out / name / "model.onnx"), providers=["CPUExecutionProvider"])
        recon, amap, score = sess.run(["reconstruction", "anomaly_map", "score"], {"image": x})
        p = model.predict(torch.from_numpy(x))
        for a, b in ((recon, p.reconstruction), (amap, p.anomaly_map), (score, p.score)):
            d = float(np.abs(a - b.numpy()).max())
            worst = max(worst, d)
            assert d <= 1e-4, (name, d)
    assert worst <= 1e-4


def test_onnx_refuses_what_cannot_be_a_graph(tmp_path):
    run = make_run_folder(tmp_path / "run", models=("ae",), overrides={"model.ae.anomaly": {"map": "clahe"}})
    with pytest.raises(BundleError, match="clahe"):
        export_run(run, tmp_path / "b", onnx=True)
    assert not (tmp_path / "b").exists()  # refused before writing anything
