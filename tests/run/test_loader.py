"""The run loader: a run folder's models as ``evaluate``, ``predict`` and ``export`` all get them."""

from __future__ import annotations

import os

import pytest
import torch

from imgae_dx.config import ConfigError
from imgae_dx.errors import CheckpointError, RunFolderError, UserError
from imgae_dx.run.calibration import CalibrationError, calibration_path
from imgae_dx.run.checkpoint import CheckpointPayload, read_checkpoint
from imgae_dx.run.loader import RunFolder, select_names

from ..inference.conftest import make_run_folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run_folder(tmp_path_factory.mktemp("loader") / "run", models=("unet", "pca"), step=120)


def test_a_folder_without_config_yaml_is_refused_in_one_line(tmp_path):
    with pytest.raises(RunFolderError, match="has no config.yaml: pass the --out folder") as e:
        RunFolder(tmp_path)
    assert "\n" not in str(e.value)


def test_loads_every_model_from_best_pt_in_eval_mode_with_its_checkpoint_facts(run):
    folder = RunFolder(run)
    models = folder.load_models()
    assert [m.name for m in models] == ["unet", "pca"]
    for m in models:
        ck = read_checkpoint(run / "checkpoints" / m.name / "best.pt")
        assert not m.model.training and m.image_size == 64 == ck.image_size
        assert m.path == run / "checkpoints" / m.name / "best.pt"
        assert m.checkpoint.file == f"checkpoints/{m.name}/best.pt" and m.checkpoint.step == 120
        assert m.checkpoint.val_loss == pytest.approx(0.0123)
        st = m.path.stat()
        assert m.file_stamp == f"{st.st_size}:{st.st_mtime_ns}"
        for k, v in m.model.state_dict().items():  # the checkpoint's weights, exactly
            assert torch.equal(v, ck.model[k]), k
        assert m.model_config == getattr(m.config.model, m.name)


def test_last_pt_is_used_when_there_is_no_best_pt(tmp_path):
    run = make_run_folder(tmp_path / "run", models=("unet",), calibrated=False)
    os.replace(run / "checkpoints/unet/best.pt", run / "checkpoints/unet/last.pt")
    (m,) = RunFolder(run).load_models("unet")
    assert m.checkpoint.file == "checkpoints/unet/last.pt"


def test_model_name_selects_one_and_names_what_the_run_holds(run):
    assert [m.name for m in RunFolder(run).load_models("pca")] == ["pca"]
    with pytest.raises(UserError, match=r"holds no 'ra' model \(it has: unet, pca\)"):
        RunFolder(run).load_models("ra")
    with pytest.raises(UserError, match="unknown model 'vae'"):
        select_names(["unet"], "vae", "here")


def test_a_checkpoint_of_another_image_size_than_config_yaml_is_refused(tmp_path):
    run = make_run_folder(tmp_path / "run", models=("unet",), calibrated=False)
    path = run / "checkpoints/unet/best.pt"
    raw = read_checkpoint(path)
    torch.save(CheckpointPayload(**{**raw.__dict__, "image_size": 32}).to_dict(), path)
    with pytest.raises(CheckpointError, match="trained at 32px but the run's config.yaml says "
                                              "data.image_size=64"):
        RunFolder(run).load_models()


def test_adjust_changes_the_configuration_the_model_is_built_with(run):
    seen = []

    def topk(cfg, path):
        seen.append(path.name)
        return cfg.model_copy(update={"model": cfg.model.model_copy(update={
            "unet": cfg.model.unet.model_copy(update={
                "anomaly": cfg.model.unet.anomaly.model_copy(update={"score": "topk"})})})})

    (m,) = RunFolder(run).load_models("unet", adjust=topk)
    assert seen == ["best.pt"]
    assert m.model.cfg.anomaly.score == "topk" and m.model_config.anomaly.score == "topk"


def test_saved_calibration_is_used_only_for_the_same_weights_and_scoring(run, tmp_path):
    folder = RunFolder(run)
    (m,) = folder.load_models("unet")
    cal, why = folder.saved_calibration(m)
    assert why is None and cal is not None and cal.model == "unet" and cal.source.step == 120

    other = make_run_folder(tmp_path / "later", models=("unet",), step=121, calibrated=False)
    (later,) = RunFolder(other).load_models()
    assert RunFolder(other).saved_calibration(later) == (
        None, f"{calibration_path(other, 'unet')} does not exist")
    calibration_path(other, "unet").write_bytes(calibration_path(run, "unet").read_bytes())
    cal, why = RunFolder(other).saved_calibration(later)  # the file of step 120 for weights of 121
    assert cal is None and "is stale" in why and "step" in why

    calibration_path(other, "unet").write_text("{")
    with pytest.raises(CalibrationError):
        RunFolder(other).saved_calibration(later)


def test_a_damaged_config_yaml_is_a_config_error(tmp_path):
    (tmp_path / "config.yaml").write_text("data: [\n")
    with pytest.raises(ConfigError, match="config.yaml"):
        RunFolder(tmp_path)
