"""The scoring graph as ONNX: ``image`` (B×1×H×W float32 in [0, 1]) → ``reconstruction``
(B×1×H×W), ``anomaly_map`` (B×1×H×W), ``score`` (B), batch size dynamic.

Exported with ``torch.onnx.export(dynamo=True)`` (needs ``onnx`` and ``onnxscript``) from the
model's :meth:`~imgae_dx.models.base.ReconstructionModel.exportable` module (the PCA baseline: its
``k`` components as a fixed buffer) and checked with ``onnxruntime`` (CPU) against the model's own
``predict`` on the given images: every output must agree within :data:`TOLERANCE` (max absolute
difference), else the file is removed and the export fails. Models whose scoring cannot be a
deterministic graph are refused before exporting: the ``clahe`` map (OpenCV on the CPU), RA with
``inference_samples > 0`` (random sampling) and an unfitted PCA. While exporting, the exporter's
own output (graphs, warnings, logs) is held back: a failure is one line.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from imgae_dx.inference.errors import BundleError

TOLERANCE = 1e-4
OPSET = 18
INSTALL_HINT = "pip install 'imgae-dx[onnx]' (onnx, onnxscript, onnxruntime)"
OUTPUTS = ("reconstruction", "anomaly_map", "score")


class ScoringGraph(nn.Module):
    """``forward(image) -> (reconstruction, anomaly_map, score)`` = the model's ``predict``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.exportable()

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        p = self.model.predict(image)
        return p.reconstruction, p.anomaly_map, p.score


def unsupported_reason(model: Any) -> str | None:
    """Why ``model``'s scoring cannot be exported as a deterministic ONNX graph (None: it can)."""
    if model.cfg.anomaly.map == "clahe":
        return "its anomaly map is 'clahe', computed with OpenCV outside the network"
    if model.name == "ra" and model.cfg.inference_samples > 0:
        return "it averages random samples at inference (model.ra.inference_samples > 0)"
    if model.name == "pca" and not model.fitted:
        return "the PCA baseline is not fitted (k = 0)"
    return None


def _first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, without terminal colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    line = (text.splitlines()[0] if text else "").split(" Next steps")[0]  # torch's advice follows
    return line if len(line) <= limit else line[:limit - 1] + "…"


def check_images(image_size: int, n: int = 4, seed: int = 0) -> np.ndarray:
    """n seeded radiograph-like float32 test inputs (n×1×S×S in [0, 1]): smooth field + noise."""
    import cv2

    rng = np.random.default_rng(seed)
    out = np.empty((n, 1, image_size, image_size), np.float32)
    for i in range(n):
        coarse = rng.random((8, 8)).astype(np.float32)
        smooth = cv2.resize(coarse, (image_size, image_size), interpolation=cv2.INTER_CUBIC)
        img = 0.15 + 0.7 * smooth + 0.05 * rng.standard_normal((image_size, image_size))
        out[i, 0] = np.rint(np.clip(img, 0, 1) * 255) / 255  # on the uint8 grid, as real inputs
    return out


def require_onnx() -> Any:
    """The ``onnxruntime`` module; BundleError with the install hint when a package is missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise BundleError(f"--onnx needs {e.name}: {INSTALL_HINT}") from None
    return onnxruntime


def export_onnx(model: nn.Module, path: Path, image_size: int, images: np.ndarray | None = None
                ) -> dict[str, Any]:
    """Write ``path`` and check it (see the module doc).

    Args:
        images: n×1×S×S float32 inputs of the parity check (default :func:`check_images`).

    Returns:
        ``{"file", "opset", "inputs", "outputs", "max_abs_diff": {output: float}, "checked_on"}``.

    Raises:
        BundleError: the model cannot be exported, a package is missing, or the check fails.
    """
    ort = require_onnx()
    why = unsupported_reason(model)
    if why is not None:
        raise BundleError(f"{model.name} cannot be exported to ONNX: {why}")
    model = model.cpu().eval()
    graph = ScoringGraph(model).eval()
    x = torch.from_numpy(images if images is not None else check_images(image_size))
    batch = torch.export.Dim("batch", min=1)
    quiet = [logging.getLogger(n) for n in ("torch", "torch.onnx", "torch.export", "torch.fx",
                                            "torch._dynamo", "onnxscript")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.CRITICAL)
    held = io.StringIO()
    try:
        with contextlib.redirect_stdout(held), contextlib.redirect_stderr(held), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.export's deprecations and tracer notes
            torch.onnx.export(graph, (x[:2],), str(path), dynamo=True, opset_version=OPSET,
                              input_names=["image"], output_names=list(OUTPUTS),
                              dynamic_shapes=({0: batch},), verbose=False, external_data=False)
    except Exception as e:
        path.unlink(missing_ok=True)
        raise BundleError(f"ONNX export of {model.name} failed ({type(e).__name__}: "
                          f"{_first_line(e)}); export without --onnx") from None
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(list(OUTPUTS), {"image": x.numpy()})
    with torch.no_grad():
        want = model.predict(x)
    diffs = {k: float(np.max(np.abs(g - w.numpy()))) for k, g, w in zip(OUTPUTS, got, want, strict=True)}
    if not all(d <= TOLERANCE for d in diffs.values()):
        path.unlink(missing_ok=True)
        raise BundleError(f"ONNX graph of {model.name} disagrees with PyTorch by more than "
                          f"{TOLERANCE:g}: {diffs}; the file was not kept")
    return {"file": path.name, "opset": OPSET, "inputs": {"image": ["batch", 1, image_size, image_size]},
            "outputs": {"reconstruction": ["batch", 1, image_size, image_size],
                        "anomaly_map": ["batch", 1, image_size, image_size], "score": ["batch"]},
            "max_abs_diff": diffs, "checked_on": f"{len(x)} images",
            "tolerance": TOLERANCE}
