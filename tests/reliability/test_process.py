"""Process faults: SIGKILL at seeded random points of a real ``imgae-dx train`` process, and a disk
that fills up in the middle of writing a checkpoint.

A killed run loses at most the last checkpoint interval (``training.checkpoint_every_steps``),
every ``--resume`` succeeds, and the run finally ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from reliability_helpers import Seen, final_weights, tiny_config, tiny_yaml

from imgae_dx.errors import CheckpointError
from imgae_dx.run.checkpoint import read_checkpoint
from imgae_dx.run.records import TrainRecord, read_records
from imgae_dx.training.streaming_trainer import StreamingTrainer

MODELS = ("unet", "ae")
EVERY = 2  # training.checkpoint_every_steps
KILLS = 10


def _cli(cfg: Path, source: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    script = Path(sys.executable).with_name("imgae-dx")  # the installed console script
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "imgae_dx"]
    return subprocess.Popen(
        [*cmd, "train", "--config", str(cfg), "--source", str(source),
         "--out", str(out), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )


def _logged_step(run: Path) -> int:
    """Highest training step in metrics.jsonl (a torn last line is ignored)."""
    return max((r.step for r in read_records(run / "metrics.jsonl") if isinstance(r, TrainRecord)),
               default=0)


def _ckpt_step(run: Path) -> int | None:
    """The step a resume continues from: every model's last.pt, or — when a kill landed between
    two models' writes of one save — the earliest of them, which the others' prev.pt holds."""
    last: dict[str, int] = {}
    for m in MODELS:
        p = run / "checkpoints" / m / "last.pt"
        if not p.is_file():
            return None
        last[m] = read_checkpoint(p, model_name=m).step  # loads safely, or raises
    common = min(last.values())
    for m, step in last.items():
        if step != common:
            prev = read_checkpoint(run / "checkpoints" / m / "prev.pt", model_name=m)
            assert prev.step == common, f"no step every model can resume from: {last}"
    return common


@pytest.mark.slow
def test_sigkill_at_ten_random_points_then_resume_is_exact(small_archive, tmp_path):
    cfg = tiny_yaml(tmp_path / "tiny.yaml", models=list(MODELS),
                    **{"training.checkpoint_every_steps": EVERY,
                       "data.index_cache_dir": str(tmp_path / "idx")})
    ref = _cli(cfg, small_archive, tmp_path / "ref")
    out_ref, err_ref = ref.communicate(timeout=300)
    assert ref.returncode == 0, err_ref.decode()[-2000:]
    total = _logged_step(tmp_path / "ref")
    assert total >= 10

    run = tmp_path / "run"
    rng = random.Random(20240607)
    # kill points: a training step to reach (0 = during start-up, after a random delay)
    targets = sorted(rng.randrange(0, total - 1) for _ in range(KILLS))
    last_ck = 0
    log = []
    for target in targets:
        proc = _cli(cfg, small_archive, run, "--resume")
        t0 = time.monotonic()
        delay = rng.uniform(0.0, 2.0)
        while proc.poll() is None and time.monotonic() - t0 < 240:
            if (target == 0 and time.monotonic() - t0 >= delay) or (target and _logged_step(run) >= target):
                break
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        ck = _ckpt_step(run)
        logged = _logged_step(run)
        log.append((target, proc.returncode, logged, ck))
        if ck is not None:
            # nothing checkpointed earlier is ever lost, and at most one interval is
            assert ck >= last_ck, log
            assert logged - ck <= EVERY, log
            last_ck = ck
        else:
            assert logged <= EVERY, log
        if proc.returncode == 0:  # it finished before the kill point: nothing left to kill
            break
    assert sum(1 for _t, rc, _l, _c in log if rc == -signal.SIGKILL) >= 5, log
    fin = _cli(cfg, small_archive, run, "--resume")
    _o, err = fin.communicate(timeout=300)
    assert fin.returncode == 0, err.decode()[-2000:]
    assert _logged_step(run) == total
    assert final_weights(run, MODELS) == final_weights(tmp_path / "ref", MODELS)
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in recs if r.get("kind") == "train" and r["model"] == "unet"]
    assert steps == list(range(1, total + 1))  # every step logged exactly once across the kills


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(small_archive, tmp_path, monkeypatch):
    """torch.save writes part of last.pt's temporary file, then the disk is full (ENOSPC): the
    previous last.pt stays intact and loadable, no temporary file is left, and a resume from it
    ends bit-identical to an uninterrupted run."""
    ref_out = tmp_path / "ref"
    StreamingTrainer(tiny_config(small_archive, ref_out, models=list(MODELS))).train_progressive_stages()
    ref = final_weights(ref_out, MODELS)

    out = tmp_path / "run"
    cfg = tiny_config(small_archive, out, models=list(MODELS))
    real_save = torch.save
    calls = {"last": 0}
    before: dict[str, bytes] = {}

    def full_disk(obj, f, *a, **kw):
        name = os.path.basename(os.readlink(f"/proc/self/fd/{f.fileno()}"))  # fdopen'ed temp file
        if name.startswith(".last.pt."):
            calls["last"] += 1
            if calls["last"] == 5:  # 2 models per save: the 3rd save of last.pt, first model
                for m in MODELS:
                    before[m] = (out / "checkpoints" / m / "last.pt").read_bytes()
                import io

                buf = io.BytesIO()
                real_save(obj, buf)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device") as ei:
        StreamingTrainer(cfg, on_batch=Seen()).train_progressive_stages()
    assert "previous checkpoint there is intact" in str(ei.value)
    monkeypatch.setattr(torch, "save", real_save)
    for m in MODELS:
        p = out / "checkpoints" / m / "last.pt"
        assert p.read_bytes() == before[m]  # untouched, byte for byte
        assert read_checkpoint(p, model_name=m).step >= EVERY
        assert not [q.name for q in p.parent.iterdir() if q.name.endswith(".tmp")]
    res = StreamingTrainer(cfg, resume=True).train_progressive_stages()
    assert not res.interrupted and res.resumed_from_step is not None
    assert final_weights(out, MODELS) == ref
