"""``eval/metrics.json``: typed results, one writer, one reader, and files written before the tag.

``data/metrics_40cadb8.json`` is the ``metrics.json`` of a tiny demo run (unet + ra, 3 stages of
the sample archive) as the evaluator wrote it at commit 40cadb8, before the format tag.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imgae_dx.errors import RunFolderError
from imgae_dx.evaluation.results import (
    EVALUATION_FORMAT,
    Comparison,
    Evaluation,
    ModelResult,
    OperatingPoint,
    parse_evaluation,
    read_evaluation,
    write_evaluation,
)
from imgae_dx.run.checkpoint import CheckpointSummary, Position

OLD = Path(__file__).parent / "data" / "metrics_40cadb8.json"
#: fields of a checkpoint summary that metrics.json files before the tag did not record
NEW_CHECKPOINT_FIELDS = {"stages", "precision", "package_version", "fingerprint"}


def _json_equal(a, b, path=""):
    """Every key and value of ``a`` is in ``b`` with the same type (int stays int)."""
    if isinstance(a, dict):
        assert isinstance(b, dict), path
        for k in a:
            assert k in b, f"{path}/{k} lost"
            _json_equal(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _json_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b and type(a) is type(b), f"{path}: {a!r} != {b!r}"


def test_a_file_written_before_the_tag_reads_as_typed_results():
    old = json.loads(OLD.read_text())
    assert "format" not in old
    ev = parse_evaluation(old, str(OLD))
    assert list(ev.models) == ["unet", "ra"]
    u = ev.models["unet"]
    assert u.auroc == old["models"]["unet"]["auroc"] and u.auroc_ci == tuple(old["models"]["unet"]["auroc_ci"])
    assert u.checkpoint == CheckpointSummary(
        file="checkpoints/unet/best.pt", stage="images_003", stage_k=3, position=Position(3, 0, 0), step=6,
        images_seen=24, val_loss=old["models"]["unet"]["checkpoint"]["val_loss"], val_stages=3,
        saved_at=old["models"]["unet"]["checkpoint"]["saved_at"])
    assert u.operating_point.threshold == old["models"]["unet"]["operating_point"]["threshold"]
    assert u.localisation.per_finding["Atelectasis"].n_boxes == 7
    assert u.by_view["AP"].n_pos == 5 and u.curves.has_roc_band
    assert ev.comparison == ev.comparisons[0] and ev.comparison.delong_p == old["comparison"]["delong_p"]
    assert ev.counts.by_stage == {"images_001": 16, "images_002": 6, "images_003": 11}
    assert ev.dataset == "nih" and ev.synthetic_data is True and ev.stream.requests == 18
    assert ev.best_by_auroc()[0] == "unet" and ev.published[0].auroc_high == 0.78  # NIH's range
    # written again, it keeps every key and value (plus the tag and the checkpoints' new fields)
    new = json.loads(json.dumps(ev.to_json()))
    _json_equal(old, new)
    assert set(new) - set(old) == {"format"} and new["format"] == EVALUATION_FORMAT
    assert set(new["models"]["ra"]["checkpoint"]) - set(old["models"]["ra"]["checkpoint"]) == NEW_CHECKPOINT_FIELDS


def test_the_earliest_shapes_are_mapped():
    """Files of the first versions: one comparison, checkpoint facts of an older payload, no
    dataset, protocol, scoring or operating point; and the bare minimum a hand-made file holds."""
    earliest = {
        "models": {"unet": {"auroc": 0.7, "auprc": 0.6, "auroc_ci": [0.6, 0.8],
                            "checkpoint": {"file": "checkpoints/unet/best.pt", "kind": None, "stage": "images_001",
                                           "stage_index": None, "epoch": None, "step": 40, "val_loss": 0.02}},
                   "ra": {"auroc": 0.6, "checkpoint": {"file": "checkpoints/ra/best.pt", "step": None}}},
        "comparison": {"a": "unet", "b": "ra", "diff": 0.1, "diff_ci": [-0.02, 0.2], "delong_p": 0.04},
        "counts": {"images": 50, "normal": 30, "abnormal": 20, "patients": 40},
        "synthetic_data": False, "view": "PA",
    }
    ev = parse_evaluation(earliest)
    assert ev.dataset == "nih" and ev.protocol is None and ev.evaluation == "default" and ev.scoring == {}
    assert ev.comparisons == [Comparison(a="unet", b="ra", diff=0.1, diff_ci=(-0.02, 0.2), delong_p=0.04)]
    ck = ev.models["unet"].checkpoint
    assert ck.step == 40 and ck.stage == "images_001" and ck.stage_k is None and ck.position is None
    assert ev.models["ra"].checkpoint is None  # no step: nothing to show
    assert ev.models["ra"].operating_point is None and ev.models["ra"].auroc_ci == (None, None)
    assert parse_evaluation({"models": {"unet": {"auroc": 0.5}}}).comparison is None


def test_written_and_read_back_unchanged(tmp_path):
    ev = Evaluation(
        models={"ae": ModelResult(auroc=0.61, auroc_ci=(0.5, 0.7),
                                  operating_point=OperatingPoint(target_specificity=0.95, threshold=None,
                                                                 note="no usable calibration"),
                                  checkpoint=CheckpointSummary(file="checkpoints/ae/best.pt", step=3,
                                                               position=Position(1, 0, 2), stages=["a"]))},
        comparisons=[], dataset="zhanglab", stages=["part_001"], scoring={"ae": {"map": "l1", "score": "mean"}})
    path = write_evaluation(tmp_path, ev)
    raw = json.loads(path.read_text())
    assert next(iter(raw)) == "format" and raw["comparison"] is None
    assert raw["models"]["ae"]["operating_point"] == {"target_specificity": 0.95, "threshold": None,
                                                      "note": "no usable calibration"}
    assert read_evaluation(tmp_path) == ev
    assert read_evaluation(tmp_path / "elsewhere") is None


@pytest.mark.parametrize(("content", "match"), [
    ('{"format": "imgae_dx.evaluation/3", "models": {}}', "evaluation format 'imgae_dx.evaluation/3'"),
    ('{"format": "something/1", "models": {}}', "not an ImgAE-Dx evaluation"),
    ('{"format": "imgae_dx.evaluation/2", "models": {"unet": {"auroc": "high"}}}', r"damaged \(models\.unet\.auroc"),
    ('{"format": "imgae_dx.evaluation/2"}', r"damaged \(models: field required"),
    ("[1, 2]", "not an ImgAE-Dx evaluation"),
    ('{"models": {', "cannot be read as JSON"),
])
def test_a_bad_file_is_one_clear_error(tmp_path, content, match):
    (tmp_path / "metrics.json").write_text(content)
    with pytest.raises(RunFolderError, match=match) as e:
        read_evaluation(tmp_path)
    assert str(tmp_path / "metrics.json") in str(e.value) and "\n" not in str(e.value)


def test_a_comparison_turned_round():
    c = Comparison(a="ra", b="unet", diff=-0.05, diff_ci=(-0.1, 0.03))
    assert c.oriented("ra") == (-0.05, (-0.1, 0.03))
    assert c.oriented("unet") == (0.05, (-0.03, 0.1))
    assert Comparison(a="ra", b="unet").oriented("unet") == (None, (None, None))
