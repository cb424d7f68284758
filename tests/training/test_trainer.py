"""The progressive trainer end to end on a 3-stage sample archive (tiny models, 64 px, CPU)."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
import yaml
from training_helpers import folder_snapshot, run_cli, tiny_config, weights

from imgae_dx.cli import main
from imgae_dx.errors import CheckpointError, RunFolderError
from imgae_dx.run.checkpoint import state_dict_digest
from imgae_dx.training.run_folder import redact_source
from imgae_dx.training.streaming_trainer import StreamingTrainer

MODELS = ("unet", "ra", "ae")


@pytest.mark.slow
def test_run_folder_layout(full_run):
    out = full_run
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["models"] == [*MODELS, "pca"] and cfg["data"]["image_size"] == 64  # --model all
    assert {p.name for p in (out / "checkpoints" / "pca").iterdir()} == {"best.pt", "last.pt",
                                                                       "calibration.json"}
    for m in MODELS:
        names = {p.name for p in (out / "checkpoints" / m).iterdir()}
        assert {"stage_1.pt", "stage_2.pt", "stage_3.pt", "last.pt", "best.pt", "calibration.json"} <= names
        cal = json.loads((out / "checkpoints" / m / "calibration.json").read_text())
        best = torch.load(out / "checkpoints" / m / "best.pt", weights_only=True)
        assert cal["source"]["step"] == best["step"] and cal["source"]["split"] == "val"
        val = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
               if r["kind"] == "val" and r["model"] == m]
        assert cal["n_images"] == val[-1]["selection_images"]  # the validation normals of every stage
        assert not [n for n in names if n.endswith(".tmp")]
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r.get("kind") == "train"]
    val = [r for r in recs if r.get("kind") == "val"]
    for key in ("step", "stage", "epoch", "model", "loss", "images_per_s", "rss_mb", "lr"):
        assert all(key in r for r in train), key
    assert {r["model"] for r in train} == set(MODELS)
    assert {r["stage"] for r in train} == {"images_001", "images_002", "images_003"}
    assert all(r["loss"] > 0 and r["images_per_s"] > 0 and r["rss_mb"] > 0 for r in train)
    assert len(val) == 3 * 3 and all(r["val_loss"] > 0 for r in val)
    steps = [r["step"] for r in train if r["model"] == "unet"]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    assert (out / "plots" / "live.png").read_bytes()[:4] == b"\x89PNG"
    # the checkpoint says where it stands, and loads safely
    ck = torch.load(out / "checkpoints" / "ra" / "stage_2.pt", weights_only=True)
    assert (ck["model_name"], ck["stage"], ck["stage_k"]) == ("ra", "images_002", 2)
    assert ck["position"] == {"stage_index": 2, "epoch": 0, "batch": 0}
    assert isinstance(ck["config_yaml"], str) and ck["fingerprint"]
    last = torch.load(out / "checkpoints" / "unet" / "last.pt", weights_only=True)
    assert last["step"] == steps[-1] and last["position"]["stage_index"] == 3
    assert last["optimizers"] and last["optimizer_steps"] == last["step"] and last["rank_states"][0]["rng"]
    assert last["precision"] == "fp32" and last["scaler"] is None


@pytest.mark.slow
def test_one_stream_feeds_every_model(full_run, train_archive, tmp_path):
    """--model all trains unet exactly as --model unet alone does (same batches, same RNG)."""
    out = tmp_path / "unet_only"
    assert run_cli(train_archive, out, tmp_path, "--model", "unet", "--stages", "all") == 0
    a, b = weights(full_run, "unet"), weights(out, "unet")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_interrupt_then_resume_is_exact(train_archive, tmp_path, full_run):
    """request_stop (what SIGTERM does) mid stage 2 → last.pt; --resume ends bit-identical."""
    out = tmp_path / "run"
    cfg = tiny_config(train_archive, out, models=list(MODELS), **{"training.checkpoint_every_steps": 1000})
    seen = []

    def on_batch(stage, epoch, batch):
        seen.append(stage)
        if stage == "images_002" and seen.count("images_002") == 2:
            tr.request_stop(signal.SIGTERM)

    tr = StreamingTrainer(cfg, on_batch=on_batch)
    res = tr.train_progressive_stages()
    assert res.interrupted and res.exit_code == 128 + signal.SIGTERM
    ck = torch.load(out / "checkpoints" / "ra" / "last.pt", weights_only=True)
    assert ck["stage"] == "images_002" and ck["position"]["batch"] == 2
    assert not (out / "checkpoints" / "ra" / "stage_2.pt").exists()
    res2 = StreamingTrainer(cfg, resume=True).train_progressive_stages()
    assert not res2.interrupted and res2.resumed_from_step == res.step
    for m in MODELS:
        a, b = weights(full_run, m), weights(out, m)
        assert all(torch.equal(a[k], b[k]) for k in a), m
    # metrics: no duplicated steps after the resume
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in recs if r.get("kind") == "train" and r["model"] == "unet"]
    assert steps == sorted(set(steps))


@pytest.mark.slow
def test_bad_inputs_fail_cleanly_and_overwrite_nothing(train_archive, tmp_path, capsys):
    # unknown stage: nothing is created
    out = tmp_path / "a"
    assert run_cli(train_archive, out, tmp_path, "--model", "ae", "--stages", "images_042") == 2
    assert "images_042" in capsys.readouterr().err and not out.exists()
    # config value of the wrong type
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  batch_size: lots\n")
    assert main(["train", "--config", str(bad), "--out", str(out)]) == 2
    assert "training.batch_size" in capsys.readouterr().err and not out.exists()
    # missing Kaggle credentials (the default source)
    assert main(["train", "--out", str(out), "--model", "ae"]) == 2
    assert "credential" in capsys.readouterr().err.lower() and not out.exists()
    # unwritable --out (a permission-less folder; /proc refuses new files even to root)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        root = os.access(ro, os.W_OK)  # root ignores permission bits
        for bad_out in ([] if root else [ro / "run"]) + [Path("/proc/imgae_dx_no/run")]:
            assert run_cli(train_archive, bad_out, tmp_path, "--model", "ae", "--stages", "images_001") == 2
            assert "not writable" in capsys.readouterr().err
            assert not bad_out.exists()
    finally:
        ro.chmod(0o700)
    # a finished run, then: same folder without --resume, another model, another config
    out = tmp_path / "done"
    assert run_cli(train_archive, out, tmp_path, "--model", "ae", "--stages", "images_001") == 0
    capsys.readouterr()
    before = folder_snapshot(out)
    assert run_cli(train_archive, out, tmp_path, "--model", "ae", "--stages", "images_001") == 2
    assert "--resume" in capsys.readouterr().err
    assert run_cli(train_archive, out, tmp_path, "--model", "unet", "--stages", "images_001") == 2
    assert "different run" in capsys.readouterr().err
    assert run_cli(train_archive, out, tmp_path, "--model", "ae", "--stages", "images_001",
                  "--resume", "--batch-size", "8") == 2
    assert "training.batch_size" in capsys.readouterr().err
    assert folder_snapshot(out) == before


@pytest.mark.slow
def test_resume_refuses_foreign_or_corrupt_checkpoint(train_archive, tmp_path):
    out = tmp_path / "r"
    cfg = tiny_config(train_archive, out, models=["ae"], stages=["images_001"])
    StreamingTrainer(cfg).train_progressive_stages()
    last = out / "checkpoints" / "ae" / "last.pt"
    # a checkpoint of another run (other fingerprint) put in place of last.pt
    other = tmp_path / "o"
    StreamingTrainer(tiny_config(train_archive, other, models=["ae"], stages=["images_001"],
                                 seed=8)).train_progressive_stages()
    good = last.read_bytes()
    last.write_bytes((other / "checkpoints" / "ae" / "last.pt").read_bytes())
    with pytest.raises(CheckpointError, match="another configuration"):
        StreamingTrainer(cfg, resume=True).train_progressive_stages()
    last.write_bytes(good[: len(good) // 3])
    with pytest.raises(CheckpointError, match="corrupt"):
        StreamingTrainer(cfg, resume=True).train_progressive_stages()
    assert last.read_bytes() == good[: len(good) // 3]  # refused, not overwritten


def test_run_folder_that_is_a_file(train_archive, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(RunFolderError, match="not a folder"):
        StreamingTrainer(tiny_config(train_archive, f, models=["ae"])).train_progressive_stages()


def test_resume_without_checkpoint_starts_fresh_and_colab_defaults(train_archive, tmp_path):
    out = tmp_path / "colab"
    tr = StreamingTrainer.from_colab_config(
        overrides={"source": str(train_archive), "out": str(out), "models": ["ae"],
                   "stages": ["images_001"], "training.device": "cpu", "data.image_size": 64,
                   "data.view": "all", "training.batch_size": 4, "training.epochs_per_stage": 1,
                   "model.ae.channels": [8, 16, 16, 16], "logging.progress": False}
    )
    assert tr.resume is True
    assert tr.cfg.training.checkpoint_every_minutes == 5  # from colab.yaml
    res = tr.train_progressive_stages()
    assert res.resumed_from_step is None and (out / "checkpoints" / "ae" / "stage_1.pt").exists()


def test_secret_free_config_yaml():
    assert redact_source("https://user:pw@host:8443/data.zip?X-Goog-Signature=abc&t=1") == (
        "https://host:8443/data.zip?X-Goog-Signature=REDACTED&t=REDACTED"
    )
    assert redact_source("kaggle:nih-chest-xrays/data") == "kaggle:nih-chest-xrays/data"


def test_train_script_translates_seed_flags():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    try:
        import train_streaming
    finally:
        sys.path.pop(0)
    assert train_streaming.translate(["--stage", "images_001", "--epochs", "5"]) == [
        "--stages", "images_001", "--epochs-per-stage", "5"]
    assert train_streaming.translate(["--stages", "all", "--epochs-per-stage=10"]) == [
        "--stages", "all", "--epochs-per-stage=10"]


def test_early_stopping_ends_the_stage(train_archive, tmp_path, monkeypatch):
    cfg = tiny_config(train_archive, tmp_path / "es", models=["ae"],
                      stages=["images_001", "images_002"],
                      **{"training.epochs_per_stage": 3, "training.early_stopping_patience": 1})
    seen = []
    from imgae_dx.training.selection import Selector

    monkeypatch.setattr(Selector, "offer", lambda self, name, loss, k, step: False)  # never improves
    StreamingTrainer(cfg, on_batch=lambda s, e, b: seen.append((s, e))).train_progressive_stages()
    assert sorted(set(seen)) == [("images_001", 0), ("images_002", 0)]
    assert (tmp_path / "es" / "checkpoints" / "ae" / "stage_2.pt").exists()


def test_wandb_run_continues_after_resume(train_archive, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "wb"
    cfg = tiny_config(train_archive, out, models=["ae"], stages=["images_001"],
                      **{"logging.logger": "wandb"})
    tr = StreamingTrainer(cfg, on_batch=lambda s, e, b: tr.request_stop())
    assert tr.train_progressive_stages().interrupted
    last = out / "checkpoints" / "ae" / "last.pt"
    first_id = torch.load(last, weights_only=True)["wandb_run_id"]
    assert first_id
    res = StreamingTrainer(cfg, resume=True).train_progressive_stages()
    assert not res.interrupted
    assert torch.load(last, weights_only=True)["wandb_run_id"] == first_id
    assert list((out / "wandb").glob(f"offline-run-*-{first_id}"))


def test_resume_refuses_models_saved_at_different_steps(train_archive, tmp_path):
    out = tmp_path / "mix"
    cfg = tiny_config(train_archive, out, models=["unet", "ae"], stages=["images_001", "images_002"])
    n = []

    def on_batch(stage, epoch, batch):
        n.append(stage)
        if n.count("images_002") == 3:
            tr.request_stop()

    tr = StreamingTrainer(cfg, on_batch=on_batch)
    assert tr.train_progressive_stages().interrupted
    ae = out / "checkpoints" / "ae"
    (ae / "last.pt").write_bytes((ae / "stage_1.pt").read_bytes())  # no save ever wrote this mix
    (ae / "prev.pt").unlink()
    with pytest.raises(CheckpointError, match="different steps"):
        StreamingTrainer(cfg, resume=True).train_progressive_stages()


def test_kill_between_two_models_writes_resumes_from_the_common_step(train_archive, tmp_path):
    """A kill after unet's last.pt was replaced but before ae's: unet's prev.pt holds the step ae
    is still at, so the resume continues both from there and ends bit-identical."""
    cfg_ref = tiny_config(train_archive, tmp_path / "ref", models=["unet", "ae"],
                          stages=["images_001", "images_002"])
    StreamingTrainer(cfg_ref).train_progressive_stages()
    out = tmp_path / "run"
    cfg = tiny_config(train_archive, out, models=["unet", "ae"], stages=["images_001", "images_002"])
    n = []

    def on_batch(stage, epoch, batch):
        n.append(stage)
        if len(n) == 5:
            tr.request_stop()

    tr = StreamingTrainer(cfg, on_batch=on_batch)
    assert tr.train_progressive_stages().interrupted
    ae = out / "checkpoints" / "ae"
    # the state a kill leaves when it lands between unet's and ae's replace of one save
    (ae / "last.pt").write_bytes((ae / "prev.pt").read_bytes())
    step = {m: torch.load(out / "checkpoints" / m / "last.pt", weights_only=True)["step"]
            for m in ("unet", "ae")}
    assert step["unet"] > step["ae"]
    res = StreamingTrainer(cfg, resume=True).train_progressive_stages()
    assert not res.interrupted
    for m in ("unet", "ae"):
        assert state_dict_digest(weights(out, m)) == state_dict_digest(weights(tmp_path / "ref", m))


@pytest.mark.parametrize(("exc", "kind"), [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "GPU"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                  "you tried to allocate 8589934592 bytes. Error code 12 (Cannot allocate memory)"), "host"),
])
def test_out_of_memory_says_what_to_lower_and_keeps_the_last_checkpoint(
        train_archive, tmp_path, capsys, monkeypatch, exc, kind):
    from imgae_dx.models import AEObjective

    real, calls = AEObjective.losses, []

    def runs_out_at_the_fifth_step(self, x, ctx):
        calls.append(1)
        if len(calls) == 5:
            raise exc
        return real(self, x, ctx)

    monkeypatch.setattr(AEObjective, "losses", runs_out_at_the_fifth_step)
    out = tmp_path / "oom"
    assert run_cli(train_archive, out, tmp_path, "--model", "ae", "--stages", "images_001") == 2
    err = capsys.readouterr().err
    assert f"{kind} memory ran out in ae's train step at step 4 (images_001, a batch of 4 at 64²)" in err
    assert "--batch-size (training.batch_size, now 4)" in err and "--image-size (data.image_size, now 64)" in err
    assert "last checkpoint (step 4) is intact" in err and "Traceback" not in err
    last = out / "checkpoints" / "ae" / "last.pt"
    assert torch.load(last, weights_only=True)["step"] == 4  # checkpoint_every_steps 2: steps 2, 4
    monkeypatch.undo()
    assert run_cli(train_archive, out, tmp_path, "--model", "ae", "--stages", "images_001", "--resume") == 0
    assert torch.load(last, weights_only=True)["step"] > 4


def test_other_runtime_errors_are_not_taken_for_out_of_memory(train_archive, tmp_path, monkeypatch):
    from imgae_dx.models import AEObjective

    def broken(self, x, ctx):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(AEObjective, "losses", broken)
    cfg = tiny_config(train_archive, tmp_path / "bug", models=["ae"], stages=["images_001"])
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        StreamingTrainer(cfg).train_progressive_stages()


@pytest.mark.slow
def test_fp16_on_cpu_logs_the_loss_scale_and_resumes_exactly(train_archive, tmp_path):
    """training.amp fp16 on the CPU takes the CUDA mixed-precision path (autocast fp16 and a real
    GradScaler): every training row carries the scaler's loss_scale, and a run stopped mid-stage
    resumes with the scaler's state and ends bit-identical to an uninterrupted one."""
    over = {"training.amp": "fp16", "training.checkpoint_every_steps": 1000}
    kw = dict(models=["ra", "ae"], stages=["images_001", "images_002"])
    ref = tmp_path / "ref"
    StreamingTrainer(tiny_config(train_archive, ref, **kw, **over)).train_progressive_stages()
    recs = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["kind"] == "train"]
    assert train and all(r["precision"] == "fp16" and r["loss_scale"] > 0 for r in train)
    ck = torch.load(ref / "checkpoints" / "ra" / "last.pt", weights_only=True)
    assert ck["precision"] == "fp16" and ck["scaler"]["scale"] > 0

    out, n = tmp_path / "run", []
    cfg = tiny_config(train_archive, out, **kw, **over)

    def on_batch(stage, epoch, batch):
        n.append(stage)
        if n.count("images_002") == 2:
            tr.request_stop()

    tr = StreamingTrainer(cfg, on_batch=on_batch)
    assert tr.train_progressive_stages().interrupted
    res = StreamingTrainer(cfg, resume=True).train_progressive_stages()
    assert not res.interrupted and res.resumed_from_step is not None
    for m in ("ra", "ae"):
        assert state_dict_digest(weights(out, m)) == state_dict_digest(weights(ref, m)), m
        a = torch.load(out / "checkpoints" / m / "last.pt", weights_only=True)["scaler"]
        b = torch.load(ref / "checkpoints" / m / "last.pt", weights_only=True)["scaler"]
        assert a == b


def test_pca_baseline_is_fitted_after_the_deep_models_and_evaluated(train_archive, tmp_path):
    """--model pca next to a deep model: fitted once after the last stage on training normals
    spread over the stages, k chosen on the validation normals; its checkpoint loads safely and
    the evaluator scores it next to the deep model."""
    from imgae_dx.evaluation.evaluator import evaluate_run
    from imgae_dx.run.checkpoint import read_checkpoint
    from imgae_dx.training.finish import training_subset

    out = tmp_path / "pca"
    cfg = tiny_config(train_archive, out, models=["ae", "pca"], stages=["images_001", "images_002"],
                      **{"evaluation.bootstrap": 20, "model.pca.fit_images": 30})
    tr = StreamingTrainer(cfg)
    res = tr.train_progressive_stages()
    assert set(res.best_val) == {"ae"} and not res.interrupted
    ck = read_checkpoint(out / "checkpoints" / "pca" / "best.pt", model_name="pca")
    assert int(ck.model["k"]) >= 1 and ck.val_loss > 0 and ck.stage_k == 2
    assert (out / "checkpoints" / "pca" / "last.pt").is_file()
    subset = training_subset(cfg, tr.index, ["images_001", "images_002"])
    assert 0 < sum(len(m) for m in subset.values()) <= 30 and all(len(m) for m in subset.values())
    assert {s: m.tolist() for s, m in subset.items()} == {
        s: m.tolist() for s, m in training_subset(cfg, tr.index, ["images_001", "images_002"]).items()}
    m = evaluate_run(out)
    assert set(m.models) == {"ae", "pca"} and 0 <= m.models["pca"].auroc <= 1


@pytest.mark.slow
def test_replay_revisits_earlier_stages_and_resumes_exactly(train_archive, tmp_path):
    """training.replay all (persistent cache): the first epoch of stage K streams stage K, later
    epochs draw from stages 1..K; a run stopped in a replay epoch resumes bit-identical, and the
    resumed process reads the stages it had decoded from the cache (0 bytes fetched for them)."""
    from imgae_dx.data.datasets.nih import NIHIndex
    from imgae_dx.streaming.sources import open_archive

    over = {"data.cache": "persistent", "training.replay": "all", "training.epochs_per_stage": 2,
            "training.checkpoint_every_steps": 1000}
    kw = dict(models=["ae"], stages=["images_001", "images_002", "images_003"])
    ref_seen: list[tuple[str, int, list[int]]] = []
    ref = StreamingTrainer(tiny_config(train_archive, tmp_path / "ref", **kw, **over),
                           on_batch=lambda s, e, b: ref_seen.append((s, e, b.members.tolist())))
    ref.train_progressive_stages()
    cfg0 = tiny_config(train_archive, tmp_path / "x", **kw, **over)
    archive = open_archive(str(train_archive), cfg0.data)
    stage_of = {m: NIHIndex.from_archive(archive).record(m).stage
                for _, _, ms in ref_seen for m in ms}
    archive.close()
    assert {stage_of[m] for s, e, ms in ref_seen if (s, e) == ("images_001", 1) for m in ms} == {"images_001"}
    assert {stage_of[m] for s, e, ms in ref_seen if (s, e) == ("images_003", 1) for m in ms} == {
        "images_001", "images_002", "images_003"}
    assert {stage_of[m] for s, e, ms in ref_seen if (s, e) == ("images_003", 0) for m in ms} == {"images_003"}

    out, n = tmp_path / "run", []
    cfg = tiny_config(train_archive, out, **kw, **over)

    def on_batch(stage, epoch, batch):
        n.append((stage, epoch))
        if n.count(("images_003", 1)) == 2:  # in stage 3's replay epoch
            tr.request_stop()

    tr = StreamingTrainer(cfg, on_batch=on_batch)
    assert tr.train_progressive_stages().interrupted
    res2 = StreamingTrainer(cfg, resume=True)
    assert not res2.train_progressive_stages().interrupted
    assert state_dict_digest(weights(out, "ae")) == state_dict_digest(weights(tmp_path / "ref", "ae"))
    # the resumed process re-collected stages 1-3's validation images from the cache, not the archive
    for s in ("images_001", "images_002", "images_003"):
        assert res2.data.val[s].stats()["bytes_fetched"] == 0, s
    assert res2.data.replay["images_003"].stats()["bytes_fetched"] == 0


def test_min_images_per_stage_adds_epochs_to_a_small_stage_and_resumes_exactly(train_archive, tmp_path):
    """training.min_images_per_stage: a stage trains epochs_per_stage epochs, and more until it has
    drawn that many images; the extra epochs are ordinary ones (logged, validated, resumable)."""
    kw = dict(models=["ae"], stages=["images_001", "images_002"])
    seen: list[tuple[str, int]] = []
    probe = StreamingTrainer(tiny_config(train_archive, tmp_path / "probe", **kw),
                             on_batch=lambda s, e, b: seen.append((s, e)))
    probe.train_progressive_stages()
    per_epoch = {s: seen.count((s, 0)) * 4 for s in kw["stages"]}  # images drawn per epoch (batch 4)
    target = 3 * per_epoch["images_001"] - 1  # stage 1 needs 3 epochs to draw it
    over = {"training.min_images_per_stage": target, "training.checkpoint_every_steps": 1000}
    ref_seen: list[tuple[str, int]] = []
    StreamingTrainer(tiny_config(train_archive, tmp_path / "ref", **kw, **over),
                     on_batch=lambda s, e, b: ref_seen.append((s, e))).train_progressive_stages()
    for s in kw["stages"]:
        want = max(1, -(-target // per_epoch[s]))
        assert sorted({e for st, e in ref_seen if st == s}) == list(range(want)), s
    rows = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["kind"] == "val" and r["stage"] == "images_001" for r in rows) == 3

    out, n = tmp_path / "run", []
    cfg = tiny_config(train_archive, out, **kw, **over)

    def on_batch(stage, epoch, batch):
        n.append((stage, epoch))
        if (stage, epoch) == ("images_001", 2):  # in an added epoch
            tr.request_stop()

    tr = StreamingTrainer(cfg, on_batch=on_batch)
    assert tr.train_progressive_stages().interrupted
    assert not StreamingTrainer(cfg, resume=True).train_progressive_stages().interrupted
    assert state_dict_digest(weights(out, "ae")) == state_dict_digest(weights(tmp_path / "ref", "ae"))


def test_min_images_per_run_extends_only_the_last_stage_of_a_run_too_small_to_draw_them(
        train_archive, tmp_path):
    """training.min_images_per_run: the last stage trains more epochs until the run has drawn that
    many images in all (earlier stages as planned); a run that draws them anyway is unchanged, and
    the LR schedule spans the added epochs (it reaches 0 at the run's last step)."""
    kw = dict(models=["ae"], stages=["images_001", "images_002"])
    seen: list[tuple[str, int]] = []
    StreamingTrainer(tiny_config(train_archive, tmp_path / "probe", **kw),
                     on_batch=lambda s, e, b: seen.append((s, e))).train_progressive_stages()
    epochs = {s: len({e for st, e in seen if st == s}) for s in kw["stages"]}
    drawn = {s: sum(st == s for st, _ in seen) * 4 for s in kw["stages"]}  # batch 4
    per_epoch_last = drawn["images_002"] // epochs["images_002"]
    need = sum(drawn.values()) + 2 * per_epoch_last  # two more epochs of the last stage

    def run(target: int, name: str) -> list[tuple[str, int]]:
        got: list[tuple[str, int]] = []
        StreamingTrainer(tiny_config(train_archive, tmp_path / name, **kw,
                                     **{"training.min_images_per_run": target}),
                         on_batch=lambda s, e, b: got.append((s, e))).train_progressive_stages()
        return got

    got = run(need, "more")
    assert [e for st, e in got if st == "images_001"] == [e for st, e in seen if st == "images_001"]
    assert sorted({e for st, e in got if st == "images_002"}) == list(range(epochs["images_002"] + 2))
    assert len(got) * 4 >= need
    rows = [json.loads(x) for x in (tmp_path / "more" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert train_rows[-1]["step"] == len(got)
    lrs = [r["lr"] for r in train_rows]
    assert lrs[-1] < 0.1 * max(lrs)  # the cosine schedule ends with the added epochs
    assert run(sum(drawn.values()), "enough") == seen


def test_replay_needs_the_persistent_cache(train_archive, tmp_path):
    from imgae_dx.config import ConfigError

    cfg = tiny_config(train_archive, tmp_path / "r", models=["ae"],
                      **{"training.replay": 0.5, "data.cache": "memory"})
    with pytest.raises(ConfigError, match="data.cache: persistent"):
        StreamingTrainer(cfg).train_progressive_stages()
    with pytest.raises(ConfigError, match=r"training.replay"):
        tiny_config(train_archive, tmp_path / "r", **{"training.replay": 1.5})


def test_a_run_writes_its_resolved_dataset_and_split(full_run, train_archive):
    """config.yaml names the dataset (NIH, detected) and split.csv lists every image's split."""
    from imgae_dx.data.datasets import open_dataset
    from imgae_dx.run.splits import SplitTable, read_split_table
    from imgae_dx.streaming.sources import open_archive

    cfg = yaml.safe_load((full_run / "config.yaml").read_text())
    assert cfg["data"]["dataset"] == "nih"
    saved = read_split_table(full_run)
    run_cfg = tiny_config(train_archive, full_run)
    with open_archive(str(train_archive), run_cfg.data) as a:
        assert saved == SplitTable.from_index(open_dataset(a, run_cfg.data, run_cfg.seed, quiet=True))


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["zhanglab", "rsna"])
def test_a_cut_dataset_run_cuts_parts_evaluates_and_resumes_exactly(layout, request, tmp_path):
    """ZhangLab (no views: data.view PA is ignored) and RSNA (views from the DICOM headers: PA
    only) are detected and cut into part_NNN stages; the run evaluates with per-finding AUROCs
    (and, for RSNA, localisation against its Lung Opacity boxes); a run stopped mid part_002
    resumes bit-identical; a run folder whose split.csv the archive no longer gives is refused on
    resume."""
    from imgae_dx.evaluation.evaluator import evaluate_run
    from imgae_dx.run.splits import read_split_table

    archive = request.getfixturevalue(f"{layout}_train_archive")
    over = {"data.images_per_stage": 13, "data.view": "PA", "training.checkpoint_every_steps": 1000,
            "evaluation.bootstrap": 20}
    kw = dict(models=["unet", "ra"])
    ref = tmp_path / "ref"
    res = StreamingTrainer(tiny_config(archive, ref, **kw, **over)).train_progressive_stages()
    assert res.stages[:3] == ["part_001", "part_002", "part_003"] and res.step > 0
    cfg = yaml.safe_load((ref / "config.yaml").read_text())
    assert cfg["data"]["dataset"] == layout and cfg["data"]["view"] == "PA"
    split = read_split_table(ref)
    per = [sum(1 for s, st in zip(split.split, split.stage, strict=True) if s == "train" and st == p)
           for p in res.stages]
    assert per[:-1] == [13] * (len(per) - 1) and 0 < per[-1] <= 13  # part_NNN: images_per_stage training images
    assert {"stage_1.pt", "stage_2.pt", "stage_3.pt"} <= {p.name for p in (ref / "checkpoints" / "ra").iterdir()}
    views = {v for v, s in zip(split.view, split.split, strict=True) if s != "unused"}
    assert views == ({""} if layout == "zhanglab" else {"PA"})

    m = evaluate_run(ref)
    assert m.view == ("all" if layout == "zhanglab" else "PA")  # no view positions: every view is scored
    cal = json.loads((ref / "checkpoints" / "ra" / "calibration.json").read_text())
    assert cal["source"]["view"] == m.view
    test_boxes = 0
    if layout == "rsna":
        from imgae_dx.data.datasets import open_dataset
        from imgae_dx.streaming.sources import open_archive

        ref_cfg = tiny_config(archive, ref, **kw, **over)
        with open_archive(str(archive), ref_cfg.data) as a:
            boxes = open_dataset(a, ref_cfg.data, ref_cfg.seed, quiet=True).boxes
        test_boxes = sum(len(boxes.get(im, [])) for im, s in zip(split.image, split.split, strict=True)
                         if s == "test")
    findings = {"zhanglab": {"bacteria", "virus"}, "rsna": {"Lung Opacity", "No Lung Opacity / Not Normal"}}
    for name in ("unet", "ra"):
        got = m.models[name]
        assert set(got.per_finding) == findings[layout] and 0 <= got.auroc <= 1
        assert all(0 <= f.auroc <= 1 for f in got.per_finding.values())
        if layout == "rsna":  # every box of a test Lung Opacity image scored
            loc = got.localisation
            assert loc.n_boxes == test_boxes > 0 and set(loc.per_finding) == {"Lung Opacity"}
            assert 0 <= loc.hit_rate <= 1

    out, seen = tmp_path / "run", []
    run_cfg = tiny_config(archive, out, **kw, **over)

    def on_batch(stage, epoch, batch):
        seen.append(stage)
        if seen.count("part_002") == 2:
            tr.request_stop()

    tr = StreamingTrainer(run_cfg, on_batch=on_batch)
    assert tr.train_progressive_stages().interrupted
    # the run folder's split.csv no longer matches the archive: refused, nothing touched
    text = (out / "split.csv").read_text()
    (out / "split.csv").write_text(text.replace(",train,", ",test,", 1))
    with pytest.raises(CheckpointError, match="another split than the run's"):
        StreamingTrainer(run_cfg, resume=True).train_progressive_stages()
    (out / "split.csv").write_text(text)
    res2 = StreamingTrainer(run_cfg, resume=True).train_progressive_stages()
    assert not res2.interrupted and res2.resumed_from_step is not None
    for m in ("unet", "ra"):
        assert state_dict_digest(weights(out, m)) == state_dict_digest(weights(ref, m)), m


def test_resume_at_a_stage_boundary_starts_the_early_stopping_count_afresh(train_archive, tmp_path,
                                                                         monkeypatch):
    """A run that dies right after a stage's last checkpoint resumes into the next stage with the
    early-stopping count at 0, as the uninterrupted run enters it: the stage trains as many
    epochs as it does there."""
    from imgae_dx.training.selection import Selector

    real = Selector.offer
    monkeypatch.setattr(Selector, "offer", lambda self, name, loss, k, step: real(
        self, name, loss, k, step) if self.state[name].best_loss is None else False)  # first epoch only
    kw = dict(models=["ae"], stages=["images_001", "images_002"],
              **{"training.epochs_per_stage": 3, "training.early_stopping_patience": 2,
                 "training.checkpoint_every_steps": 1000})
    ref: list[tuple[str, int]] = []
    StreamingTrainer(tiny_config(train_archive, tmp_path / "ref", **kw),
                     on_batch=lambda s, e, b: ref.append((s, e))).train_progressive_stages()
    assert sorted({e for s, e in ref if s == "images_002"}) == [0, 1]  # 2 epochs without a gain

    class Died(Exception):
        pass

    def dies_in_stage_2(stage, epoch, batch):
        if stage == "images_002":
            raise Died  # after stage 1's last checkpoint, before any save of stage 2

    cfg = tiny_config(train_archive, tmp_path / "run", **kw)
    with pytest.raises(Died):
        StreamingTrainer(cfg, on_batch=dies_in_stage_2).train_progressive_stages()
    last = torch.load(tmp_path / "run" / "checkpoints" / "ae" / "last.pt", weights_only=True)
    assert last["position"] == {"stage_index": 1, "epoch": 0, "batch": 0}
    assert last["selection"]["bad_epochs"] == 2  # stage 1's count
    seen: list[tuple[str, int]] = []
    resumed = StreamingTrainer(cfg, resume=True, on_batch=lambda s, e, b: seen.append((s, e)))
    resumed.train_progressive_stages()
    assert seen == [x for x in ref if x[0] == "images_002"]
    assert state_dict_digest(weights(tmp_path / "run", "ae")) == state_dict_digest(weights(tmp_path / "ref", "ae"))
