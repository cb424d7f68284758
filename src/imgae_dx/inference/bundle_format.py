"""The bundle format: one model folder of ``imgae-dx export``, its typed config, its files' readers
and writers, and its checks.

A model folder (``BUNDLE_DIR/MODEL/``) holds :data:`CONFIG_NAME` (a :class:`BundleConfig`),
:data:`WEIGHTS_NAME` (the state dict as safetensors), :data:`CALIBRATION_NAME`
(:mod:`imgae_dx.run.calibration`), :data:`CARD_NAME` and, with ``--onnx``, :data:`ONNX_NAME`.
Every read and write of the config and the weights goes through this module: the writer
(:mod:`imgae_dx.inference.bundle`) builds a :class:`BundleConfig` and calls :func:`write_weights`
and :func:`write_config`; the reader (:mod:`imgae_dx.inference.loading`) finds model folders with
:func:`bundle_model_dirs` and calls :func:`read_config`, :func:`check_weights`,
:func:`read_calibration` and :func:`read_weights`. Both use the same schema: strict types (no
``"64"`` for 64, no NaN for an integer, no list for a mapping), no unknown key, bounded sizes.

A bundle comes from somewhere else and is checked before anything is built from it, in this
order, each failure a one-line :class:`~imgae_dx.inference.errors.BundleError`:

1. :func:`read_config` — ``config.json`` (at most :data:`MAX_CONFIG_BYTES`) against
   :class:`BundleConfig`, the architecture against the model's own config schema;
2. :func:`check_weights` — the safetensors **header only** (no tensor is read): its layout must
   cover the file exactly, hold only float32/int64 tensors and at most :data:`MAX_VALUES` numbers,
   agree with the config's ``weights`` (numbers, bytes), and match, name for name, the shapes and
   dtypes the configured architecture has — derived on PyTorch's ``meta`` device, which allocates
   nothing, so a config asking for a 500-billion-parameter U-Net costs nothing to refuse; then the
   file's SHA-256 must be the config's;
3. :func:`read_calibration` — ``calibration.json`` (at most :data:`MAX_CALIBRATION_BYTES`), of the
   same model, size and scoring.

Only then does the loader read the tensors (:func:`read_weights`) and build the network.

Privacy: ``source`` is the training archive's identity (:func:`source_identity`: a Kaggle slug, a
URL without query or credentials, or a local archive's *file name*, with its size and version —
ETag, or modification time and size), never a local path.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from imgae_dx.inference.errors import BundleError, CalibrationError
from imgae_dx.run.calibration import Calibration, model_scoring
from imgae_dx.run.checkpoint import CheckpointSummary
from imgae_dx.utils.atomic import atomic_write_text
from imgae_dx.utils.hashing import file_sha256

BUNDLE_FORMAT = "imgae_dx.bundle/2"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CALIBRATION_NAME = "calibration.json"
CARD_NAME = "MODEL_CARD.md"
ONNX_NAME = "model.onnx"
#: a config.json is a few kB
MAX_CONFIG_BYTES = 1 << 20
#: ~3 million validation scores; the full NIH validation split has ~3,500 PA normals
MAX_CALIBRATION_BYTES = 64 << 20
#: numbers a bundle's weights may hold (1 GiB of float32): 8× the default U-Net's 31 million
MAX_VALUES = 1 << 28
#: a safetensors header lists names, dtypes, shapes and offsets: kilobytes for these models
MAX_HEADER_BYTES = 16 << 20
#: safetensors dtype → (torch dtype name, bytes per value): what export writes
DTYPES: dict[str, tuple[str, int]] = {"F32": ("float32", 4), "I64": ("int64", 8)}
SCORE_DIRECTION = "higher = more anomalous"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Preprocessing(_Strict):
    """How a file becomes the model input (the training pipeline's; :mod:`~imgae_dx.inference.images`)."""

    resize: Literal["squash", "pad", "crop"] = Field(
        description="the training data.resize policy: squash = area resize of the whole image "
        "(aspect ratio lost), pad = long side to image_size and the short side padded, crop = "
        "centred square then area resize")
    color: str = Field(description="how colour and 16-bit images become 8-bit gray")
    png: str = Field(description="the PNG decode")
    jpeg: str = Field(description="the JPEG decode")
    dicom: str = Field(description="the DICOM decode and value mapping")
    orientation: str = Field(description="EXIF orientation handling")
    dtype: Literal["uint8"] = Field(description="the decoded image's type before scaling")
    input: str = Field(description="the tensor the network receives")
    max_side: int = Field(ge=1, le=1 << 16, description="larger images are refused before decoding")
    normalise: dict[str, Any] = Field(
        default_factory=dict, description="the per-image input normalisation the model applies in "
        "its predict after the steps above (the run's model.<name>.input; "
        "imgae_dx.models.input_norm.normalise_input); empty in bundles exported before it existed")


class CheckpointFacts(_Strict):
    """Which training state the weights are: the bundle's form of a
    :class:`~imgae_dx.run.checkpoint.CheckpointSummary` (:meth:`of`, :meth:`summary`)."""

    checkpoint: str = Field(description="the checkpoint file, relative to the run folder")
    step: int = Field(ge=0, description="optimisation steps done")
    stage: str | None = None
    stage_k: int | None = None
    stages: list[str] = Field(default_factory=list, description="the run's stages in order")
    images_seen: int | None = None
    val_loss: float | None = Field(None, description="loss of these weights on validation normals")
    precision: str | None = None
    package_version: str | None = Field(None, description="imgae-dx version that trained them")
    fingerprint: str | None = Field(None, description="SHA-256 of the run-defining configuration")

    @classmethod
    def of(cls, s: CheckpointSummary) -> CheckpointFacts:
        return cls(checkpoint=s.file, step=s.step, stage=s.stage, stage_k=s.stage_k, stages=list(s.stages),
                   images_seen=s.images_seen, val_loss=s.val_loss, precision=s.precision,
                   package_version=s.package_version, fingerprint=s.fingerprint)

    def summary(self) -> CheckpointSummary:
        return CheckpointSummary(file=self.checkpoint, step=self.step, stage=self.stage, stage_k=self.stage_k,
                                 stages=list(self.stages), images_seen=self.images_seen,
                                 val_loss=self.val_loss, precision=self.precision,
                                 package_version=self.package_version, fingerprint=self.fingerprint)


class SourceIdentity(_Strict):
    """The training archive, without local paths (see the module doc)."""

    kind: Literal["kaggle", "url", "file", "folder", "other"]
    name: str = Field(description="Kaggle slug, URL without query, or the archive's file/folder name")
    size: int | None = Field(None, ge=0, description="archive bytes")
    version: str | None = Field(None, description="ETag, Last-Modified, folder digest, or mtime+size")


class WeightsInfo(_Strict):
    """``model.safetensors``: what the header must show (checked before loading)."""

    file: Literal["model.safetensors"]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    values: int = Field(ge=1, le=MAX_VALUES, description="numbers stored: parameters and buffers")
    bytes: int = Field(ge=1)


class OnnxInfo(_Strict):
    """``model.onnx`` and its parity check against PyTorch."""

    file: Literal["model.onnx"]
    opset: int
    inputs: dict[str, list[str | int]]
    outputs: dict[str, list[str | int]]
    max_abs_diff: dict[str, float]
    checked_on: str
    tolerance: float


class BundleConfig(_Strict):
    """``BUNDLE_DIR/MODEL/config.json`` (format :data:`BUNDLE_FORMAT`)."""

    format: Literal["imgae_dx.bundle/2"]
    model: Literal["unet", "ra", "ae", "pca"]
    image_size: int = Field(ge=16, le=1024, description="model resolution (as data.image_size)")
    architecture: dict[str, Any] = Field(description="the model's config section (model.MODEL)")
    anomaly: dict[str, Any] = Field(description="anomaly map and score (= architecture.anomaly)")
    score_direction: Literal["higher = more anomalous"]
    preprocessing: Preprocessing
    checkpoint: CheckpointFacts
    source: SourceIdentity
    dataset: Literal["nih", "zhanglab", "rsna", "folder"] = Field(
        "nih", description="the training data's layout and protocol (data.dataset); bundles written "
                           "before the field existed were NIH")
    view: Literal["PA", "AP", "all"] = Field(description="the view cohort trained on; all for a dataset "
                                                         "without view positions")
    seed: int | None = None
    package_version: str
    weights: WeightsInfo
    onnx: OnnxInfo | None = None
    _model_cfg: Any = PrivateAttr(None)

    @model_validator(mode="after")
    def _architecture(self) -> BundleConfig:
        from imgae_dx.config import ConfigError
        from imgae_dx.models import model_config

        try:
            cfg = model_config(self.model, self.architecture)
        except ConfigError as e:  # "invalid configuration (model.unet):\n  model.unet.KEY: …"
            problems = str(e).splitlines()[1:] or [str(e)]
            raise ValueError("; ".join(line.strip().replace(f"model.{self.model}.", "architecture.", 1)
                                       for line in problems)) from None
        if cfg.anomaly.model_dump(mode="json") != self.anomaly:
            raise ValueError("anomaly differs from architecture.anomaly")
        self._model_cfg = cfg
        return self

    @property
    def model_cfg(self) -> Any:
        """The validated config of the model (``UNetConfig`` … ``PCAConfig``)."""
        return self._model_cfg


def is_bundle_model_dir(p: Path) -> bool:
    """Whether ``p`` is one model folder of a bundle (it holds a config and weights)."""
    return (p / CONFIG_NAME).is_file() and (p / WEIGHTS_NAME).is_file()


def bundle_model_dirs(bundle: Path) -> dict[str, Path]:
    """Model name → folder, for a bundle folder or one of its model folders ({} for neither)."""
    if is_bundle_model_dir(bundle):
        return {read_config(bundle).model: bundle}
    if not bundle.is_dir():
        return {}
    return {d.name: d for d in sorted(bundle.iterdir()) if d.is_dir() and is_bundle_model_dir(d)}


def write_config(folder: Path, cfg: BundleConfig) -> None:
    """``folder/config.json`` (atomically); the writer calls it last, so a folder with a config is
    complete."""
    atomic_write_text(folder / CONFIG_NAME, cfg.model_dump_json(indent=1))


def write_weights(model: Any, folder: Path) -> tuple[int, int]:
    """``folder/model.safetensors``: the model's state dict (tensors on the CPU, contiguous),
    written to a temporary name and renamed; returns (numbers stored, file bytes)."""
    from safetensors.torch import save_file

    path = folder / WEIGHTS_NAME
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return sum(v.numel() for v in state.values()), path.stat().st_size


def read_weights(folder: Path) -> dict[str, Any]:
    """The tensors of ``folder/model.safetensors`` on the CPU (no pickle); call
    :func:`check_weights` first. BundleError when the file cannot be read."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / WEIGHTS_NAME
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise BundleError(f"{path} is damaged ({e})") from None


def _error_line(err: ValidationError) -> str:
    """The first problem of a validation error on one line (and how many more there are)."""
    errors = err.errors()
    e = errors[0]
    key = ".".join(str(p) for p in e["loc"]) or "<root>"
    if e["type"] == "missing":
        what = f"{key} is missing"
    elif e["type"] == "extra_forbidden":
        what = f"{key} is not a known key"
    elif e["type"] == "value_error" and not e["loc"]:  # a check of the whole config
        what = str(e["msg"]).removeprefix("Value error, ")
    else:
        got = repr(e.get("input"))
        what = f"{key}: got {got if len(got) <= 60 else got[:57] + '...'} — {e['msg']}"
    more = f" (and {len(errors) - 1} more problem{'s' * (len(errors) > 2)})" if len(errors) > 1 else ""
    return what + more


def _read_capped(path: Path, limit: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise BundleError(f"{path} is {size / 2**20:.1f} MB, more than the {limit / 2**20:.0f} MB "
                              "a bundle file of this kind may have: it is not an imgae-dx bundle file")
        with path.open("rb") as f:
            return f.read(limit + 1)[:limit]
    except FileNotFoundError:
        raise BundleError(f"{path} does not exist: the bundle is incomplete; export it again") from None
    except OSError as e:
        raise BundleError(f"{path} cannot be read ({e.strerror or e})") from None


def read_config(folder: Path) -> BundleConfig:
    """``folder/config.json`` as a :class:`BundleConfig` (BundleError naming the first problem)."""
    p = folder / CONFIG_NAME
    try:
        raw = json.loads(_read_capped(p, MAX_CONFIG_BYTES))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{p} cannot be read as JSON ({e})") from None
    if not isinstance(raw, dict) or not str(raw.get("format", "")).startswith("imgae_dx.bundle/"):
        raise BundleError(f"{p} is not an imgae-dx bundle config (format {BUNDLE_FORMAT} expected)")
    if raw["format"] != BUNDLE_FORMAT:
        raise BundleError(f"{p} is of format {raw['format']!r}; this version reads {BUNDLE_FORMAT!r}: "
                          "export the run again (`imgae-dx export --run RUN_DIR --out BUNDLE_DIR`)")
    try:
        return BundleConfig.model_validate(raw)
    except ValidationError as e:
        raise BundleError(f"{p} is not a valid bundle config: {_error_line(e)}; the bundle is damaged "
                          "or was edited — export it again") from None


def safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{tensor name: (dtype, shape)}`` from a safetensors file's header, without reading any
    tensor; the header must describe the file exactly (BundleError otherwise)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise BundleError(f"{path} is damaged (shorter than a safetensors header)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise BundleError(f"{path} is damaged (its header claims {n} bytes)")
            header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BundleError(f"{path} is damaged (its header is not JSON)") from None
    except FileNotFoundError:
        raise BundleError(f"{path} does not exist: the bundle is incomplete; export it again") from None
    except OSError as e:
        raise BundleError(f"{path} cannot be read ({e.strerror or e})") from None
    if not isinstance(header, dict):
        raise BundleError(f"{path} is damaged (its header is not a mapping)")
    header.pop("__metadata__", None)
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    spans = []
    values = 0
    for name, t in header.items():
        ok = (isinstance(t, dict) and t.get("dtype") in DTYPES and isinstance(t.get("shape"), list)
              and all(isinstance(d, int) and d >= 0 for d in t["shape"])
              and isinstance(t.get("data_offsets"), list) and len(t["data_offsets"]) == 2
              and all(isinstance(o, int) and o >= 0 for o in t["data_offsets"]))
        if not ok:
            raise BundleError(f"{path} is damaged or not written by imgae-dx export (tensor {name!r}: "
                              f"dtype must be one of {', '.join(DTYPES)}, with a shape and offsets)")
        count = math.prod(t["shape"])
        values += count
        start, end = t["data_offsets"]
        if end - start != count * DTYPES[t["dtype"]][1]:
            raise BundleError(f"{path} is damaged (tensor {name!r}: its bytes do not match its shape)")
        spans.append((start, end))
        out[name] = (DTYPES[t["dtype"]][0], tuple(t["shape"]))
    if values > MAX_VALUES:
        raise BundleError(f"{path} holds {values:,} numbers, more than the {MAX_VALUES:,} a bundle may "
                          "hold: refused before loading")
    pos = 0
    for start, end in sorted(spans):
        if start != pos:
            raise BundleError(f"{path} is damaged (its tensors do not tile the data)")
        pos = end
    if 8 + n + pos != size:
        raise BundleError(f"{path} is damaged ({size} bytes; its header describes {8 + n + pos})")
    return out


def expected_tensors(cfg: BundleConfig) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{name: (dtype, shape)}`` of the state dict the configured model has, derived on the
    ``meta`` device (no memory is allocated, whatever size the config asks for)."""
    import torch

    from imgae_dx.config import ConfigError
    from imgae_dx.models import create_model

    try:
        with torch.device("meta"):
            model = create_model(cfg.model, cfg.image_size, cfg.model_cfg)
    except ConfigError as e:
        raise BundleError(f"config.json describes no buildable model: {' '.join(str(e).split())}") from None
    return {k: (str(v.dtype).removeprefix("torch."), tuple(v.shape))
            for k, v in model.state_dict().items()}


def check_weights(cfg: BundleConfig, folder: Path) -> None:
    """The weights file against the config (module doc, step 2), before any tensor is read."""
    path = folder / WEIGHTS_NAME
    header = safetensors_header(path)
    values = sum(math.prod(shape) for _, shape in header.values())
    size = path.stat().st_size
    if values != cfg.weights.values or size != cfg.weights.bytes:
        raise BundleError(f"{path} holds {values:,} numbers in {size:,} bytes; config.json says "
                          f"{cfg.weights.values:,} in {cfg.weights.bytes:,}: the bundle is damaged or "
                          "was edited — export it again")
    want = expected_tensors(cfg)
    if want != header:
        n_want = sum(math.prod(s) for _, s in want.values())
        differ = sorted(set(want) ^ set(header)) or sorted(k for k in want if want[k] != header[k])
        raise BundleError(f"config.json of {folder} describes a {cfg.model} of {n_want:,} numbers "
                          f"that does not fit {WEIGHTS_NAME} ({values:,} numbers; first difference: "
                          f"{differ[0]!r}): the bundle is damaged or was edited — export it again")
    if file_sha256(path) != cfg.weights.sha256:
        raise BundleError(f"{path} does not have the SHA-256 that config.json records: the weights "
                          "were changed — export the bundle again")


def read_calibration(folder: Path, cfg: BundleConfig) -> Calibration:
    """``folder/calibration.json``, checked to belong to the configured model (module doc)."""
    p = folder / CALIBRATION_NAME
    try:
        raw = json.loads(_read_capped(p, MAX_CALIBRATION_BYTES))
        cal = Calibration.from_json(raw, str(p))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{p} cannot be read as JSON ({e})") from None
    except CalibrationError as e:
        raise BundleError(f"bundle model {folder} has no usable calibration: {e}") from None
    if cal.model != cfg.model:
        raise BundleError(f"{p} is the calibration of {cal.model!r}, not of {cfg.model!r}")
    why = cal.matches(model_scoring(cfg.model_cfg), cfg.image_size)
    if why is not None:
        raise BundleError(f"{p} does not belong to its model ({why})")
    return cal


def source_identity(identity: str, *, size: int | None = None, version: str | None = None
                    ) -> SourceIdentity:
    """A source's secret-free identity (``ArchiveRef.identity`` or the run's ``source``) without
    local paths: ``file:/home/me/data.zip`` → ``file`` ``data.zip``."""
    from imgae_dx.streaming.range_reader import redact_url

    s = identity.strip()
    low = s.lower()
    if low.startswith(("http://", "https://")):
        return SourceIdentity(kind="url", name=redact_url(s), size=size, version=version)
    if low.startswith("kaggle"):
        return SourceIdentity(kind="kaggle", name=s, size=size, version=version)
    for prefix, kind in (("file:", "file"), ("folder:", "folder")):
        if s.startswith(prefix):
            return SourceIdentity(kind=kind, name=_base(s[len(prefix):]), size=size, version=version)
    if "/" in s or "\\" in s or s.endswith(".zip") or os.path.exists(s):  # a local path as given
        kind = "file" if s.lower().endswith(".zip") else "folder"
        return SourceIdentity(kind=kind, name=_base(s), size=size, version=version)
    return SourceIdentity(kind="other", name=s, size=size, version=version)


def _base(path: str) -> str:
    return Path(path.rstrip("/\\").replace("\\", "/")).name or "archive"
