"""``imgae-dx export``: a run folder's models → a bundle of safetensors + JSON (+ ONNX).

Bundle layout (the contract, and the reading and writing of its files:
:mod:`imgae_dx.inference.bundle_format`; read back by
:func:`imgae_dx.inference.loading.load_bundle_models`)::

    BUNDLE_DIR/MODEL/model.safetensors   the state dict (safetensors: no pickle); the PCA
                                         baseline's mean, components and k
    BUNDLE_DIR/MODEL/config.json         a BundleConfig: format "imgae_dx.bundle/2", model,
                                         image_size, architecture (the model's config section),
                                         anomaly (map and score), preprocessing (with the training
                                         resize rule), checkpoint facts, source (the archive's
                                         identity: name, size, version — no local path), view,
                                         weights (file, sha256, values, bytes), onnx (or null),
                                         package_version
    BUNDLE_DIR/MODEL/calibration.json    :mod:`imgae_dx.run.calibration`
    BUNDLE_DIR/MODEL/MODEL_CARD.md       :mod:`imgae_dx.inference.model_card`
    BUNDLE_DIR/MODEL/model.onnx          with ``--onnx`` (:mod:`imgae_dx.inference.onnx_export`)

Every model of the run is exported (or the one ``model_name`` names), the PCA baseline included.
The checkpoint is ``best.pt`` (else ``last.pt``) and the calibration that of the run (computed
from its validation split when missing). ``BUNDLE_DIR`` must be new, empty, or a previous bundle
(whose model folders are then replaced). Each model is written into ``BUNDLE_DIR/.MODEL.partial``
and renamed into place when complete; a failure removes the partial folder (models already
written stay, complete).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imgae_dx.data.decode import Resize
from imgae_dx.errors import RunFolderError
from imgae_dx.evaluation.results import Evaluation, read_evaluation
from imgae_dx.inference.bundle_format import (
    BUNDLE_FORMAT,
    CALIBRATION_NAME,
    CARD_NAME,
    ONNX_NAME,
    SCORE_DIRECTION,
    WEIGHTS_NAME,
    BundleConfig,
    CheckpointFacts,
    OnnxInfo,
    Preprocessing,
    WeightsInfo,
    file_sha256,
    is_bundle_model_dir,
    safetensors_header,
    source_identity,
    write_config,
    write_weights,
)
from imgae_dx.inference.errors import BundleError
from imgae_dx.inference.images import MAX_SIDE
from imgae_dx.inference.loading import LoadedModel, load_run_models
from imgae_dx.utils.atomic import atomic_write_text


def preprocessing(resize: Resize, normalise: dict[str, Any]) -> Preprocessing:
    """What ``predict`` does to a file before this model scores it (:mod:`~imgae_dx.inference.images`;
    ``normalise``: the model's own input normalisation, ``model.<name>.input``)."""
    return Preprocessing(
        resize=resize,
        color="grayscale: RGB/RGBA/palette → luminance (OpenCV BGR2GRAY), alpha ignored; 16-bit / 257",
        png="imgae_dx.data.decode.decode_gray (the training pipeline's decode)",
        jpeg="imgae_dx.data.jpeg: libjpeg-turbo to one gray channel (the JFIF luminance)",
        dicom="imgae_dx.data.dicom: modality LUT, then VOI LUT or window (else 8-bit data as "
              "stored, deeper data min–max of the image's values), MONOCHROME1 inverted, → uint8",
        orientation="EXIF orientation of JPEG files applied, as in training",
        dtype="uint8",
        input="float32 = uint8 / 255, shape B × 1 × image_size × image_size",
        max_side=MAX_SIDE,
        normalise=normalise,
    )


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


def _source(m: LoadedModel) -> Any:
    ref = m.archive
    if ref is not None:
        return source_identity(ref.identity, size=ref.size, version=ref.version)
    return source_identity(m.source or "unknown")


def _write_model(m: LoadedModel, tmp: Path, onnx: bool, metrics: Evaluation | None) -> BundleConfig:
    """One model's folder (``tmp``): weights, ONNX, calibration, card, config — config last."""
    from imgae_dx import __version__
    from imgae_dx.inference.model_card import model_card

    values, size = write_weights(m.model, tmp)
    safetensors_header(tmp / WEIGHTS_NAME)  # what a reader will check, checked on the way out
    onnx_info = None
    if onnx:
        from imgae_dx.inference.onnx_export import export_onnx

        onnx_info = OnnxInfo(**export_onnx(m.model, tmp / ONNX_NAME, m.image_size))
    cfg = BundleConfig(
        format=BUNDLE_FORMAT, model=m.name, image_size=m.image_size,
        architecture=m.model.cfg.model_dump(mode="json"),
        anomaly=m.model.cfg.anomaly.model_dump(mode="json"),
        score_direction=SCORE_DIRECTION, preprocessing=preprocessing(m.resize, m.model.cfg.input.model_dump(mode="json")),
        checkpoint=CheckpointFacts.of(m.checkpoint),
        source=_source(m), dataset=m.dataset, view=m.view or "all", seed=m.seed,
        package_version=__version__,
        weights=WeightsInfo(file=WEIGHTS_NAME, sha256=file_sha256(tmp / WEIGHTS_NAME), values=values,
                            bytes=size),
        onnx=onnx_info,
    )
    m.calibration.save(tmp / CALIBRATION_NAME)
    atomic_write_text(tmp / CARD_NAME, model_card(cfg, m.calibration, metrics))
    write_config(tmp, cfg)
    return cfg


def export_run(run_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, onnx: bool = False,
               model_name: str = "all", notify: Callable[[str], None] | None = None,
               progress: bool = False) -> dict[str, Path]:
    """Export the run's models to ``out`` (see the module doc); returns model → bundle folder.

    Raises:
        UserError: not a run folder, no checkpoint, ``out`` unusable, ONNX not possible/installed.
    """
    from imgae_dx.inference.onnx_export import require_onnx, unsupported_reason

    run_dir, out = Path(run_dir), Path(out).expanduser()
    if onnx:
        require_onnx()  # fail before any work when the optional packages are missing
    models = load_run_models(run_dir, model_name, notify=notify, progress=progress)
    if onnx:
        for m in models:
            why = unsupported_reason(m.model)
            if why:
                raise BundleError(f"{m.name} cannot be exported to ONNX: {why}; export without --onnx "
                                  f"(or pick another model with --model-name)")
    prepare_bundle_dir(out)
    try:
        metrics = read_evaluation(run_dir / "eval")
    except RunFolderError as e:  # the bundle does not need it: the card says "not evaluated"
        metrics = None
        if notify:
            notify(f"{e}: the model cards say the run was not evaluated")
    written: dict[str, Path] = {}
    for m in models:
        folder = out / m.name
        tmp = out / f".{m.name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            cfg = _write_model(m, tmp, onnx, metrics)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # only left when writing failed
        written[m.name] = folder
        if notify:
            size = sum(p.stat().st_size for p in folder.iterdir())
            notify(f"{m.name}: {folder} ({size / 1e6:.2f} MB"
                   + (f"; ONNX max |Δ| vs PyTorch {max(cfg.onnx.max_abs_diff.values()):.2g}"
                      if cfg.onnx else "") + ")")
    return written
