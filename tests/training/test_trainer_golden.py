"""A fixed tiny CPU run gives the same bytes as the recorded one: weights, optimiser states, RNG
streams, positions, selection bookkeeping and calibrations of every checkpoint.

The run: ``--model all`` (unet, ra, ae and the PCA baseline) over 2 stages, 2 epochs per stage,
replay of every earlier stage from the persistent cache, early stopping armed, checkpoints every 3
steps; stopped in stage 2's replay epoch, then resumed to the end. Every field of every checkpoint
(the stopped run's ``last.pt`` and the finished run's ``last/prev/stage_K/best.pt``), every
``calibration.json`` and the :class:`TrainResult` figures are digested and compared with
``trainer_golden.json``. A refactor of the training engine must leave them equal.

Float results depend on the CPU kernels, so the digests are recorded with their environment
(torch version, CPU capability, the sample archive's bytes); in another environment the test is
skipped. Record again (after a change that is meant to alter the numbers) with
``IMGAE_DX_RECORD_GOLDEN=1 pytest tests/training/test_trainer_golden.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import pytest
import torch
from training_helpers import tiny_config

from imgae_dx.run.checkpoint import state_dict_digest
from imgae_dx.run.identity import config_fingerprint
from imgae_dx.training import run_folder
from imgae_dx.training.streaming_trainer import StreamingTrainer

GOLDEN = Path(__file__).with_name("trainer_golden.json")
MODELS = ("unet", "ra", "ae", "pca")
STAGES = ["images_001", "images_002"]
OVER = {"data.cache": "persistent", "training.replay": "all", "training.epochs_per_stage": 2,
        "training.checkpoint_every_steps": 3, "training.early_stopping_patience": 3}
Paths = tuple[tuple[str, str], ...]
VOLATILE = {"saved_at", "package_version", "created_at"}  # wall clock and version string


def _canon(obj: Any, tmp: Paths) -> Any:
    """A JSON-able form of a checkpoint value: tensors by dtype, shape and byte digest; floats by
    repr; the test's temporary folders replaced by their names (``tmp``: (path, name) pairs)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        return f"tensor {t.dtype} {list(t.shape)} {hashlib.sha256(t.numpy().tobytes()).hexdigest()[:16]}"
    if isinstance(obj, dict):
        return {str(k): _canon(v, tmp) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))
                if k not in VOLATILE}
    if isinstance(obj, (list, tuple)):
        return [_canon(v, tmp) for v in obj]
    if isinstance(obj, float):
        return repr(obj)
    if isinstance(obj, str):
        for path, name in tmp:
            obj = obj.replace(path, name)
        return obj
    return obj


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _checkpoint_fields(path: Path, tmp: Paths, fingerprint: str) -> dict[str, str]:
    raw = torch.load(path, weights_only=True)
    assert raw.pop("fingerprint") == fingerprint, path  # hashes the source path: checked, not digested
    if raw["archive"]:
        raw["archive"]["version"] = "<mtime>"  # a folder archive's version is its file's mtime
    for rank in raw["rank_states"]:
        if rank["dataset"]:
            rank["dataset"]["fingerprint"] = "<plan>"  # hashes the source path
    out = {k: _digest(_canon(v, tmp)) for k, v in raw.items() if k not in VOLATILE}
    out["model_weights"] = state_dict_digest(raw["model"])[:16]
    return out


def _run_folder_digests(out: Path, tmp: Paths, fingerprint: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for m in MODELS:
        folder = out / "checkpoints" / m
        for p in sorted(folder.glob("*.pt")):
            found[f"{m}/{p.name}"] = _checkpoint_fields(p, tmp, fingerprint)
        cal = json.loads((folder / "calibration.json").read_text())
        found[f"{m}/calibration.json"] = _digest(_canon(cal, tmp))
    return found


def _result(res: Any) -> dict[str, Any]:
    return _canon({"step": res.step, "stages_done": res.stages_done, "best_val": res.best_val,
                   "images_seen": res.images_seen, "interrupted": res.interrupted,
                   "resumed_from_step": res.resumed_from_step}, ())


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _environment(archive: Path) -> dict[str, str]:
    return {"torch": torch.__version__, "machine": platform.machine(),
            "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
            "archive_sha256": hashlib.sha256(archive.read_bytes()).hexdigest()[:16]}


@pytest.mark.slow
def test_fixed_run_matches_the_recorded_digests(train_archive, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one reduction order for every machine of the same kind
    try:
        tmp = ((str(train_archive.parent), "<ARCHIVE>"), (str(tmp_path), "<TMP>"))
        out = tmp_path / "run"
        cfg = tiny_config(train_archive, out, models=list(MODELS), stages=STAGES,
                          **{**OVER, "data.cache_dir": str(tmp_path / "cache")})
        fingerprint = config_fingerprint(run_folder.config_dict(cfg))
        seen: list[tuple[str, int]] = []

        def on_batch(stage: str, epoch: int, batch: Any) -> None:
            seen.append((stage, epoch))
            if seen.count(("images_002", 1)) == 2:  # in stage 2's replay epoch
                tr.request_stop()

        tr = StreamingTrainer(cfg, on_batch=on_batch)
        stopped = tr.train_progressive_stages()
        assert stopped.interrupted
        at_stop = {f"{m}/last.pt": _checkpoint_fields(out / "checkpoints" / m / "last.pt", tmp, fingerprint)
                   for m in MODELS if m != "pca"}
        done = StreamingTrainer(cfg, resume=True).train_progressive_stages()
        assert not done.interrupted
        got = {"stopped": {"result": _result(stopped), "checkpoints": at_stop},
               "finished": {"result": _result(done), **_run_folder_digests(out, tmp, fingerprint)}}
    finally:
        torch.set_num_threads(threads)
    env = _environment(train_archive)
    if os.environ.get("IMGAE_DX_RECORD_GOLDEN"):
        GOLDEN.write_text(json.dumps({"environment": env, "digests": got}, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"recorded {GOLDEN.name}")
    golden = json.loads(GOLDEN.read_text())
    if golden["environment"] != env:
        pytest.skip(f"digests recorded in {golden['environment']}, this is {env}; record them here "
                    "from a trusted revision (IMGAE_DX_RECORD_GOLDEN=1)")
    want, have = _flat(golden["digests"]), _flat(got)
    diff = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
    assert not diff, f"{len(diff)} value(s) differ from the recorded run: " + ", ".join(diff[:20])
