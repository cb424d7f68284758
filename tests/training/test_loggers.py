"""metrics.jsonl (typed records: one writer, one reader), resume truncation, optional backends
(W&B offline when installed)."""

from __future__ import annotations

import builtins
import json

import pytest

from imgae_dx.run.records import TrainRecord, ValRecord, read_records, to_json, truncate_after
from imgae_dx.training.loggers import LoggerUnavailableError, MetricsLogger


def _train(step, loss=0.5, model="unet", **kw):
    return TrainRecord(step=step, stage="images_001", stage_index=1, epoch=0, model=model, loss=loss,
                       lr=1e-3, images_per_s=10.0, rss_mb=100.0, elapsed_s=float(step),
                       images_seen=4 * step, **kw)


def _val(step, model="unet"):
    return ValRecord(step=step, stage="images_001", stage_index=1, epoch=0, model=model, val_loss=0.2,
                     val_images=8, selection_loss=0.25, selection_images=16, selection_stages=2,
                     best_loss=0.25, improved=True, val_s=0.1, rss_mb=100.0, elapsed_s=1.0,
                     terms={"kl": 3.0})


def test_records_round_trip_through_metrics_jsonl(tmp_path):
    lg = MetricsLogger(tmp_path)
    recs = [_train(1, terms={"grad_norm": 0.7}), _train(2, loss=float("nan"), loss_scale=1024.0),
            _val(2)]
    for r in recs:
        lg.log(r)
    lg.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["kind"] == "train" and lines[0]["grad_norm"] == 0.7  # terms are written flat
    assert lines[1]["loss"] is None and lines[1]["loss_scale"] == 1024.0
    assert lines[2]["kind"] == "val" and lines[2]["selection_stages"] == 2 and lines[2]["kl"] == 3.0
    back = read_records(tmp_path / "metrics.jsonl")
    assert back[0] == recs[0] and back[2] == recs[2]
    assert back[1].loss is None and back[1].loss_scale == 1024.0
    assert to_json(back[2]) == to_json(recs[2])


def test_reader_skips_lines_that_are_not_records(tmp_path):
    p = tmp_path / "metrics.jsonl"
    good = json.dumps(to_json(_train(1)))
    p.write_text(good + "\n" + '{"kind": "train", "step": 2}\n' + '{"kind": "other"}\n'
                 + "[1, 2]\n" + good + "\n" + '{"step": 3, "lo')
    assert [r.step for r in read_records(p)] == [1, 1]


def test_truncate_drops_records_after_checkpoint_and_torn_lines(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text("".join(json.dumps(to_json(_train(s))) + "\n" for s in range(1, 6))
                 + '{"step": 6, "lo')
    assert truncate_after(p, 3) == 3
    assert [r.step for r in read_records(p)] == [1, 2, 3]
    assert truncate_after(p, 3) == 0


def _block_import(monkeypatch, name):
    real = builtins.__import__

    def fake(mod, *a, **k):
        if mod == name or mod.startswith(name + "."):
            raise ImportError(f"No module named {name!r}")
        return real(mod, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)


def test_missing_backends_give_install_hint(tmp_path, monkeypatch):
    _block_import(monkeypatch, "wandb")
    with pytest.raises(LoggerUnavailableError, match=r"pip install 'imgae-dx\[wandb\]'"):
        MetricsLogger(tmp_path, "wandb")
    monkeypatch.undo()
    _block_import(monkeypatch, "torch.utils.tensorboard")
    with pytest.raises(LoggerUnavailableError, match="tensorboard"):
        MetricsLogger(tmp_path, "tensorboard")
    with pytest.raises(LoggerUnavailableError, match="unknown logger"):
        MetricsLogger(tmp_path, "csv")


def test_wandb_offline_resume_keeps_run_id(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    lg = MetricsLogger(tmp_path, "wandb", config={"seed": 1})
    run_id = lg.wandb_run_id
    assert run_id
    lg.log(_train(1, loss=0.3))
    lg.close()
    lg2 = MetricsLogger(tmp_path, "wandb", wandb_run_id=run_id)
    assert lg2.wandb_run_id == run_id
    lg2.log(_train(2, loss=0.2))
    lg2.close()
    runs = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) >= 1


def test_check_available(monkeypatch):
    import importlib.util

    from imgae_dx.training.loggers import check_available

    check_available("jsonl")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tensorboard" else real(n, *a))
    with pytest.raises(LoggerUnavailableError, match="pip install"):
        check_available("tensorboard")
    with pytest.raises(LoggerUnavailableError, match="unknown logger"):
        check_available("csv")


def test_tensorboard_writes_scalars_per_model(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    lg = MetricsLogger(tmp_path, "tensorboard")
    for step in (1, 2, 3):
        lg.log(_train(step, loss=1.0 / step))
    lg.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    events = acc.Scalars("unet/loss")
    assert [e.step for e in events] == [1, 2, 3]
    assert [round(e.value, 4) for e in events] == [1.0, 0.5, 0.3333]
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 3
