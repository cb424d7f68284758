"""Distributed helpers in a single process (the 2-process run is in test_trainer_ddp.py)."""

from __future__ import annotations

import torch

from imgae_dx.training import distributed as dist_utils


def test_detect_reads_torchrun_env(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert dist_utils.detect() == dist_utils.DistInfo(0, 1, 0)
    assert not dist_utils.detect().distributed and dist_utils.detect().is_main
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = dist_utils.detect()
    assert (info.rank, info.world_size, info.local_rank) == (3, 4, 1)
    assert info.distributed and not info.is_main


def test_single_process_helpers_are_noops(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert dist_utils.init_distributed(torch.device("cpu")) == dist_utils.DistInfo()
    m = torch.nn.Linear(2, 2)
    m(torch.ones(1, 2)).sum().backward()
    g = m.weight.grad.clone()
    dist_utils.all_reduce_grads(m.parameters())
    assert torch.equal(m.weight.grad, g)
    assert dist_utils.all_reduce_sum([1.0, 2.0]) == [1.0, 2.0]
    assert dist_utils.any_flag(True) and not dist_utils.any_flag(False)
    assert dist_utils.gather_objects({"a": 1}) == [{"a": 1}]
    assert dist_utils.is_main()
    dist_utils.barrier()
    dist_utils.cleanup()


def test_small_collectives_use_the_backends_device(monkeypatch):
    """nccl refuses CPU tensors: the stop flags and validation sums must go through the GPU there."""
    monkeypatch.setattr(dist_utils.dist, "get_backend", lambda: "nccl")
    monkeypatch.setattr(dist_utils.torch.cuda, "current_device", lambda: 3)
    assert dist_utils.collective_device() == torch.device("cuda", 3)
    monkeypatch.setattr(dist_utils.dist, "get_backend", lambda: "gloo")
    assert dist_utils.collective_device() == torch.device("cpu")
