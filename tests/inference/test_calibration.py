"""Calibration: percentile / threshold semantics, the JSON file, and that no test image is used."""

from __future__ import annotations

import json
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from imgae_dx.inference.errors import CalibrationError
from imgae_dx.models import create_model
from imgae_dx.run.calibration import (
    Calibration,
    CalibrationSource,
    calibrate,
    calibration_path,
)

from .conftest import make_run_folder


def _cal(scores, **kw) -> Calibration:
    return Calibration(model="unet", scores=np.asarray(scores, float), map_vmax=1.0,
                       anomaly={"map": "l1"}, image_size=64,
                       source=CalibrationSource("checkpoints/unet/best.pt", 10, ("images_001",)), **kw)


def test_percentile_threshold_and_flag_follow_the_normal_scores():
    cal = _cal(np.arange(1, 101) / 100.0)  # 0.01 … 1.00, shuffled order is irrelevant
    assert cal.n == 100
    assert cal.percentile(0.005) == 0.0 and cal.percentile(0.50) == 50.0 and cal.percentile(2.0) == 100.0
    assert cal.threshold(0.95) == pytest.approx(0.95)  # 95 of the 100 normals are ≤ it
    assert not cal.flagged(0.95) and cal.flagged(0.951)
    # on the calibration images themselves, the flag rate is at most 1 − specificity
    for spec in (0.5, 0.9, 0.95, 0.99):
        assert np.mean(cal.flagged(cal.scores, spec)) <= 1 - spec + 1e-12
    assert np.isnan(cal.percentile(np.array([np.nan, 0.5]))[0])
    assert not cal.enough_for(0.999) and cal.enough_for(0.99)
    with pytest.raises(Exception, match="between 0 and 1"):
        cal.threshold(1.0)


def test_json_round_trip_and_refusals(tmp_path):
    cal = _cal([0.3, 0.1, 0.2])
    p = cal.save(tmp_path / "c.json")
    back = Calibration.load(p)
    assert back.scores.tolist() == [0.1, 0.2, 0.3] and back.source == cal.source and back.map_vmax == 1.0
    assert json.loads(p.read_text())["format"] == "imgae_dx.calibration/1"
    (tmp_path / "other.json").write_text(json.dumps({"format": "something/9"}))
    with pytest.raises(CalibrationError, match="not an imgae-dx calibration"):
        Calibration.load(tmp_path / "other.json")
    (tmp_path / "torn.json").write_text('{"format": "imgae_dx.calibration/1", "scores": [1')
    with pytest.raises(CalibrationError, match="cannot be read as JSON"):
        Calibration.load(tmp_path / "torn.json")
    with pytest.raises(CalibrationError, match="no scores"):
        _cal([])
    d = cal.to_json()
    for key, value, match in (("map_vmax", -1.0, "map_vmax must be a positive number"),
                              ("map_vmax", float("nan"), "map_vmax must be a positive number"),
                              ("image_size", "64", "image_size is str"),
                              ("image_size", 64.5, "image_size is float"),
                              ("scores", "0.1", "scores is str")):
        with pytest.raises(CalibrationError, match=match):
            Calibration.from_json({**d, key: value}, "c.json")


def test_calibrate_scores_every_image_with_predict():
    torch.manual_seed(0)
    model = create_model("ae", 64, channels=[8, 8, 16, 16]).eval()
    x = torch.rand(10, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    cal = calibrate(model, x.split(4), source={"checkpoint": "checkpoints/ae/best.pt", "step": 7,
                                               "stages": ["images_001"], "view": "PA"})
    assert cal.n == 10
    assert np.allclose(cal.scores, np.sort(model.predict(x).score.numpy()), atol=1e-7)
    assert cal.source.step == 7 and cal.anomaly == model.cfg.anomaly.model_dump(mode="json")
    assert cal.map_vmax > 0 and cal.image_size == 64
    assert cal.matches(cal.anomaly, 64, 7) is None and "step" in cal.matches(cal.anomaly, 64, 8)
    with pytest.raises(CalibrationError, match="no validation image"):
        calibrate(model, [], source={"checkpoint": "c", "step": 1})


def test_a_calibration_from_before_a_new_setting_still_matches_its_default():
    """A calibration written by an older version lacks settings added since (residual_sigma):
    it matches a model that leaves them at their default, not one that changes them."""
    from imgae_dx.config import AnomalyConfig

    now = AnomalyConfig(map="ssim").model_dump(mode="json")
    older = {k: v for k, v in now.items() if k != "residual_sigma"}
    cal = replace(_cal([0.1, 0.2, 0.3]), anomaly=older)
    assert cal.matches(now, cal.image_size) is None
    assert "settings differ" in cal.matches({**now, "residual_sigma": 2.0}, cal.image_size)
    assert "settings differ" in cal.matches({**now, "map": "l1"}, cal.image_size)
    cal = replace(cal, anomaly={**older, "from_the_future": 1})
    assert "settings differ" in cal.matches(now, cal.image_size)


def _extract(archive: Path, folder: Path) -> None:
    with zipfile.ZipFile(archive) as z:
        z.extractall(folder)


def test_run_calibration_streams_validation_normals_and_ignores_the_test_split(small_archive, tmp_path):
    """Poison every test image of the source: the calibration does not change by a bit."""
    import imgae_dx

    data = tmp_path / "data"
    _extract(small_archive, data)
    run = make_run_folder(tmp_path / "run", models=("ae",), source=data, calibrated=False)
    p1 = imgae_dx.load(run, notify=lambda m: None)
    first = calibration_path(run, "ae").read_bytes()
    cal1 = p1.models[0].calibration
    assert cal1.source.split == "val" and cal1.n > 0

    from imgae_dx.config import load_config
    from imgae_dx.data.datasets.nih import NIHIndex
    from imgae_dx.streaming.sources import open_archive

    test = set((data / "test_list.txt").read_text().split())
    poisoned = 0
    for png in data.rglob("*.png"):
        if png.name in test:
            png.write_bytes(b"not a png any more")  # undecodable: any read of it would show
            poisoned += 1
    assert poisoned > 0
    # the validation images themselves are not among the test ones (patient-disjoint splits)
    with open_archive(str(data), load_config(None, {"data.index_cache_dir": str(tmp_path / "ix")}).data) as a:
        idx = NIHIndex.from_archive(a)
        val = {idx.record(int(m)).image for m in idx.split("all", "val", view="all")}
    assert val and not (val & test)

    calibration_path(run, "ae").unlink()
    notes: list[str] = []
    p2 = imgae_dx.load(run, notify=notes.append)
    cal2 = p2.models[0].calibration
    assert cal2.scores.tolist() == cal1.scores.tolist() and cal2.map_vmax == cal1.map_vmax
    assert json.loads(calibration_path(run, "ae").read_bytes())["scores"] == json.loads(first)["scores"]
    assert any(f"saved to {calibration_path(run, 'ae')}" in n for n in notes), notes


def test_a_read_only_run_folder_is_calibrated_for_the_command_only(small_archive, tmp_path, monkeypatch):
    import errno

    import imgae_dx

    run = make_run_folder(tmp_path / "run", models=("ae",), source=small_archive, calibrated=False)

    def read_only(self, path):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Calibration, "save", read_only)
    notes: list[str] = []
    p = imgae_dx.load(run, notify=notes.append)
    assert p.models[0].calibration.n > 0 and not calibration_path(run, "ae").exists()
    assert any("not saved" in n and "Read-only file system" in n and "this command only" in n
               for n in notes), notes


def test_a_stale_calibration_is_recomputed_and_an_unreachable_source_is_one_clear_error(tmp_path):
    import imgae_dx

    run = make_run_folder(tmp_path / "run", models=("ae",))
    p = calibration_path(run, "ae")
    d = json.loads(p.read_text())
    d["source"]["step"] = 1  # written for an earlier best.pt
    p.write_text(json.dumps(d))
    notes: list[str] = []
    with pytest.raises(CalibrationError, match="source cannot be read"):
        imgae_dx.load(run, notify=notes.append)
    assert any("is stale" in n and "step 1" in n for n in notes), notes


def test_a_calibration_records_the_unets_inference_samples(tmp_path):
    """The U-Net's scores change with inference_samples: a calibration made with 0 (or by a version
    that did not record it) is not a calibration of the same weights scored with 4."""
    from imgae_dx.evaluation.operating_point import run_operating_point

    torch.manual_seed(0)
    model = create_model("unet", 32, base_channels=4, groups=2, depth=3, inference_samples=2).eval()
    x = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    cal = calibrate(model, x.split(3), source={"checkpoint": "checkpoints/unet/best.pt", "step": 7})
    assert cal.anomaly == {**model.cfg.anomaly.model_dump(mode="json"), "inference_samples": 2}
    assert cal.matches({**cal.anomaly, "inference_samples": 0}, 32) is not None
    older = {k: v for k, v in cal.anomaly.items() if k != "inference_samples"}
    assert replace(cal, anomaly=older).matches({**older, "inference_samples": 0}, 32) is None
    assert replace(cal, anomaly=older).matches(cal.anomaly, 32) is not None
    # a re-scored evaluation with other inference samples gets no threshold from this file
    run = tmp_path
    cal.save(calibration_path(run, "unet"))
    labels, scores = np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])
    assert run_operating_point(run, "unet", labels, scores, 7, cal.anomaly).threshold is not None
    other = run_operating_point(run, "unet", labels, scores, 7, {**cal.anomaly, "inference_samples": 4})
    assert other.threshold is None and "another anomaly map/score" in other.note
