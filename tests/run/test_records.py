"""``metrics.jsonl`` rows are versioned: rows written before the tag still read, and a row this
version cannot read is reported with its line number at warning level, never dropped silently."""

from __future__ import annotations

import json
import logging

import pytest

from imgae_dx.run.records import (
    RECORD_FORMAT,
    RecordError,
    TrainRecord,
    ValRecord,
    parse_record,
    read_records,
    to_json,
)

#: rows as the writer of commit 40cadb8 wrote them (no format tag)
UNTAGGED_TRAIN = ('{"kind": "train", "step": 3, "stage": "images_001", "stage_index": 1, "epoch": 0, '
                  '"model": "unet", "loss": 0.5, "lr": 0.001, "images_per_s": 10.0, "rss_mb": 100.0, '
                  '"elapsed_s": 3.0, "images_seen": 12, "cache_hit_rate": null, "loss_scale": null, '
                  '"precision": "fp32", "grad_norm": 0.7}')
UNTAGGED_VAL = ('{"kind": "val", "step": 3, "stage": "images_001", "stage_index": 1, "epoch": 0, "model": '
                '"ra", "val_loss": 0.2, "val_images": 8, "selection_loss": 0.25, "selection_images": 16, '
                '"selection_stages": 2, "best_loss": 0.25, "improved": true, "val_s": 0.1, "rss_mb": null, '
                '"elapsed_s": 1.0, "kl": 3.0}')
TRAIN = TrainRecord(step=3, stage="images_001", stage_index=1, epoch=0, model="unet", loss=0.5, lr=1e-3,
                    images_per_s=10.0, rss_mb=100.0, elapsed_s=3.0, images_seen=12, terms={"grad_norm": 0.7})
VAL = ValRecord(step=3, stage="images_001", stage_index=1, epoch=0, model="ra", val_loss=0.2, val_images=8,
                selection_loss=0.25, selection_images=16, selection_stages=2, best_loss=0.25, improved=True,
                val_s=0.1, rss_mb=None, elapsed_s=1.0, terms={"kl": 3.0})


def test_rows_carry_the_format_first_and_read_back():
    row = to_json(TRAIN)
    assert list(row)[:2] == ["format", "kind"] and row["format"] == RECORD_FORMAT == "imgae_dx.record/2"
    assert parse_record(json.loads(json.dumps(row))) == TRAIN  # the tag is not a term
    assert parse_record(to_json(VAL)) == VAL


def test_rows_written_before_the_tag_read_the_same(tmp_path, caplog):
    p = tmp_path / "metrics.jsonl"
    p.write_text(UNTAGGED_TRAIN + "\n" + UNTAGGED_VAL + "\n" + json.dumps(to_json(TRAIN)) + "\n")
    with caplog.at_level(logging.INFO, logger="imgae_dx.run.records"):
        assert read_records(p) == [TRAIN, VAL, TRAIN]
    assert not caplog.records


def test_unreadable_rows_are_warned_about_with_their_line_numbers(tmp_path, caplog):
    """A newer format, a missing required field (which used to make rows vanish with an info
    line), an unknown kind or a broken line in the middle: warnings naming the lines."""
    newer = {**to_json(TRAIN), "format": "imgae_dx.record/3", "step": 4}
    lacking = {k: v for k, v in to_json(VAL).items() if k != "selection_images"}
    p = tmp_path / "metrics.jsonl"
    p.write_text("\n".join([json.dumps(to_json(TRAIN)), json.dumps(newer), json.dumps(lacking),
                            '{"kind": "other"}', '{"step": 5, "lo', json.dumps(to_json(VAL))]) + "\n")
    with caplog.at_level(logging.INFO, logger="imgae_dx.run.records"):
        assert read_records(p) == [TRAIN, VAL]
    (w,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    msg = w.getMessage()
    assert "4 line(s)" in msg
    assert "line 2: format 'imgae_dx.record/3' is from a newer imgae-dx" in msg
    assert "line 3: a val record without selection_images" in msg
    assert "line 4: unknown kind 'other'" in msg and "line 5: not JSON" in msg


def test_a_torn_last_line_is_expected_after_a_crash(tmp_path, caplog):
    p = tmp_path / "metrics.jsonl"
    p.write_text(json.dumps(to_json(TRAIN)) + '\n{"step": 4, "lo')
    with caplog.at_level(logging.INFO, logger="imgae_dx.run.records"):
        assert read_records(p) == [TRAIN]
    assert [(r.levelno, "line 2 is cut short" in r.getMessage()) for r in caplog.records] == [(logging.INFO, True)]


@pytest.mark.parametrize(("obj", "match"), [
    ([1, 2], "not a JSON object"),
    ({**to_json(TRAIN), "format": "imgae_dx.record/0"}, "not one this imgae-dx reads"),
    ({**to_json(TRAIN), "format": "other/2"}, "not a metrics record format"),
])
def test_parse_record_says_why(obj, match):
    with pytest.raises(RecordError, match=match):
        parse_record(obj)
