"""``imgae-dx export``: safetensors + JSON bundles of every model of a run (the PCA baseline
included) that load without unpickling, score as the run folder does, carry the calibration, a
model card and no local path; tampered bundles are refused in one line before any network is
built; ``--onnx`` matches PyTorch and fails in one line."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

import imgae_dx
from imgae_dx.cli import main
from imgae_dx.inference.bundle import export_run
from imgae_dx.inference.bundle_format import safetensors_header, source_identity
from imgae_dx.inference.errors import BundleError
from imgae_dx.inference.images import load_file, to_unit

from .conftest import DEFAULT_MODELS, make_run_folder


def _scores(results) -> dict[tuple[str, str], float]:
    return {(r.source, r.model): r.score for r in results}


def test_export_load_predict_gives_the_run_folders_scores(tmp_path, sample_pngs, monkeypatch, capsys):
    home = tmp_path / "home" / "someone"  # where a user keeps the archive: never in a bundle
    run = make_run_folder(tmp_path / "run", models=(*DEFAULT_MODELS, "ae"), source=home / "data.zip")
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text(json.dumps({
        "models": {"unet": {"auroc": 0.812, "auroc_ci": [0.75, 0.86], "auprc": 0.7,
                            "operating_point": {"target_specificity": 0.95, "threshold": 0.2,
                                                "specificity": 0.94, "sensitivity": 0.41}}},
        "counts": {"images": 100, "normal": 60, "abnormal": 40}, "view": "all", "synthetic_data": True}))
    bundle = tmp_path / "bundle"
    assert main(["export", "--run", str(run), "--out", str(bundle)]) == 0
    assert "bundle:" in capsys.readouterr().out
    assert sorted(p.name for p in bundle.iterdir()) == ["ae", "pca", "ra", "unet"]  # no .partial
    for m in ("unet", "ra", "ae", "pca"):
        files = sorted(p.name for p in (bundle / m).iterdir())
        assert files == ["MODEL_CARD.md", "calibration.json", "config.json", "model.safetensors"]
        cfg = json.loads((bundle / m / "config.json").read_text())
        assert cfg["format"] == "imgae_dx.bundle/2" and cfg["model"] == m and cfg["image_size"] == 64
        assert cfg["preprocessing"]["resize"] == "crop" and cfg["anomaly"]["map"] == "l1"  # the default
        assert cfg["checkpoint"]["step"] == 120 and cfg["package_version"] == imgae_dx.__version__
        assert cfg["onnx"] is None
        assert cfg["source"] == {"kind": "file", "name": "data.zip", "size": None, "version": None}
        assert (bundle / m / "calibration.json").read_bytes() == (run / "checkpoints" / m / "calibration.json").read_bytes()
        for f in ("config.json", "MODEL_CARD.md"):  # the archive's identity, not the user's paths
            text = (bundle / m / f).read_text()
            assert str(tmp_path) not in text and "someone" not in text, (m, f)
    card = (bundle / "unet" / "MODEL_CARD.md").read_text()
    for text in ("Research only", "0.812 [0.750, 0.860]", "images_001, images_002", "Steps: 120",
                 "0.01230", "synthetic sample dataset", "24 normal validation images", "`data.zip` (file)",
                 "Resize: `crop`"):
        assert text in card, text
    assert "Not evaluated" in (bundle / "ra" / "MODEL_CARD.md").read_text()
    pca_card = (bundle / "pca" / "MODEL_CARD.md").read_text()
    assert "PCA baseline" in pca_card and "8 principal components" in pca_card
    # the PCA baseline's state: the training mean, the components and k
    header = safetensors_header(bundle / "pca" / "model.safetensors")
    assert header == {"mean": ("float32", (64 * 64,)), "components": ("float32", (8, 64 * 64)),
                      "k": ("int64", ())}

    want = _scores(imgae_dx.load(run).predict(sample_pngs))
    # loading a bundle never unpickles: torch.load is not even called
    def no_pickle(*a, **k):
        raise AssertionError("torch.load called while loading a bundle")

    monkeypatch.setattr(torch, "load", no_pickle)
    got = _scores(imgae_dx.load(bundle).predict(sample_pngs))
    assert got == want and {m for _, m in got} == {"unet", "ra", "ae", "pca"}
    one = imgae_dx.load(bundle / "pca")  # one model folder of a bundle works too
    assert one.names == ["pca"]


def test_export_model_name_and_a_failure_leaves_no_partial_folder(tmp_path, monkeypatch, capsys):
    run = make_run_folder(tmp_path / "run", models=DEFAULT_MODELS)
    out = tmp_path / "b"
    assert main(["export", "--run", str(run), "--out", str(out), "--model-name", "pca"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["pca"]
    capsys.readouterr()

    import imgae_dx.inference.model_card as card

    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(card, "model_card", broken)
    with pytest.raises(OSError):
        export_run(run, out, model_name="unet")
    assert sorted(p.name for p in out.iterdir()) == ["pca"]  # no .unet.partial left behind


def test_the_runs_resize_policy_travels_with_the_bundle(tmp_path, sample_pngs):
    """A model trained with data.resize = pad is scored on padded images, from the run and from
    its bundle alike."""
    import cv2

    from imgae_dx.data.decode import resize_image

    run = make_run_folder(tmp_path / "run", models=("ae",), overrides={"data.resize": "pad"})
    export_run(run, tmp_path / "b")
    assert json.loads((tmp_path / "b" / "ae" / "config.json").read_text())["preprocessing"]["resize"] == "pad"
    assert "Resize: `pad`" in (tmp_path / "b" / "ae" / "MODEL_CARD.md").read_text()
    wide = cv2.resize(cv2.imread(str(sample_pngs[0]), cv2.IMREAD_GRAYSCALE), (200, 100),
                      interpolation=cv2.INTER_AREA)
    path = tmp_path / "wide.png"
    cv2.imwrite(str(path), wide)
    padded = resize_image(wide, 64, "pad")
    for where in (run, tmp_path / "b"):
        det = imgae_dx.load(where)
        assert det.models[0].resize == "pad"
        r = det.predict([path])[0]
        assert np.array_equal(r.image, padded)
        assert r.score == pytest.approx(float(det.models[0].model.predict(
            torch.from_numpy(to_unit(padded))[None, None]).score[0]), abs=1e-7)


def test_source_identity_keeps_no_local_path():
    assert source_identity("file:/home/me/nih/data.zip", size=5, version="mtime_ns=1;size=5").model_dump() \
        == {"kind": "file", "name": "data.zip", "size": 5, "version": "mtime_ns=1;size=5"}
    assert source_identity("folder:/home/me/nih/").name == "nih"
    assert source_identity("/home/me/archive.zip").model_dump()["name"] == "archive.zip"
    assert source_identity("kaggle:nih-chest-xrays/data", version='"etag"').name == "kaggle:nih-chest-xrays/data"
    url = source_identity("https://user:pw@host/a/data.zip?X-Goog-Signature=secret")
    assert url.kind == "url" and url.name == "https://host/a/data.zip"


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


@pytest.fixture(scope="module")
def unet_bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("unet_bundle")
    run = make_run_folder(tmp / "run", models=("unet",))
    export_run(run, tmp / "b")
    return tmp / "b"


def _edit_config(folder, edit):
    p = folder / "config.json"
    cfg = json.loads(p.read_text())
    edit(cfg)
    p.write_text(json.dumps(cfg))


TAMPERED = {
    # the network this asks for (509 billion numbers) would be built before the weights were read
    "huge_network": (lambda c: c["architecture"].update(base_channels=4096, depth=6),
                     "describes a unet of 509,324,431,361 numbers that does not fit"),
    "no_image_size": (lambda c: c.pop("image_size"), "image_size is missing"),
    "no_architecture": (lambda c: c.pop("architecture"), "architecture is missing"),
    "image_size_text": (lambda c: c.update(image_size="abc"), "image_size: got 'abc'"),
    "image_size_nan": (lambda c: c.update(image_size=math.nan), "image_size: got nan"),
    "image_size_huge": (lambda c: c.update(image_size=100_000), "image_size: got 100000"),
    "architecture_list": (lambda c: c.update(architecture=[1, 2]), "architecture: got \\[1, 2\\]"),
    "unknown_architecture_key": (lambda c: c["architecture"].update(heads=4), "architecture.*heads"),
    "other_anomaly": (lambda c: c["anomaly"].update(map="l2"), "anomaly differs"),
    "older_format": (lambda c: c.update(format="imgae_dx.bundle/1"), "export the run again"),
    "weights_count": (lambda c: c["weights"].update(values=10), "config.json says 10 in"),
    "weights_digest": (lambda c: c["weights"].update(sha256="0" * 64), "SHA-256"),
    "resize_policy": (lambda c: c["preprocessing"].update(resize="stretch"),
                      "preprocessing.resize: got 'stretch'"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_a_tampered_bundle_is_refused_in_one_line_before_building_the_network(
        case, unet_bundle, tmp_path, sample_pngs, monkeypatch, capsys):
    import imgae_dx.inference.loading as loading

    bundle = tmp_path / "b"
    shutil.copytree(unet_bundle, bundle)
    edit, match = TAMPERED[case]
    _edit_config(bundle / "unet", edit)

    def never(*a, **k):
        raise AssertionError("the network was built from a tampered bundle")

    monkeypatch.setattr(loading, "load_model", never)
    rc = main(["predict", str(sample_pngs[0]), "--model", str(bundle), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    import re

    assert re.search(match, err), err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("case,edit,match", [
    ("negative_map_vmax", lambda c: c.update(map_vmax=-1.0), "map_vmax must be a positive number"),
    ("image_size_text", lambda c: c.update(image_size="64"), "image_size is str"),
    ("other_model", lambda c: c.update(model="ra"), "calibration of 'ra', not of 'unet'"),
    ("other_size", lambda c: c.update(image_size=128), "computed at 128px"),
])
def test_a_tampered_calibration_is_refused(case, edit, match, unet_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(unet_bundle, bundle)
    p = bundle / "unet" / "calibration.json"
    cal = json.loads(p.read_text())
    edit(cal)
    p.write_text(json.dumps(cal))
    with pytest.raises(BundleError, match=match):
        imgae_dx.load(bundle)


def test_a_damaged_bundle_is_a_clear_error(tmp_path, unet_bundle):
    out = tmp_path / "b"
    shutil.copytree(unet_bundle, out)
    weights = (out / "unet" / "model.safetensors").read_bytes()
    (out / "unet" / "model.safetensors").write_bytes(weights[:-10])
    with pytest.raises(BundleError, match="model.safetensors is damaged"):
        imgae_dx.load(out)
    (out / "unet" / "model.safetensors").write_bytes(b"\0" * 20)
    with pytest.raises(BundleError, match="model.safetensors is damaged"):
        imgae_dx.load(out)
    (out / "unet" / "config.json").write_text('{"format": "other"}')
    with pytest.raises(BundleError, match="not an imgae-dx bundle config"):
        imgae_dx.load(out)


@pytest.mark.slow
def test_onnx_matches_pytorch_on_the_sample_images(tmp_path, sample_pngs):
    import onnxruntime as ort

    # the demo's scorings: U-Net denoising fixed corruptions, RA with its encoder saliency; and
    # the PCA baseline, exported with its k components fixed
    run = make_run_folder(tmp_path / "run", models=DEFAULT_MODELS, overrides={
        "model.unet.anomaly": {"score": "topk"}, "model.unet.inference_samples": 2,
        "model.ra.anomaly": {"map": "ssim", "saliency": "encoder"}})
    out = tmp_path / "b"
    export_run(run, out, onnx=True)
    x = np.stack([to_unit(load_file(p, 64)) for p in sample_pngs])[:, None]
    loaded = {m.name: m.model for m in imgae_dx.load(out).models}
    assert set(loaded) == set(DEFAULT_MODELS)
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


def test_an_onnx_export_failure_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capfd):
    """The exporter prints pages of graph on failure: the user sees one line, exit status 2."""
    from imgae_dx.models.pca import PCAModel

    run = make_run_folder(tmp_path / "run", models=("pca",))
    monkeypatch.setattr(PCAModel, "exportable", lambda self: self)  # k read from a tensor: untraceable
    out = tmp_path / "b"
    rc = main(["export", "--run", str(run), "--out", str(out), "--onnx"])
    cap = capfd.readouterr()
    assert rc == 2 and cap.out == ""
    assert len(cap.err.strip().splitlines()) == 1, cap.err
    assert cap.err.startswith("error: ONNX export of pca failed (") and "export without --onnx" in cap.err
    assert list(out.iterdir()) == []


def test_a_pediatric_run_without_views_gets_its_own_model_card(tmp_path):
    """A ZhangLab run (no view positions in its split.csv, data.view PA as configured) exports
    view ``all`` and a card naming its dataset, protocol, population and published figures — not
    NIH's lists, adults and figures."""
    from imgae_dx.run.splits import SplitTable, write_split_table

    run = make_run_folder(tmp_path / "run", models=("ae",), overrides={"data.dataset": "zhanglab"})
    write_split_table(run, SplitTable(image=["train/NORMAL/IM-0001-0001.jpeg"], split=["train"], label=[0],
                                      patient=["IM-0001"], view=[""], findings=[""], stage=["part_001"]))
    export_run(run, tmp_path / "b")
    cfg = json.loads((tmp_path / "b" / "ae" / "config.json").read_text())
    assert cfg["dataset"] == "zhanglab" and cfg["view"] == "all"
    card = (tmp_path / "b" / "ae" / "MODEL_CARD.md").read_text()
    for text in ("`zhanglab` (ZhangLab pediatric pneumonia", "SQUID (CVPR 2023): train on train/NORMAL",
                 "the NORMAL images only", "paediatric chest radiographs", "SQUID 0.876 at 128 px", "adult patients",
                 "view cohort `all`:"):
        assert text in card, text
    assert "test_list.txt" not in card and "No Finding" not in card
    nih = make_run_folder(tmp_path / "nih", models=("ae",), overrides={"data.view": "PA"})  # keeps its cohort
    export_run(nih, tmp_path / "nb")
    assert json.loads((tmp_path / "nb" / "ae" / "config.json").read_text())["view"] == "PA"
    assert "No Finding" in (tmp_path / "nb" / "ae" / "MODEL_CARD.md").read_text()
