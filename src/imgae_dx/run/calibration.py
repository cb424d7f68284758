"""Calibration: a model's score distribution on normal validation images, and what follows from it.

Contract (``RUN_DIR/checkpoints/MODEL/calibration.json`` and ``BUNDLE_DIR/MODEL/calibration.json``,
JSON, ``format = "imgae_dx.calibration/1"``)::

    {"format": …, "model": "unet", "image_size": 128, "scores": [sorted floats],
     "map_vmax": float, "anomaly": {map, score, topk_percent, …, inference_samples (U-Net, RA)},
     "source": {"checkpoint": "checkpoints/unet/best.pt", "step": int, "stages": [...],
                "split": "val", "view": "PA"},
     "package_version": …, "created_at": …}

* ``scores`` are the image scores that the checkpoint named in ``source`` gives the **normal
  validation images** (patient-disjoint from training and test) — never a test image.
* ``percentile(s)`` = 100 × share of those scores ≤ s (0–100).
* ``threshold(spec)`` = the smallest calibration score t with share(scores ≤ t) ≥ spec (the
  ``spec``-quantile, inverted-CDF definition); an image is **flagged** when its score > t, so the
  calibration images themselves are flagged at a rate ≤ 1 − spec.
* ``map_vmax`` is the top of the model's heat-map colour scale: the 99.9th percentile of the
  anomaly-map values of those images (a seeded sample of at most :data:`PIXELS_PER_IMAGE` pixels
  per image). Every overlay of a model uses the same scale, so heat-maps compare across images.

Written by the trainer at the end of training (:func:`calibrate` over the cached validation
batches, then :meth:`Calibration.save`) or, for runs without it, by
:func:`imgae_dx.inference.run_calibration.calibrate_run`.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgae_dx.errors import UserError


class CalibrationError(UserError):
    """A calibration file is missing, unreadable, of another format or for other weights."""


FORMAT = "imgae_dx.calibration/1"
FILE_NAME = "calibration.json"
DEFAULT_SPECIFICITY = 0.95
#: Pixels sampled per image for the colour scale (bounded memory whatever the image count).
PIXELS_PER_IMAGE = 4096
MAP_VMAX_QUANTILE = 0.999


@dataclass(frozen=True)
class CalibrationSource:
    """Where the calibration scores came from.

    Attributes:
        checkpoint: the checkpoint file, relative to the run folder (``checkpoints/unet/best.pt``).
        step: the checkpoint's training step (a later ``best.pt`` makes this calibration stale).
        stages: the stages whose validation split was scored.
        split: always ``val`` (the normal validation images).
        view: the view cohort (``PA``, ``AP``, ``all``).
    """

    checkpoint: str
    step: int
    stages: tuple[str, ...] = ()
    split: str = "val"
    view: str = ""

    @classmethod
    def of(cls, value: CalibrationSource | Mapping[str, Any]) -> CalibrationSource:
        if isinstance(value, CalibrationSource):
            return value
        try:
            return cls(checkpoint=str(value["checkpoint"]), step=int(value["step"]),
                       stages=tuple(str(s) for s in value.get("stages", ())),
                       split=str(value.get("split", "val")), view=str(value.get("view", "")))
        except (KeyError, TypeError, ValueError) as e:
            raise CalibrationError(f"calibration source needs checkpoint and step ({e})") from None


@dataclass(frozen=True)
class Calibration:
    """Sorted normal validation scores of one model's checkpoint (see the module doc).

    Attributes:
        model: ``unet`` | ``ra`` | ``ae``.
        scores: float64, ascending, N ≥ 1.
        map_vmax: top of the heat-map colour scale (> 0).
        anomaly: the scoring the scores were computed with (:func:`model_scoring`).
        image_size: model resolution in pixels.
        source: which checkpoint and images.
    """

    model: str
    scores: np.ndarray
    map_vmax: float
    anomaly: dict[str, Any]
    image_size: int
    source: CalibrationSource
    package_version: str = ""
    created_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = np.sort(np.asarray(self.scores, dtype=np.float64).ravel())
        if s.size == 0:
            raise CalibrationError(f"calibration of {self.model} holds no scores")
        if not np.all(np.isfinite(s)):
            raise CalibrationError(f"calibration of {self.model} holds non-finite scores")
        vmax = self.map_vmax
        if isinstance(vmax, bool) or not isinstance(vmax, (int, float)) or not math.isfinite(vmax) \
                or vmax <= 0:
            raise CalibrationError(f"calibration of {self.model}: map_vmax must be a positive number "
                                   f"(the top of the heat-map scale), got {vmax!r}")
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 1:
            raise CalibrationError(f"calibration of {self.model}: image_size must be a positive "
                                   f"integer, got {self.image_size!r}")
        object.__setattr__(self, "scores", s)

    @property
    def n(self) -> int:
        """Number of normal validation images."""
        return int(self.scores.size)

    def percentile(self, score: float | np.ndarray) -> float | np.ndarray:
        """100 × share of calibration scores ≤ ``score`` (scalar or array; NaN stays NaN)."""
        a = np.asarray(score, dtype=np.float64)
        out = 100.0 * np.searchsorted(self.scores, a, side="right") / self.n
        out = np.where(np.isfinite(a), out, np.nan)
        return float(out) if out.ndim == 0 else out

    def threshold(self, specificity: float = DEFAULT_SPECIFICITY) -> float:
        """Score above which an image is flagged, for a target specificity in (0, 1)."""
        check_specificity(specificity)
        k = min(self.n - 1, max(0, math.ceil(specificity * self.n - 1e-9) - 1))
        return float(self.scores[k])

    def flagged(self, score: float | np.ndarray, specificity: float = DEFAULT_SPECIFICITY
                ) -> bool | np.ndarray:
        """score > :meth:`threshold` (False for a NaN score)."""
        out = np.asarray(score, dtype=np.float64) > self.threshold(specificity)
        return bool(out) if out.ndim == 0 else out

    def enough_for(self, specificity: float) -> bool:
        """Whether N normals can resolve the target (N ≥ 1 / (1 − specificity))."""
        return self.n >= math.ceil(1.0 / (1.0 - specificity) - 1e-9)

    def matches(self, anomaly: Mapping[str, Any], image_size: int, step: int | None = None) -> str | None:
        """Why this calibration does not belong to a model with these settings (None: it does)."""
        if not same_scoring(anomaly, self.anomaly):
            return "the anomaly map/score settings differ"
        if int(image_size) != self.image_size:
            return f"it was computed at {self.image_size}px, the model runs at {image_size}px"
        if step is not None and int(step) != self.source.step:
            return f"it was computed for step {self.source.step}, the checkpoint is step {step}"
        return None

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "model": self.model, "image_size": self.image_size,
            "n_images": self.n, "map_vmax": self.map_vmax, "anomaly": self.anomaly,
            "source": {**asdict(self.source), "stages": list(self.source.stages)},
            "package_version": self.package_version, "created_at": self.created_at,
            "extra": self.extra, "scores": [float(v) for v in self.scores],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str = "calibration") -> Calibration:
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            got = d.get("format") if isinstance(d, Mapping) else type(d).__name__
            raise CalibrationError(f"{where} is not an imgae-dx calibration ({FORMAT}; found {got!r})")
        try:
            for key, kinds in (("model", str), ("scores", list), ("map_vmax", (int, float)),
                               ("image_size", int), ("anomaly", Mapping), ("source", Mapping)):
                if isinstance(d[key], bool) or not isinstance(d[key], kinds):
                    raise TypeError(f"{key} is {type(d[key]).__name__} {str(d[key])[:40]!r}")
            return cls(model=d["model"], scores=np.asarray(d["scores"], dtype=np.float64),
                       map_vmax=float(d["map_vmax"]), anomaly=dict(d["anomaly"]),
                       image_size=d["image_size"], source=CalibrationSource.of(d["source"]),
                       package_version=str(d.get("package_version", "")),
                       created_at=str(d.get("created_at", "")), extra=dict(d.get("extra") or {}))
        except (KeyError, TypeError, ValueError) as e:
            raise CalibrationError(f"{where} is damaged ({type(e).__name__}: {e})") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON file atomically; returns its path."""
        from imgae_dx.utils.atomic import atomic_write_text

        return atomic_write_text(Path(path), json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Calibration:
        """Read a calibration file (:class:`CalibrationError` when missing or damaged)."""
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except FileNotFoundError:
            raise CalibrationError(f"{p} does not exist") from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CalibrationError(f"{p} cannot be read as JSON ({e})") from None
        return cls.from_json(d, str(p))


#: model settings outside ``anomaly`` that change the scores (U-Net, RA), with the value that
#: means "reconstruct x itself" (calibrations written before they were recorded)
INFERENCE_KEYS: dict[str, Any] = {"inference_samples": 0}


def model_scoring(model_cfg: Any) -> dict[str, Any]:
    """What a model's scores depend on besides its weights: its ``anomaly`` settings plus the
    :data:`INFERENCE_KEYS` its config has."""
    d = model_cfg.anomaly.model_dump(mode="json")
    d.update({k: getattr(model_cfg, k) for k in INFERENCE_KEYS if hasattr(model_cfg, k)})
    return d


def same_scoring(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two scorings (:func:`model_scoring`) score alike: each is completed with the
    defaults of the installed version first, so a calibration written before a setting existed
    still matches a model that leaves it at its default."""
    return _completed(a) == _completed(b)


def _completed(scoring: Mapping[str, Any]) -> dict[str, Any]:
    from imgae_dx.config import AnomalyConfig

    anomaly = {k: v for k, v in scoring.items() if k in AnomalyConfig.model_fields}
    extra = {k: scoring.get(k, v) for k, v in INFERENCE_KEYS.items()}
    if len(anomaly) + len(set(scoring) & set(INFERENCE_KEYS)) != len(scoring):
        return dict(scoring)  # a setting this version does not know: never the same
    try:
        return {**AnomalyConfig.model_validate(anomaly).model_dump(mode="json"), **extra}
    except ValueError:
        return dict(scoring)


def check_specificity(specificity: float) -> float:
    """The target specificity, checked to lie strictly between 0 and 1."""
    s = float(specificity)
    if not 0.0 < s < 1.0:
        raise UserError(f"--specificity must be between 0 and 1 (e.g. 0.95), got {specificity}")
    return s


def calibration_path(run_dir: str | os.PathLike[str], model: str) -> Path:
    """``RUN_DIR/checkpoints/MODEL/calibration.json``."""
    return Path(run_dir) / "checkpoints" / model / FILE_NAME


@torch.no_grad()
def calibrate(model: Any, batches: Iterable[torch.Tensor], *,
              source: CalibrationSource | Mapping[str, Any], seed: int = 0) -> Calibration:
    """Score normal validation batches with ``model.predict`` and build the :class:`Calibration`.

    Args:
        model: a :class:`~imgae_dx.models.ReconstructionModel` in eval mode (any device; batches
            are moved to it).
        batches: float tensors B×1×H×W in [0, 1] of **normal validation** images only.
        source: checkpoint file (run-relative), step, stages, view (:class:`CalibrationSource`
            or a mapping with those keys).
        seed: seed of the pixel sample behind ``map_vmax``.

    Raises:
        CalibrationError: no image was given.
    """
    from imgae_dx import __version__

    src = CalibrationSource.of(source)
    device = model.device
    gen = np.random.default_rng(seed)
    scores: list[np.ndarray] = []
    pixels: list[np.ndarray] = []
    for x in batches:
        pred = model.predict(x.to(device))
        scores.append(pred.score.float().cpu().numpy().astype(np.float64))
        flat = pred.anomaly_map.float().flatten(1).cpu().numpy()
        k = min(PIXELS_PER_IMAGE, flat.shape[1])
        for row in flat:
            pixels.append(row[gen.choice(row.size, k, replace=False)] if k < row.size else row)
    if not scores:
        raise CalibrationError(f"no validation image to calibrate {model.name} with "
                               f"(stages {', '.join(src.stages) or '?'}, view {src.view or '?'})")
    vmax = float(np.quantile(np.concatenate(pixels), MAP_VMAX_QUANTILE))
    return Calibration(
        model=model.name, scores=np.concatenate(scores), map_vmax=vmax if vmax > 0 else 1e-6,
        anomaly=model_scoring(model.cfg), image_size=int(model.image_size),
        source=src, package_version=__version__, created_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
