"""Checkpoints: atomic writes, weights_only loads, numpy round trip, identity checks, RNG."""

from __future__ import annotations

import errno
import os
import pickle
import random

import numpy as np
import pytest
import torch

from imgae_dx.config import load_config
from imgae_dx.errors import CheckpointError
from imgae_dx.training.checkpoint import (
    FORMAT,
    capture_rng,
    config_differences,
    config_fingerprint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)


def _payload(**kw):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    d = {
        "format": FORMAT,
        "model_name": "unet",
        "fingerprint": "abc",
        "model": model.state_dict(),
        "optim": opt.state_dict(),
        "dataset": {"order": np.arange(5, dtype=np.int32), "pos": np.int64(3), "name": "x"},
        "rng": capture_rng(),
        "config_yaml": "seed: 1\n",
    }
    d.update(kw)
    return d


def test_roundtrip_restores_numpy_and_tensors(tmp_path):
    p = save_checkpoint(tmp_path / "a" / "last.pt", _payload())
    ck = load_checkpoint(p, model_name="unet", fingerprint="abc")
    assert isinstance(ck["dataset"]["order"], np.ndarray)
    assert ck["dataset"]["order"].dtype == np.int32
    assert ck["dataset"]["order"].tolist() == [0, 1, 2, 3, 4]
    assert isinstance(ck["dataset"]["pos"], np.int64) and ck["dataset"]["pos"] == 3
    assert set(ck["model"]) == {"weight", "bias"}
    assert ck["optim"]["state"][0]["exp_avg"].shape == (2, 3)
    # no temp files left behind
    assert sorted(os.listdir(tmp_path / "a")) == ["last.pt"]


def test_atomic_save_keeps_old_file_when_payload_is_unsafe(tmp_path):
    p = save_checkpoint(tmp_path / "last.pt", _payload(step=1))
    with pytest.raises(CheckpointError, match="cannot be saved safely"):
        save_checkpoint(p, _payload(step=2, bad=object()))
    assert load_checkpoint(p)["step"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]


def test_atomic_save_survives_failure_mid_write(tmp_path, monkeypatch):
    p = save_checkpoint(tmp_path / "last.pt", _payload(step=1))

    def boom(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoint there is intact"):
        save_checkpoint(p, _payload(step=2))
    monkeypatch.undo()
    assert load_checkpoint(p)["step"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]


def test_truncated_file_is_corrupt(tmp_path):
    p = save_checkpoint(tmp_path / "last.pt", _payload())
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(p)


def test_garbage_file_is_corrupt(tmp_path):
    p = tmp_path / "x.pt"
    p.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_checkpoint(p)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the planted payload
def test_unsafe_pickle_is_refused(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "x": Evil()}, p)
    with pytest.raises(CheckpointError, match="unsafe pickle payload"):
        load_checkpoint(p)
    # a plain pickle file too
    p2 = tmp_path / "evil2.pt"
    p2.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError):
        load_checkpoint(p2)


def test_foreign_format_model_and_fingerprint_refused(tmp_path):
    p = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, p)
    with pytest.raises(CheckpointError, match="not an imgae-dx checkpoint"):
        load_checkpoint(p)
    p = save_checkpoint(tmp_path / "last.pt", _payload())
    with pytest.raises(CheckpointError, match="holds model 'unet', not 'ra'"):
        load_checkpoint(p, model_name="ra")
    with pytest.raises(CheckpointError, match="another configuration"):
        load_checkpoint(p, fingerprint="zzz")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_roundtrip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.random(), np.random.rand(), torch.rand(1)
    p = save_checkpoint(tmp_path / "r.pt", {"format": FORMAT, "rng": capture_rng()})
    expect = (random.random(), float(np.random.rand()), float(torch.rand(1)), np.random.randn())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng(load_checkpoint(p)["rng"])
    got = (random.random(), float(np.random.rand()), float(torch.rand(1)), np.random.randn())
    assert got == expect


def test_fingerprint_ignores_io_knobs_but_not_run_identity():
    base = load_config(overrides={"models": ["unet"]}).model_dump(mode="json")
    io_change = load_config(
        overrides={"models": ["unet"], "out": "elsewhere", "data.decode_workers": 7,
                   "training.device": "cpu", "logging.logger": "wandb",
                   "training.cudnn_benchmark": False, "training.tf32": False}
    ).model_dump(mode="json")
    assert config_fingerprint(base) == config_fingerprint(io_change)
    changed = load_config(overrides={"models": ["unet"], "training.batch_size": 3}).model_dump(
        mode="json"
    )
    assert config_fingerprint(base) != config_fingerprint(changed)
    assert config_differences(base, changed) == ["training.batch_size: 32 → 3"]
    other_model = load_config(overrides={"models": ["ra"]}).model_dump(mode="json")
    assert any(d.startswith("models:") for d in config_differences(base, other_model))


def test_copy_checkpoint_links_or_copies_atomically(tmp_path, monkeypatch):
    from imgae_dx.training.checkpoint import copy_checkpoint

    src = save_checkpoint(tmp_path / "last.pt", _payload(step=5))
    dst = copy_checkpoint(src, tmp_path / "stage_1.pt")
    assert load_checkpoint(dst)["step"] == 5
    save_checkpoint(src, _payload(step=6))  # replacing last.pt leaves the copy alone
    assert load_checkpoint(dst)["step"] == 5

    def no_link(*a):
        raise OSError("hard links not supported")

    monkeypatch.setattr(os, "link", no_link)
    copy_checkpoint(src, tmp_path / "best.pt")
    assert load_checkpoint(tmp_path / "best.pt")["step"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt", "stage_1.pt"]
