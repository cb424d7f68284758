"""``imgae-dx export``: a run folder's models → a bundle of safetensors + JSON (+ ONNX).

Bundle layout (the contract; read back by :func:`imgae_dx.inference.loading.load_bundle_models`)::

    BUNDLE_DIR/MODEL/model.safetensors   the state dict (safetensors: no pickle)
    BUNDLE_DIR/MODEL/config.json         format "imgae_dx.bundle/1", model, image_size,
                                         architecture (the model's config section), preprocessing,
                                         anomaly (map and score), checkpoint facts, source, view,
                                         weights (file, sha256, parameters), onnx (or null),
                                         package_version
    BUNDLE_DIR/MODEL/calibration.json    :mod:`imgae_dx.run.calibration`
    BUNDLE_DIR/MODEL/MODEL_CARD.md       :mod:`imgae_dx.inference.model_card`
    BUNDLE_DIR/MODEL/model.onnx          with ``--onnx`` (:mod:`imgae_dx.inference.onnx_export`)

The checkpoint is ``best.pt`` (else ``last.pt``) and the calibration that of the run (computed
from its validation split when missing). ``BUNDLE_DIR`` must be new, empty, or a previous bundle
(whose model folders are then replaced); every file is written atomically.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imgae_dx.inference.errors import BundleError
from imgae_dx.inference.images import MAX_SIDE
from imgae_dx.inference.loading import (
    BUNDLE_FORMAT,
    CONFIG_NAME,
    WEIGHTS_NAME,
    LoadedModel,
    is_bundle_model_dir,
    load_run_models,
)
from imgae_dx.utils.atomic import atomic_open, atomic_write_text
from imgae_dx.utils.hashing import file_sha256

PREPROCESSING: dict[str, Any] = {
    "color": "grayscale: RGB/RGBA/palette → luminance (OpenCV BGR2GRAY), alpha ignored; 16-bit / 257",
    "png": "imgae_dx.data.decode.decode_png (the training pipeline's decode)",
    "jpeg": "OpenCV decode → grayscale as above",
    "dicom": "pydicom: modality LUT, then VOI LUT or window (else min–max of the image's values), "
             "MONOCHROME1 inverted, → uint8",
    "resize": "area averaging (cv2.INTER_AREA) to image_size × image_size; aspect ratio not kept",
    "dtype": "uint8",
    "input": "float32 = uint8 / 255, shape B × 1 × image_size × image_size",
    "max_side": MAX_SIDE,
}


def prepare_bundle_dir(out: Path) -> None:
    """Create ``out``, or accept it empty or holding a previous bundle; refuse anything else."""
    if out.exists() and not out.is_dir():
        raise BundleError(f"--out {out} is a file; choose a folder for the bundle")
    if out.is_dir():
        foreign = [p.name for p in out.iterdir() if not (p.is_dir() and is_bundle_model_dir(p))
                   and not (p.name.startswith(".") and p.name.endswith(".partial"))]  # a killed export
        if foreign:
            raise BundleError(f"--out {out} is not empty and not a bundle ({', '.join(sorted(foreign)[:5])}); "
                              "choose a new folder (nothing was touched)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BundleError(f"--out {out} cannot be created: {e.strerror or e}") from None


def bundle_config(m: LoadedModel) -> dict[str, Any]:
    """config.json of one model (without the ``weights``/``onnx`` entries, added when written)."""
    from imgae_dx import __version__

    keys = ("checkpoint", "step", "stage", "stage_k", "stages", "images_seen", "val_loss", "precision",
            "package_version", "fingerprint")
    return {
        "format": BUNDLE_FORMAT, "model": m.name, "image_size": m.image_size,
        "architecture": m.model.cfg.model_dump(mode="json"),
        "anomaly": m.model.cfg.anomaly.model_dump(mode="json"),
        "score_direction": "higher = more anomalous",
        "preprocessing": {**PREPROCESSING, "normalise": {
            **m.model.cfg.input.model_dump(mode="json"),
            "applied_by": "the model's predict, after the input above "
                          "(imgae_dx.models.input_norm.normalise_input)"}},
        "checkpoint": {k: m.info.get(k) for k in keys},
        "source": m.info.get("source"), "view": m.info.get("view"), "seed": m.info.get("seed"),
        "package_version": __version__,
    }


def _write_weights(model: Any, path: Path) -> dict[str, Any]:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return {"file": path.name, "sha256": file_sha256(path),
            "parameters": int(sum(p.numel() for p in model.parameters())), "bytes": path.stat().st_size}


def export_run(run_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, onnx: bool = False,
               model_name: str = "all", notify: Callable[[str], None] | None = None,
               progress: bool = False) -> dict[str, Path]:
    """Export the run's models to ``out`` (see the module doc); returns model → bundle folder.

    Raises:
        UserError: not a run folder, no checkpoint, ``out`` unusable, ONNX not possible/installed.
    """
    from imgae_dx.inference.model_card import model_card
    from imgae_dx.inference.onnx_export import require_onnx, unsupported_reason

    run_dir, out = Path(run_dir), Path(out).expanduser()
    if onnx:
        require_onnx()  # fail before any work when the optional packages are missing
    models = load_run_models(run_dir, model_name, notify=notify, progress=progress)
    if onnx:
        for m in models:
            why = unsupported_reason(m.model)
            if why:
                raise BundleError(f"{m.name} cannot be exported to ONNX: {why}; export without --onnx")
    prepare_bundle_dir(out)
    metrics_path = run_dir / "eval" / "metrics.json"
    try:
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
    except (OSError, json.JSONDecodeError):
        metrics = None
    written: dict[str, Path] = {}
    for m in models:
        folder = out / m.name
        tmp = out / f".{m.name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        cfg = bundle_config(m)
        cfg["weights"] = _write_weights(m.model, tmp / WEIGHTS_NAME)
        cfg["onnx"] = None
        if onnx:
            from imgae_dx.inference.onnx_export import export_onnx

            cfg["onnx"] = export_onnx(m.model, tmp / "model.onnx", m.image_size)
        m.calibration.save(tmp / "calibration.json")
        atomic_write_text(tmp / "MODEL_CARD.md", model_card(cfg, m.calibration, metrics))
        with atomic_open(tmp / CONFIG_NAME, "w") as f:
            json.dump(cfg, f, indent=1)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        written[m.name] = folder
        if notify:
            size = sum(p.stat().st_size for p in folder.iterdir())
            notify(f"{m.name}: {folder} ({size / 1e6:.2f} MB"
                   + (f"; ONNX max |Δ| vs PyTorch {max(cfg['onnx']['max_abs_diff'].values()):.2g}"
                      if cfg["onnx"] else "") + ")")
    return written
