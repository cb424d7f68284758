"""metrics.jsonl, resume truncation, optional backends (W&B offline when installed)."""

from __future__ import annotations

import builtins
import json

import pytest

from imgae_dx.training.loggers import (
    LoggerUnavailableError,
    MetricsLogger,
    read_metrics,
    truncate_jsonl,
)


def test_jsonl_lines_and_nan(tmp_path):
    lg = MetricsLogger(tmp_path)
    lg.log({"step": 1, "stage": "images_001", "epoch": 0, "model": "unet", "loss": 0.5,
            "images_per_s": 10.0, "rss_mb": 100.0})
    lg.log({"step": 2, "model": "unet", "loss": float("nan")})
    lg.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["loss"] == 0.5
    assert json.loads(lines[1])["loss"] is None
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]


def test_truncate_drops_records_after_checkpoint_and_torn_lines(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 6))
                 + '{"step": 6, "lo')
    assert truncate_jsonl(p, 3) == 3
    assert [r["step"] for r in read_metrics(p)] == [1, 2, 3]
    assert truncate_jsonl(p, 3) == 0


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
    lg.log({"step": 1, "stage": "images_001", "model": "unet", "loss": 0.3, "rss_mb": 5.0})
    lg.close()
    lg2 = MetricsLogger(tmp_path, "wandb", wandb_run_id=run_id)
    assert lg2.wandb_run_id == run_id
    lg2.log({"step": 2, "stage": "images_001", "model": "unet", "loss": 0.2})
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
        lg.log({"step": step, "stage": "images_001", "epoch": 0, "model": "unet",
                "loss": 1.0 / step, "images_per_s": 10.0, "rss_mb": 100.0})
    lg.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    events = acc.Scalars("unet/loss")
    assert [e.step for e in events] == [1, 2, 3]
    assert [round(e.value, 4) for e in events] == [1.0, 0.5, 0.3333]
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 3
