"""Distributed helpers for ``torchrun``: environment detection, process group, gradient averaging.

Under ``torchrun`` each process sees ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and
``MASTER_ADDR``/``MASTER_PORT``). :func:`init_distributed` joins the process group (``nccl`` on
CUDA, ``gloo`` on CPU, or ``training.dist_backend``). Gradients are averaged by
:func:`all_reduce_grads`, which the step owner (:class:`~imgae_dx.training.step.TrainStep`) calls
after every backward: objectives such as RA run several forwards and
backwards per step through sub-modules (encoder, decoder), which ``DistributedDataParallel``'s
forward hook cannot see, so every model uses this explicit all-reduce (bucketed into one flat
tensor per dtype) — mathematically the same averaging DDP performs. Buffers (e.g. BatchNorm
statistics) are broadcast from rank 0 after each step, as DDP's ``broadcast_buffers`` does.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect() -> DistInfo:
    """Read ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` as set by ``torchrun`` (defaults: one process)."""

    def _int(name: str, default: int) -> int:
        v = os.environ.get(name)
        try:
            return int(v) if v not in (None, "") else default
        except ValueError:
            return default

    world = max(1, _int("WORLD_SIZE", 1))
    rank = _int("RANK", 0)
    local = _int("LOCAL_RANK", rank)
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def init_distributed(device: torch.device, timeout_s: float = 1800.0,
                     backend: str = "auto") -> DistInfo:
    """Join the process group when launched by ``torchrun`` with more than one process.

    Args:
        device: the device this rank trains on.
        backend: ``auto`` (``nccl`` on CUDA, else ``gloo``), ``nccl`` or ``gloo`` (gloo also
            runs several ranks on one GPU, which NCCL refuses).
    """
    info = detect()
    if not info.distributed or not dist.is_available():
        return DistInfo()
    if not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=_dt.timedelta(seconds=timeout_s))
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=info.local_rank)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main() -> bool:
    """True on rank 0 (or when not distributed)."""
    return not is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (idempotent)."""
    if is_initialized():
        dist.destroy_process_group()


def _bucketed(tensors: list[torch.Tensor], collective: Callable[[torch.Tensor], None]) -> None:
    """Run ``collective`` in place once per (device, dtype) on ``tensors`` flattened together,
    then copy the result back into them: one collective per bucket, not one per tensor."""
    buckets: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        buckets.setdefault((t.device, t.dtype), []).append(t)
    for group in buckets.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        collective(flat)
        offset = 0
        for t in group:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))
            offset += n


def all_reduce_grads(params: Iterable[torch.nn.Parameter]) -> None:
    """Average the ``.grad`` of ``params`` over all ranks in place (no-op when not distributed).

    One collective per (device, dtype) bucket. A parameter without a gradient on this rank
    contributes zeros.
    """
    if not is_initialized():
        return
    world = dist.get_world_size()
    plist = [p for p in params if p.requires_grad]
    for p in plist:
        if p.grad is None:
            p.grad = torch.zeros_like(p)

    def average(flat: torch.Tensor) -> None:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world)

    _bucketed([p.grad for p in plist], average)


def broadcast_module(module: torch.nn.Module, buffers_only: bool = False) -> None:
    """Copy rank 0's parameters (unless ``buffers_only``) and buffers to every rank."""
    if not is_initialized():
        return
    with torch.no_grad():
        tensors = [] if buffers_only else list(module.parameters())
        tensors += list(module.buffers())
        _bucketed([t.data for t in tensors], lambda flat: dist.broadcast(flat, src=0))


def collective_device() -> torch.device:
    """Where tensors of the process group's collectives must live: this rank's GPU under
    ``nccl`` (it refuses CPU tensors), the CPU under ``gloo``."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a short list of floats over ranks (float64)."""
    if not is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def any_flag(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any rank (used to stop all ranks together)."""
    if not is_initialized():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` as a list indexed by rank (``[obj]`` when not distributed)."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out

