"""Precision policy: which autocast dtype a step runs in, and whether it needs a GradScaler.

``training.amp`` is ``auto`` (default), ``bf16``, ``fp16`` or ``off``; :func:`resolve_precision`
turns it into a :class:`Precision` for the device at hand:

=============  ==========================================  ===========================================
``amp``        CUDA                                        CPU
=============  ==========================================  ===========================================
``auto``       bf16 where the GPU has native bf16           fp32 (no autocast)
               (compute capability ≥ 8.0: A100, L4, H100),
               else fp16 with a GradScaler (T4, V100)
``bf16``       bf16; on a GPU without native bf16, fp16     bf16 autocast (the same code path as CUDA)
               with a GradScaler instead (and a warning)
``fp16``       fp16 with a GradScaler                       fp16 autocast with ``GradScaler("cpu")``
``off``        fp32                                         fp32
=============  ==========================================  ===========================================

Why not ``torch.cuda.is_bf16_supported()``: it returns True on a T4 (sm 7.5) because it counts
emulation, and emulated bf16 has no tensor cores. Native bf16 starts at compute capability 8.0.
Asking for fp16/bf16 on the CPU is how the CUDA mixed-precision path (scaler included) is tested
without a GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch

from imgae_dx.utils.device import has_native_bf16

log = logging.getLogger(__name__)

AmpSetting = Literal["auto", "bf16", "fp16", "off"]


@dataclass(frozen=True)
class Precision:
    """The resolved precision of a device's training steps.

    Attributes:
        name: ``"bf16"``, ``"fp16"`` or ``"fp32"``.
        device_type: ``"cuda"`` or ``"cpu"`` (the autocast device type).
        reason: one line saying why (written to the log and the metrics).
    """

    name: Literal["bf16", "fp16", "fp32"]
    device_type: str
    reason: str = ""

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for fp32."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    @property
    def needs_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling."""
        return self.name == "fp16"

    def autocast(self) -> Callable[[], AbstractContextManager[Any]]:
        """Zero-argument factory of the autocast context (``nullcontext`` for fp32)."""
        dtype = self.dtype
        if dtype is None:
            return nullcontext
        device_type = self.device_type

        def factory() -> AbstractContextManager[Any]:
            return torch.autocast(device_type=device_type, dtype=dtype)

        return factory

    def make_scaler(self) -> torch.amp.GradScaler | None:
        """A fresh ``GradScaler`` on this device type for fp16, else None (one per model: an
        overflow in one model must not shrink another's scale)."""
        return torch.amp.GradScaler(self.device_type) if self.needs_scaler else None


def cuda_capability(device: torch.device) -> tuple[int, int]:
    """(major, minor) compute capability of a CUDA device."""
    props = torch.cuda.get_device_properties(device)
    return int(props.major), int(props.minor)


def resolve_precision(amp: AmpSetting, device: torch.device | str,
                      capability: tuple[int, int] | None = None) -> Precision:
    """The :class:`Precision` for ``training.amp`` on ``device`` (see the module table).

    Args:
        amp: the configured setting.
        device: the training device.
        capability: CUDA compute capability (read from the device when None).
    """
    dev = torch.device(device)
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise ValueError(f"training.amp must be auto, bf16, fp16 or off, got {amp!r}")
    if amp == "off":
        return Precision("fp32", dev.type, "training.amp: off")
    if dev.type != "cuda":
        if amp == "auto":
            return Precision("fp32", dev.type, "auto on the CPU: fp32")
        return Precision(amp, dev.type, f"training.amp: {amp} on the CPU (autocast {amp})")
    cap = tuple(capability) if capability is not None else cuda_capability(dev)
    cc = f"compute capability {cap[0]}.{cap[1]}"
    if amp == "fp16":
        return Precision("fp16", "cuda", f"training.amp: fp16 ({cc}), with a GradScaler")
    if has_native_bf16(cap):  # type: ignore[arg-type]
        return Precision("bf16", "cuda", f"{cc} has native bf16")
    if amp == "bf16":
        log.warning("training.amp: bf16 asked for, but %s has no native bf16 (only emulated, "
                    "without tensor cores): training in fp16 with a GradScaler instead; "
                    "set training.amp: off for fp32", cc)
    return Precision("fp16", "cuda", f"{cc} has no native bf16: fp16 with a GradScaler")
