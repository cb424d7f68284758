"""Two processes under ``torch.distributed.run`` (gloo, CPU): disjoint samples, identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from training_helpers import weights

from imgae_dx.run.checkpoint import state_dict_digest


@pytest.mark.slow
def test_two_process_gloo_run(train_archive, tmp_path):
    out, res = tmp_path / "run", tmp_path / "res"
    res.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).with_name("ddp_worker.py")), str(train_archive), str(out), str(res)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    r0, r1 = (json.loads((res / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2 and r0["step"] == r1["step"] > 0
    # same number of batches on both ranks, disjoint samples within every epoch
    assert [(b["stage"], b["epoch"]) for b in r0["seen"]] == [(b["stage"], b["epoch"]) for b in r1["seen"]]
    for stage in ("images_001", "images_002"):
        for epoch in (0, 1):
            m0 = {m for b in r0["seen"] if (b["stage"], b["epoch"]) == (stage, epoch) for m in b["members"]}
            m1 = {m for b in r1["seen"] if (b["stage"], b["epoch"]) == (stage, epoch) for m in b["members"]}
            assert m0 and m1 and not (m0 & m1), (stage, epoch)
    # identical weights (parameters and BatchNorm buffers) on both ranks, and in rank 0's checkpoint
    assert r0["digests"] == r1["digests"]
    for name in ("unet", "ae"):
        assert state_dict_digest(weights(out, name)) == r0["digests"][name]
    # only rank 0 wrote the run folder; the log counts both ranks' images
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r.get("kind") == "train" and r["model"] == "ae"]
    assert train[-1]["images_seen"] == 2 * sum(len(b["members"]) for b in r0["seen"])
    ck = torch.load(out / "checkpoints" / "ae" / "last.pt", weights_only=True)
    assert ck["world_size"] == 2 and len(ck["rank_states"]) == 2
