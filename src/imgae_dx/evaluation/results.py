"""``eval/metrics.json``: the typed results of one evaluation, their one writer and typed reader.

The evaluator (:class:`~imgae_dx.evaluation.evaluator.CloudEvaluator`) builds an
:class:`Evaluation` and writes it with :func:`write_evaluation`; everything that shows results —
the report and its plots, the seeds summary, ``imgae-dx evaluate``/``demo``, the model card — reads
it with :func:`read_evaluation` and uses attributes, never string keys.

On disk: one JSON object, ``"format": "imgae_dx.evaluation/2"`` (:data:`EVALUATION_FORMAT`) first,
then the fields of :class:`Evaluation` by name (``comparison`` is written too: the first of
``comparisons``, or null). A value that is undefined — an AUROC with one class absent, an interval
without bootstrap — is ``null`` on disk and None here; these types never hold NaN.

A file without a ``format`` tag is format 1 (every ``metrics.json`` written before the tag):
:func:`parse_evaluation` maps it onto the same types — ``comparisons`` from a lone
``comparison``, a checkpoint entry without ``file``/``step`` dropped, and what a version did not
write yet (operating point, dataset, protocol, scoring, stream) left None or empty, the dataset
``nih`` (runs before datasets were NIH runs). A file of any other format is refused.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from imgae_dx.errors import RunFolderError
from imgae_dx.evaluation.metrics import CURVE_METRICS
from imgae_dx.evaluation.published import PublishedFigure, published_for
from imgae_dx.run.checkpoint import CheckpointSummary
from imgae_dx.utils.atomic import atomic_write_text

EVALUATION_FORMAT = "imgae_dx.evaluation/2"
_FORMAT_PREFIX = "imgae_dx.evaluation/"
METRICS_FILE = "metrics.json"

#: a 95 % interval (lower, upper); (None, None) when undefined
Interval = tuple[float | None, float | None]
NO_INTERVAL: Interval = (None, None)

_OMIT_NONE = {"omit_none": True}  # field metadata: not written when None


def finite(v: Any) -> float | None:
    """``v`` as a float, or None when it is missing or not finite (how results hold "undefined")."""
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def interval(pair: Any) -> Interval:
    """A (lo, hi) pair of :func:`finite` values."""
    lo, hi = pair
    return finite(lo), finite(hi)


# ------------------------------------------------------------------------------ parts
@dataclass(frozen=True)
class Curves:
    """ROC and precision-recall curves on a fixed grid of G points, with patient-bootstrap bands.

    ``grid`` is the false positive rate for ROC and the recall for PR; ``roc_tpr`` (G) the best
    TPR at each FPR, ``pr_precision`` (G) the precision at each recall; ``*_lo``/``*_hi`` (G) the
    95 % band (None everywhere without bootstrap).
    """

    grid: list[float]
    roc_tpr: list[float | None]
    roc_lo: list[float | None]
    roc_hi: list[float | None]
    pr_precision: list[float | None]
    pr_lo: list[float | None]
    pr_hi: list[float | None]

    @property
    def has_roc_band(self) -> bool:
        return all(v is not None for v in self.roc_lo + self.roc_hi)

    @property
    def has_pr_band(self) -> bool:
        return all(v is not None for v in self.pr_lo + self.pr_hi)


@dataclass(frozen=True)
class SubgroupAUROC:
    """AUROC within one group (a finding against the normals, or one view position)."""

    auroc: float | None
    n_pos: int
    n_neg: int


@dataclass(frozen=True)
class FindingLocalisation:
    """Localisation of the boxes of one finding."""

    n_boxes: int
    hit_rate: float | None
    mean_pixel_auroc: float | None


@dataclass(frozen=True)
class Localisation:
    """Anomaly maps against the ground-truth boxes (:mod:`imgae_dx.evaluation.localisation`).

    ``hit_rate``: share of boxes holding at least one of the top anomaly pixels;
    ``mean_hit_chance``: that share for randomly placed top pixels; ``mean_top_share``: share of the
    top pixels inside the box; ``mean_area_share``: the box's share of the image (chance level of
    ``mean_top_share``); ``mean_pixel_auroc``: pixels in vs out of the box.
    """

    n_boxes: int = 0
    n_images: int = 0
    hit_rate: float | None = None
    mean_hit_chance: float | None = None
    mean_top_share: float | None = None
    mean_area_share: float | None = None
    mean_pixel_auroc: float | None = None
    per_finding: dict[str, FindingLocalisation] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        if not self.n_boxes:
            return {"n_boxes": 0, "n_images": self.n_images}
        return _fields_json(self)


@dataclass(frozen=True, kw_only=True)
class OperatingPoint:
    """Test-split specificity/sensitivity at the threshold calibrated on the validation normals
    (:mod:`imgae_dx.evaluation.operating_point`); ``threshold`` None and a ``note`` when there is
    no usable calibration."""

    target_specificity: float
    threshold: float | None
    note: str | None = None
    calibration_images: int | None = None
    calibration_checkpoint: str | None = None
    specificity: float | None = None
    specificity_ci: Interval = NO_INTERVAL
    sensitivity: float | None = None
    sensitivity_ci: Interval = NO_INTERVAL
    n_normal: int | None = None
    n_abnormal: int | None = None
    flagged: int | None = None

    def to_json(self) -> dict[str, Any]:
        if self.threshold is None:
            return {"target_specificity": self.target_specificity, "threshold": None, "note": self.note}
        return {k: v for k, v in _fields_json(self).items() if k != "note"}


@dataclass(frozen=True, kw_only=True)
class ModelResult:
    """One model's results on the test split.

    Attributes:
        auroc, auprc, f1_max, fpr_at_95_tpr, sensitivity_at_90_specificity: the headline metrics
            (:data:`CURVE_METRICS`); ``<metric>_ci`` their patient-bootstrap 95 % intervals.
        auroc_delong_ci: DeLong's 95 % interval of the AUROC (images independent).
        curves: None when one class is absent. per_finding, by_view: AUROC per finding (against
            the normals) and per view position. localisation: against the boxes.
        checkpoint: the weights scored. operating_point: at the calibrated threshold.
    """

    auroc: float | None = None
    auprc: float | None = None
    f1_max: float | None = None
    fpr_at_95_tpr: float | None = None
    sensitivity_at_90_specificity: float | None = None
    auroc_ci: Interval = NO_INTERVAL
    auprc_ci: Interval = NO_INTERVAL
    f1_max_ci: Interval = NO_INTERVAL
    fpr_at_95_tpr_ci: Interval = NO_INTERVAL
    sensitivity_at_90_specificity_ci: Interval = NO_INTERVAL
    auroc_delong_ci: Interval = NO_INTERVAL
    curves: Curves | None = field(default=None, metadata=_OMIT_NONE)
    per_finding: dict[str, SubgroupAUROC] | None = field(default=None, metadata=_OMIT_NONE)
    by_view: dict[str, SubgroupAUROC] | None = field(default=None, metadata=_OMIT_NONE)
    localisation: Localisation | None = field(default=None, metadata=_OMIT_NONE)
    checkpoint: CheckpointSummary | None = field(default=None, metadata=_OMIT_NONE)
    operating_point: OperatingPoint | None = field(default=None, metadata=_OMIT_NONE)

    def value(self, metric: str) -> float | None:
        """A headline metric by name (one of :data:`CURVE_METRICS`)."""
        if metric not in CURVE_METRICS:
            raise KeyError(f"{metric!r} is not one of {CURVE_METRICS}")
        return getattr(self, metric)

    def ci(self, metric: str) -> Interval:
        """The bootstrap interval of a headline metric."""
        self.value(metric)
        return getattr(self, f"{metric}_ci")

    def subgroups(self, kind: str) -> dict[str, SubgroupAUROC]:
        """``per_finding`` or ``by_view`` ({} when not computed)."""
        if kind not in ("per_finding", "by_view"):
            raise KeyError(f"{kind!r}: per_finding or by_view")
        return getattr(self, kind) or {}


@dataclass(frozen=True, kw_only=True)
class Comparison:
    """A paired comparison of two models' AUROC on the same test images: ``diff`` = a − b, its
    patient-bootstrap 95 % interval, DeLong's z and p, and the paired bootstrap's p."""

    a: str
    b: str
    metric: str = "auroc"
    auroc_a: float | None = None
    auroc_b: float | None = None
    diff: float | None = None
    diff_ci: Interval = NO_INTERVAL
    delong_z: float | None = None
    delong_p: float | None = None
    bootstrap_p: float | None = None
    p_value: float | None = None
    test: str | None = None

    def oriented(self, a: str) -> tuple[float | None, Interval]:
        """(diff, interval) as ``a`` − the other model (the sign flipped when ``a`` is ``b``)."""
        if a == self.a:
            return self.diff, self.diff_ci
        lo, hi = self.diff_ci
        flipped = NO_INTERVAL if lo is None or hi is None else (-hi, -lo)
        return (None if self.diff is None else -self.diff), flipped


@dataclass(frozen=True)
class Counts:
    """Test images by label, patients, view and stage; boxes; undecodable images skipped (None:
    not recorded by the version that wrote the file)."""

    images: int | None = field(default=None, metadata=_OMIT_NONE)
    normal: int | None = field(default=None, metadata=_OMIT_NONE)
    abnormal: int | None = field(default=None, metadata=_OMIT_NONE)
    patients: int | None = field(default=None, metadata=_OMIT_NONE)
    by_view: dict[str, int] | None = field(default=None, metadata=_OMIT_NONE)
    by_stage: dict[str, int] | None = field(default=None, metadata=_OMIT_NONE)
    bbox_images: int | None = field(default=None, metadata=_OMIT_NONE)
    bbox_boxes: int | None = field(default=None, metadata=_OMIT_NONE)
    skipped_undecodable: int | None = field(default=None, metadata=_OMIT_NONE)

    def items(self) -> list[tuple[str, int | dict[str, int]]]:
        """The recorded counts, in field order: (name, count or {group: count})."""
        return [(f.name, v) for f in fields(self) if (v := getattr(self, f.name)) is not None]


@dataclass(frozen=True)
class Bootstrap:
    """How the intervals were made: ``resamples`` of ``unit`` (patient | image), ``seed``,
    resamples skipped (one class absent), ``level``."""

    resamples: int
    seed: int
    unit: str = "patient"
    skipped_resamples: int = 0
    level: float = 0.95


@dataclass(frozen=True)
class StreamFacts:
    """The test split's streaming pass: images, bytes, range requests, seconds, peak memory."""

    images: int | None = field(default=None, metadata=_OMIT_NONE)
    bytes_fetched: int | None = field(default=None, metadata=_OMIT_NONE)
    requests: int | None = field(default=None, metadata=_OMIT_NONE)
    seconds: float | None = field(default=None, metadata=_OMIT_NONE)
    peak_rss_mb: float | None = field(default=None, metadata=_OMIT_NONE)


@dataclass(frozen=True)
class TableRow:
    """One row of the comparison table logged to W&B: the model, its checkpoint's stage and
    validation loss, its test AUROC."""

    stage: str | None
    model: str
    auroc: float | None
    auroc_ci: Interval
    loss: float | None


@dataclass(frozen=True, kw_only=True)
class Evaluation:
    """The content of ``eval/metrics.json`` (see the module doc).

    Attributes:
        models: model name → :class:`ModelResult`, in the run's order.
        comparisons: every pair of models (U-Net vs RA first when both exist).
        counts, bootstrap: the test set and how intervals were made.
        dataset, dataset_title, protocol: the dataset and its split protocol; ``synthetic_data``:
            the archive is a synthetic sample (its marker member).
        split, view, stages, source, image_size: what was scored.
        top_percent_localisation: top share of anomaly pixels a box hit counts.
        threshold_policy, checkpoint_policy: what was (not) chosen on which data.
        evaluation: ``default`` or the name of a re-scored evaluation (``eval-NAME``).
        scoring: model → its anomaly map/score settings (:func:`~.scoring.scoring_of`).
        stream: the streaming pass. table: the W&B comparison table. written_at: local time.
    """

    models: dict[str, ModelResult]
    comparisons: list[Comparison] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    bootstrap: Bootstrap | None = None
    dataset: str = "nih"
    dataset_title: str | None = None
    protocol: str | None = None
    split: str = "test"
    view: str | None = None
    stages: list[str] = field(default_factory=list)
    source: str | None = None
    image_size: int | None = None
    top_percent_localisation: float | None = None
    synthetic_data: bool = False
    threshold_policy: str | None = None
    checkpoint_policy: str | None = None
    evaluation: str = "default"
    scoring: dict[str, dict[str, Any]] = field(default_factory=dict)
    stream: StreamFacts = field(default_factory=StreamFacts)
    table: list[TableRow] = field(default_factory=list)
    written_at: str | None = None

    @property
    def comparison(self) -> Comparison | None:
        """The headline comparison (the first pair), if any."""
        return self.comparisons[0] if self.comparisons else None

    def comparison_of(self, a: str, b: str) -> Comparison | None:
        """The comparison of models ``a`` and ``b`` in either order, if made."""
        return next((c for c in self.comparisons if {c.a, c.b} == {a, b}), None)

    def best_by_auroc(self) -> tuple[str, ModelResult] | None:
        """The model with the highest test AUROC, or None when none has one (a description of
        the results, not a selection: nothing is tuned on the test split)."""
        scored = [(n, m) for n, m in self.models.items() if m.auroc is not None]
        return max(scored, key=lambda kv: kv[1].auroc) if scored else None  # type: ignore[arg-type,return-value]

    @property
    def published(self) -> tuple[PublishedFigure, ...]:
        """The published figures on this dataset shown beside these results."""
        return published_for(self.dataset)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of ``metrics.json``: ``format`` first, ``comparison`` after ``models``."""
        body = _fields_json(self)
        out: dict[str, Any] = {"format": EVALUATION_FORMAT, "models": body.pop("models")}
        out["comparison"] = _json(self.comparison)
        return {**out, **body}


# ------------------------------------------------------------------------------ JSON
def json_safe(obj: Any) -> Any:
    """Recursively convert numpy scalars/arrays to Python and non-finite floats to ``None``."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def _json(obj: Any) -> Any:
    """Dataclasses (their own ``to_json`` when they have one) → JSON-shaped values, recursively."""
    if is_dataclass(obj) and not isinstance(obj, type):
        to_json = getattr(obj, "to_json", None)
        return to_json() if to_json is not None else _fields_json(obj)
    if isinstance(obj, Mapping):
        return {k: _json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json(v) for v in obj]
    return obj


def _fields_json(obj: Any) -> dict[str, Any]:
    return {f.name: _json(v) for f in fields(obj)
            if not ((v := getattr(obj, f.name)) is None and f.metadata.get("omit_none"))}


@cache
def _adapter() -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(Evaluation)


def _first_error(err: Any) -> str:
    e = err.errors()[0]
    where = ".".join(str(p) for p in e["loc"]) or "the top level"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{where}: {e['msg'].lower()}{more}"


def _from_format_1(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A ``metrics.json`` without a format tag, in the shape of :data:`EVALUATION_FORMAT`."""
    out = dict(obj)
    lone = out.pop("comparison", None)
    if not out.get("comparisons"):
        out["comparisons"] = [lone] if isinstance(lone, Mapping) else []
    models = out.get("models")
    if isinstance(models, Mapping):
        out["models"] = {}
        for name, m in models.items():
            m = dict(m) if isinstance(m, Mapping) else m
            if isinstance(m, dict):
                ck = m.get("checkpoint")
                if not isinstance(ck, Mapping) or ck.get("file") is None or ck.get("step") is None:
                    m.pop("checkpoint", None)  # no facts to show of a checkpoint without file and step
            out["models"][name] = m
    return out


def parse_evaluation(obj: Any, where: str = "metrics.json") -> Evaluation:
    """The :class:`Evaluation` a JSON object holds (format 2, or format 1 mapped: module doc).

    Raises:
        RunFolderError: not an evaluation, another format, or a value of the wrong type (the
            first problem named).
    """
    from pydantic import ValidationError

    if not isinstance(obj, Mapping):
        raise RunFolderError(f"{where} is not an ImgAE-Dx evaluation (a JSON object expected); "
                             "re-run `imgae-dx evaluate --run RUN_DIR`")
    fmt = obj.get("format")
    if fmt is None:
        body: Mapping[str, Any] = _from_format_1(obj)
    elif fmt == EVALUATION_FORMAT:
        body = {k: v for k, v in obj.items() if k not in ("format", "comparison")}
    elif isinstance(fmt, str) and fmt.startswith(_FORMAT_PREFIX):
        raise RunFolderError(f"{where} has evaluation format {fmt!r}; this version of imgae-dx reads "
                             f"{EVALUATION_FORMAT!r} and untagged files: use the imgae-dx that wrote it, "
                             "or re-run `imgae-dx evaluate --run RUN_DIR` with this one")
    else:
        raise RunFolderError(f"{where} is not an ImgAE-Dx evaluation (format {fmt!r})")
    try:
        return _adapter().validate_python(body)
    except ValidationError as e:
        raise RunFolderError(f"{where} is damaged ({_first_error(e)}); re-run "
                             "`imgae-dx evaluate --run RUN_DIR` to write it again") from None


def read_evaluation(eval_dir: str | Path) -> Evaluation | None:
    """``EVAL_DIR/metrics.json`` as an :class:`Evaluation`; None when the file does not exist.

    Raises:
        RunFolderError: unreadable, not JSON, or not an evaluation (:func:`parse_evaluation`).
    """
    path = Path(eval_dir) / METRICS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise RunFolderError(f"{path} cannot be read ({e}); re-run `imgae-dx evaluate`") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise RunFolderError(f"{path} cannot be read as JSON ({e}); re-run `imgae-dx evaluate`") from None
    return parse_evaluation(obj, str(path))


def write_evaluation(eval_dir: str | Path, evaluation: Evaluation) -> Path:
    """Write ``EVAL_DIR/metrics.json`` atomically (the evaluator is its only caller)."""
    text = json.dumps(json_safe(evaluation.to_json()), indent=1, allow_nan=False)
    return atomic_write_text(Path(eval_dir) / METRICS_FILE, text)
