"""Distributed helpers in a single process (the 2-process run is in test_trainer_ddp.py)."""

from __future__ import annotations

import torch

from imgae_dx.training import distributed as D


def test_detect_reads_torchrun_env(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert D.detect() == D.DistInfo(0, 1, 0)
    assert not D.detect().distributed and D.detect().is_main
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = D.detect()
    assert (info.rank, info.world_size, info.local_rank) == (3, 4, 1)
    assert info.distributed and not info.is_main


def test_single_process_helpers_are_noops(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert D.init_distributed(torch.device("cpu")) == D.DistInfo()
    m = torch.nn.Linear(2, 2)
    m(torch.ones(1, 2)).sum().backward()
    g = m.weight.grad.clone()
    D.all_reduce_grads(m.parameters())
    assert torch.equal(m.weight.grad, g)
    assert D.all_reduce_sum([1.0, 2.0]) == [1.0, 2.0]
    assert D.any_flag(True) and not D.any_flag(False)
    assert D.gather_objects({"a": 1}) == [{"a": 1}]
    assert D.is_main()
    D.barrier()
    D.cleanup()


def test_small_collectives_use_the_backends_device(monkeypatch):
    """nccl refuses CPU tensors: the stop flags and validation sums must go through the GPU there."""
    monkeypatch.setattr(D.dist, "get_backend", lambda: "nccl")
    monkeypatch.setattr(D.torch.cuda, "current_device", lambda: 3)
    assert D.collective_device() == torch.device("cuda", 3)
    monkeypatch.setattr(D.dist, "get_backend", lambda: "gloo")
    assert D.collective_device() == torch.device("cpu")
