"""SIGKILL in the middle of stage 2, then ``--resume``: final weights bit-identical (subprocess)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from training_helpers import TINY_FLAGS, tiny_yaml, weights

from imgae_dx.testing.kill import sigkill_in_stage

MODELS = ("unet", "ra", "ae")


def _cmd(archive: Path, out: Path, cfg_file: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "imgae_dx", "train", "--config", str(cfg_file),
            "--source", str(archive), "--out", str(out), *TINY_FLAGS, "--model", "all",
            "--stages", "all", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_sigkill_in_stage_2_then_resume_is_bit_identical(train_archive, full_run, tmp_path):
    out = tmp_path / "run"
    cfg_file = tiny_yaml(tmp_path / "tiny.yaml")
    proc = subprocess.Popen(_cmd(train_archive, out, cfg_file), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed_at = None
    try:
        killed_at = sigkill_in_stage(proc, out, "images_002", min_batch=2, timeout=900)
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
        proc.wait(60)
    assert killed_at is not None, f"never reached stage 2 (rc={proc.returncode}): {proc.stderr.read()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "checkpoints" / "ae" / "stage_2.pt").exists()

    done = subprocess.run(_cmd(train_archive, out, cfg_file, "--resume"), env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming" in done.stderr
    for m in MODELS:
        a, b = weights(full_run, m), weights(out, m)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{m} differs after resume"
        sa = torch.load(full_run / "checkpoints" / m / "stage_3.pt", weights_only=True)
        sb = torch.load(out / "checkpoints" / m / "stage_3.pt", weights_only=True)
        assert sa["step"] == sb["step"] and sa["selection"] == sb["selection"]
        assert sa["val_loss"] == sb["val_loss"] is not None
    # metrics: each step logged once, as in the uninterrupted run
    def steps(run):
        recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["model"]) for r in recs if r.get("kind") == "train"]

    assert sorted(steps(out)) == sorted(steps(full_run))
