"""Checkpoints: the versioned payload, atomic writes, weights_only loads, numpy round trip,
identity checks, version refusal, the save/resume policy of the checkpointer, RNG."""

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
from imgae_dx.run.checkpoint import (
    FORMAT,
    ArchiveRef,
    CheckpointPayload,
    Position,
    RankState,
    Selection,
    read_checkpoint,
)
from imgae_dx.run.identity import config_differences, config_fingerprint
from imgae_dx.training.checkpointer import (
    Checkpointer,
    capture_rng,
    link_copy,
    restore_rng,
    write_payload,
)


def _payload(step=1, model_name="unet", **kw) -> CheckpointPayload:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    fields = dict(
        model_name=model_name, model=model.state_dict(), config_yaml="seed: 1\n", fingerprint="abc",
        image_size=64, package_version="test", step=step, optimizers={"model": opt.state_dict()},
        position=Position(1, 2, 3), selection=Selection(best_loss=0.5, set_stages=2, best_step=1),
        stages=["images_001"], archive=ArchiveRef("file:/a.zip", "v1", 10),
        rank_states=[RankState(dataset={"order": np.arange(5, dtype=np.int32), "pos": np.int64(3),
                                        "name": "x"}, rng=capture_rng(), generators={})],
    )
    fields.update(kw)
    return CheckpointPayload(**fields)


def test_roundtrip_restores_types_numpy_and_tensors(tmp_path):
    p = write_payload(tmp_path / "a" / "last.pt", _payload())
    ck = read_checkpoint(p, model_name="unet", fingerprint="abc")
    ds = ck.rank_states[0].dataset
    assert isinstance(ds["order"], np.ndarray) and ds["order"].dtype == np.int32
    assert ds["order"].tolist() == [0, 1, 2, 3, 4]
    assert isinstance(ds["pos"], np.int64) and ds["pos"] == 3
    assert set(ck.model) == {"weight", "bias"}
    assert ck.optimizers["model"]["state"][0]["exp_avg"].shape == (2, 3)
    assert ck.position == Position(1, 2, 3) and isinstance(ck.selection, Selection)
    assert ck.selection.best_loss == 0.5
    # the file is a plain dict of safe types under the format tag
    raw = torch.load(p, weights_only=True)
    assert raw["format"] == FORMAT and raw["position"] == {"stage_index": 1, "epoch": 2, "batch": 3}
    assert sorted(os.listdir(tmp_path / "a")) == ["last.pt"]  # no temp files left behind


def test_another_format_version_is_refused_with_its_version(tmp_path):
    raw = _payload().to_dict()
    p = tmp_path / "old.pt"
    torch.save({**raw, "format": "imgae_dx.checkpoint/1", "package_version": "0.3.0"}, p)
    with pytest.raises(CheckpointError, match=r"format 'imgae_dx.checkpoint/1' \(written by imgae-dx 0.3.0\)"
                       r".*reads 'imgae_dx.checkpoint/2' only"):
        read_checkpoint(p)
    torch.save({**raw, "format": "imgae_dx.checkpoint/3"}, p)
    with pytest.raises(CheckpointError, match="checkpoint/3"):
        read_checkpoint(p)
    broken = dict(raw)
    del broken["position"]
    torch.save(broken, p)
    with pytest.raises(CheckpointError, match="damaged or incomplete"):
        read_checkpoint(p)


def test_atomic_save_keeps_old_file_when_payload_is_unsafe(tmp_path):
    p = write_payload(tmp_path / "last.pt", _payload(step=1))
    with pytest.raises(CheckpointError, match="cannot be saved safely"):
        write_payload(p, _payload(step=2, optimizers={"bad": object()}))
    assert read_checkpoint(p).step == 1
    assert os.listdir(tmp_path) == ["last.pt"]


def test_atomic_save_survives_failure_mid_write(tmp_path, monkeypatch):
    p = write_payload(tmp_path / "last.pt", _payload(step=1))

    def boom(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoint there is intact"):
        write_payload(p, _payload(step=2))
    monkeypatch.undo()
    assert read_checkpoint(p).step == 1
    assert os.listdir(tmp_path) == ["last.pt"]


def test_truncated_file_is_corrupt(tmp_path):
    p = write_payload(tmp_path / "last.pt", _payload())
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_checkpoint(p)


def test_garbage_file_is_corrupt(tmp_path):
    p = tmp_path / "x.pt"
    p.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        read_checkpoint(p)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the planted payload
def test_unsafe_pickle_is_refused(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "x": Evil()}, p)
    with pytest.raises(CheckpointError, match="unsafe pickle payload"):
        read_checkpoint(p)
    # a plain pickle file too
    p2 = tmp_path / "evil2.pt"
    p2.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError):
        read_checkpoint(p2)


def test_foreign_format_model_and_fingerprint_refused(tmp_path):
    p = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, p)
    with pytest.raises(CheckpointError, match="not an imgae-dx checkpoint"):
        read_checkpoint(p)
    p = write_payload(tmp_path / "last.pt", _payload())
    with pytest.raises(CheckpointError, match="holds model 'unet', not 'ra'"):
        read_checkpoint(p, model_name="ra")
    with pytest.raises(CheckpointError, match="another configuration"):
        read_checkpoint(p, fingerprint="zzz")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")


def test_rng_roundtrip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.random(), np.random.rand(), torch.rand(1)
    p = write_payload(tmp_path / "r.pt", _payload())  # captures the RNG states
    expect = (random.random(), float(np.random.rand()), float(torch.rand(1)), np.random.randn())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng(read_checkpoint(p).rank_states[0].rng)
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


def test_link_copy_links_or_copies_atomically(tmp_path, monkeypatch):
    src = write_payload(tmp_path / "last.pt", _payload(step=5))
    dst = link_copy(src, tmp_path / "stage_1.pt")
    assert read_checkpoint(dst).step == 5
    write_payload(src, _payload(step=6))  # replacing last.pt leaves the copy alone
    assert read_checkpoint(dst).step == 5

    def no_link(*a):
        raise OSError("hard links not supported")

    monkeypatch.setattr(os, "link", no_link)
    link_copy(src, tmp_path / "best.pt")
    assert read_checkpoint(tmp_path / "best.pt").step == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt", "stage_1.pt"]


RUN = dict(world_size=1, archive=ArchiveRef("file:/a.zip", "v1", 10), stages=["images_001"])


def test_checkpointer_save_policy_and_resume_from_prev(tmp_path):
    ck = Checkpointer(tmp_path, ["unet", "ra"])
    ck.save({m: _payload(step=1, model_name=m) for m in ("unet", "ra")}, stage_k=1, best=["unet"])
    ck.save({m: _payload(step=2, model_name=m) for m in ("unet", "ra")}, best=["ra"])
    names = {m: sorted(p.name for p in (tmp_path / "checkpoints" / m).iterdir()) for m in ("unet", "ra")}
    assert names == {"unet": ["best.pt", "last.pt", "prev.pt", "stage_1.pt"],
                     "ra": ["best.pt", "last.pt", "prev.pt", "stage_1.pt"]}
    assert read_checkpoint(ck.path("unet", "best")).step == 1
    assert read_checkpoint(ck.path("ra", "best")).step == 2
    assert {m: c.step for m, c in ck.latest("abc", **RUN).items()} == {"unet": 2, "ra": 2}
    # killed between the two models' writes of the next save: both continue from step 2
    ck.save({"unet": _payload(step=3, model_name="unet")})
    assert {m: c.step for m, c in ck.latest("abc", **RUN).items()} == {"unet": 2, "ra": 2}
    with pytest.raises(CheckpointError, match="another configuration"):
        ck.latest("zzz", **RUN)
    # a rank that does not write leaves the folder alone
    Checkpointer(tmp_path, ["unet"], writer=False).save({"unet": _payload(step=9)})
    # another process count, another version of the archive, other stages: refused
    for bad, msg in ((dict(world_size=2), "process"), (dict(stages=["images_002"]), "stages"),
                     (dict(archive=ArchiveRef("file:/a.zip", "v2", 10)), "no longer the archive")):
        with pytest.raises(CheckpointError, match=msg):
            ck.latest("abc", **{**RUN, **bad})
    assert read_checkpoint(ck.path("unet")).step == 3
    assert torch.equal(ck.best_weights("unet")["bias"], read_checkpoint(ck.path("unet", "best")).model["bias"])


def test_swapped_weights_lends_weights_and_restores_the_own_even_after_an_error():
    from imgae_dx.training.checkpointer import swapped_weights

    torch.manual_seed(0)
    model, other = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    own = {k: v.clone() for k, v in model.state_dict().items()}
    with swapped_weights(model, other.state_dict()) as m:
        assert m is model and torch.equal(model.weight, other.weight)
        with torch.no_grad():
            model.weight.add_(1.0)  # what happens inside does not leak out
    assert all(torch.equal(v, own[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="inside"), swapped_weights(model, other.state_dict()):
        raise ValueError("inside")
    assert all(torch.equal(v, own[k]) for k, v in model.state_dict().items())
    with swapped_weights(model, None):  # a rank that receives the weights by broadcast instead
        assert torch.equal(model.weight, own["weight"])


def _trained_step(seed: int):
    from imgae_dx.models import create_model, create_objective
    from imgae_dx.training.precision import resolve_precision
    from imgae_dx.training.step import TrainStep

    torch.manual_seed(seed)
    model = create_model("ae", 32, channels=[4, 8, 8, 8], latent_dim=8)
    step = TrainStep(create_objective("ae", model), resolve_precision("off", "cpu"),
                     generator=torch.Generator().manual_seed(seed + 1))
    return model, step


def test_save_training_then_resume_restores_every_part_of_the_run(tmp_path):
    """What the trainer saves (weights, optimisers, schedule position, selection with the
    early-stopping count, counters, position, this rank's dataset position, RNG and noise
    generator) comes back from the checkpoint into fresh objects, exactly."""
    from types import SimpleNamespace

    from imgae_dx.training.checkpointer import RunFacts
    from imgae_dx.training.loop import Progress
    from imgae_dx.training.selection import Selector
    from imgae_dx.training.state import TrainState

    archive = SimpleNamespace(identity="file:/a.zip", reader=SimpleNamespace(version="v1", size=10))
    facts = RunFacts("seed: 1\n", "abc", 32, ["images_001", "images_002"], 1, "fp32", archive)
    model, step = _trained_step(0)
    for i in range(3):
        step(torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(i)))
    selector = Selector(["ae"])
    selector.select(1, 3, {"ae": 0.5}, best_on_set=lambda n: 0.0)
    selector.select(1, 3, {"ae": 0.7}, best_on_set=lambda n: 0.0)  # no gain: bad_epochs 1
    state = TrainState(progress=Progress(step=3, images_seen=6, batch=1), position=Position(1, 0, 1),
                       stage_index=1, dataset=SimpleNamespace(state_dict=lambda: {"pos": np.int64(1)}))
    ck = Checkpointer(tmp_path, ["ae"], facts=facts)
    ck.save_training(state, {"ae": model}, {"ae": step}, selector, wandb_run_id="w1", val={"ae": 0.7},
                     val_stages=1)
    assert state.last_save_step == 3
    after_save = (random.random(), torch.rand(1), step.ctx.generator.get_state())
    saved = read_checkpoint(ck.path("ae"), model_name="ae")
    assert (saved.stage, saved.stage_k, saved.val_loss, saved.wandb_run_id) == ("images_002", 2, 0.7, "w1")
    assert saved.archive == ArchiveRef("file:/a.zip", "v1", 10) and saved.selection.bad_epochs == 1

    model2, step2 = _trained_step(5)
    selector2 = Selector(["ae"])
    resumed, wandb = ck.resume({"ae": model2}, {"ae": step2}, selector2, rank=0)
    assert (random.random(), torch.rand(1)) == after_save[:2]
    assert torch.equal(step2.ctx.generator.get_state(), after_save[2])
    assert wandb == "w1" and resumed.resumed_from_step == 3 and resumed.resume_dataset == {"pos": 1}
    assert (resumed.progress.step, resumed.progress.images_seen, resumed.position) == (3, 6, Position(1, 0, 1))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in model2.state_dict().items())
    assert step2.steps_done == 3 and selector2.state == selector.state and selector2.bad_epochs == 1
    with pytest.raises(RuntimeError, match="facts"):
        Checkpointer(tmp_path, ["ae"]).resume({"ae": model2}, {"ae": step2}, selector2, rank=0)
