"""The evaluation folder's per-image files: formats, the one way to append rows, typed readers.

``RUN_DIR/eval/`` (written only by :class:`~imgae_dx.evaluation.evaluator.CloudEvaluator`):

* ``scores.csv`` — one row per test image: :data:`SCORE_FIELDS` then one score column per model;
* ``localisation.csv`` — one row per (image, model, box): :data:`LOC_FIELDS`;
* ``examples/MODEL.npz`` — the report's example grid (:func:`save_examples` / :func:`load_examples`).

``metrics.json`` is :mod:`imgae_dx.evaluation.results`; ``state.json`` the evaluator's own.

Rows are appended as images are scored, so an interrupted evaluation resumes; readers therefore
drop a torn last line and duplicate rows (the first row of an image wins).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from imgae_dx.errors import RunFolderError
from imgae_dx.utils.atomic import atomic_open

SCORE_FIELDS: tuple[str, ...] = ("image", "patient", "view", "stage", "findings", "label")
LOC_FIELDS: tuple[str, ...] = (
    "image", "model", "box", "finding", "x", "y", "w", "h",
    "hit", "hit_chance", "top_share", "area_share", "pixel_auroc",
)
#: The localisation values of a row (after the box's identity and coordinates).
LOC_VALUES: tuple[str, ...] = LOC_FIELDS[8:]


@dataclass
class ScoreTable:
    """``scores.csv`` as arrays (N test images, one score array per model)."""

    rows: list[dict[str, str]] = field(default_factory=list)
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    patients: list[str] = field(default_factory=list)
    views: list[str] = field(default_factory=list)
    findings: list[tuple[str, ...]] = field(default_factory=list)
    stages: list[str] = field(default_factory=list)

    @property
    def models(self) -> list[str]:
        return list(self.scores)

    def __len__(self) -> int:
        return len(self.rows)


def open_rows(path: Path, fields: Sequence[str], what_to_delete: Path) -> tuple[TextIO, Any]:
    """Open a CSV for appending rows with header ``fields`` (written when new).

    A torn last line (a killed writer) is dropped first. A file with other columns is refused
    (:class:`RunFolderError` naming ``what_to_delete``): rows of another layout never mix.
    """
    new = not path.is_file() or path.stat().st_size == 0
    if not new:
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            path.write_bytes(data[: data.rfind(b"\n") + 1])
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if header != list(fields):
            raise RunFolderError(
                f"{path} has columns {header} but this evaluation writes {list(fields)}; "
                f"delete {what_to_delete} to evaluate afresh"
            )
    f = path.open("a", newline="", encoding="utf-8")
    w = csv.writer(f)
    if new:
        w.writerow(fields)
        f.flush()
    return f, w


def scored_images(path: Path) -> set[str]:
    """Names of the images ``scores.csv`` already holds."""
    if not path.is_file():
        return set()
    with path.open(newline="") as f:
        return {r["image"] for r in csv.DictReader(f) if r.get("image")}


def read_scores(path: Path, models: Iterable[str] | None = None) -> ScoreTable:
    """``scores.csv`` → :class:`ScoreTable` (empty when the file does not exist).

    Args:
        models: the score columns to read (default: every column after :data:`SCORE_FIELDS`).
    """
    if not path.is_file():
        return ScoreTable()
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        raw = list(reader)
        fields = reader.fieldnames or []
    names = list(models) if models is not None else [c for c in fields if c not in SCORE_FIELDS]
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    for r in raw:
        if not r.get("image") or r["image"] in seen:
            continue
        if any(r.get(n) in (None, "") for n in names):
            continue  # torn row
        seen.add(r["image"])
        rows.append(r)
    return ScoreTable(
        rows=rows,
        labels=np.asarray([int(r["label"]) for r in rows], dtype=np.int64),
        scores={n: np.asarray([float(r[n]) for r in rows], dtype=np.float64) for n in names},
        patients=[r["patient"] for r in rows],
        views=[r["view"] for r in rows],
        findings=[tuple(f for f in r["findings"].split("|") if f) for r in rows],
        stages=[r["stage"] for r in rows],
    )


def read_localisation(path: Path, models: Iterable[str],
                      images: set[str]) -> dict[str, list[dict[str, Any]]]:
    """``localisation.csv`` → model → rows (``image``, ``finding`` and :data:`LOC_VALUES` floats),
    for the given test images only."""
    out: dict[str, list[dict[str, Any]]] = {n: [] for n in models}
    if not path.is_file():
        return out
    seen: set[tuple[str, str, str]] = set()
    with path.open(newline="") as f:
        for r in csv.DictReader(f):
            key = (r["image"], r["model"], r["box"])
            if key in seen or r["model"] not in out or r["image"] not in images:
                continue
            if r.get("pixel_auroc") is None:
                continue  # torn row
            seen.add(key)
            row: dict[str, Any] = {"image": r["image"], "finding": r["finding"]}
            for k in LOC_VALUES:
                row[k] = float(r[k]) if r[k] not in ("", "nan") else math.nan
            out[r["model"]].append(row)
    return out


def save_examples(path: Path, items: Sequence[Mapping[str, Any]]) -> Path:
    """Write example images for the report to ``path`` (``eval/examples/<model>.npz``).

    Args:
        items: dicts with ``image_id`` (str), ``title`` (str), ``image`` and ``reconstruction``
            (H×W float in [0, 1] or uint8), ``anomaly_map`` (H×W float), ``boxes`` (list of
            (finding, x, y, w, h) in map pixels).
    """

    def u8(a: Any) -> np.ndarray:
        a = np.asarray(a)
        return a if a.dtype == np.uint8 else (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)

    with atomic_open(path) as f:
        np.savez_compressed(
            f,
            image_ids=np.asarray([str(i["image_id"]) for i in items]),
            titles=np.asarray([str(i.get("title", i["image_id"])) for i in items]),
            images=np.stack([u8(i["image"]) for i in items]),
            reconstructions=np.stack([u8(i["reconstruction"]) for i in items]),
            maps=np.stack([np.asarray(i["anomaly_map"], dtype=np.float16) for i in items]),
            boxes_json=np.asarray([json.dumps([[str(b[0])] + [float(v) for v in b[1:]]
                                               for b in i.get("boxes", [])]) for i in items]),
        )
    return path


def load_examples(eval_dir: Path, model: str) -> list[dict[str, Any]]:
    """``EVAL_DIR/examples/<model>.npz`` → items (``image``, ``reconstruction`` uint8 H×W,
    ``anomaly_map`` float32 H×W, ``title``, ``boxes``); empty when not evaluated."""
    p = eval_dir / "examples" / f"{model}.npz"
    if not p.is_file():
        return []
    with np.load(p, allow_pickle=False) as z:
        return [{
            "image": z["images"][i],
            "reconstruction": z["reconstructions"][i],
            "anomaly_map": z["maps"][i].astype(np.float32),
            "title": str(z["titles"][i]),
            "boxes": [tuple(b) for b in json.loads(str(z["boxes_json"][i]))],
        } for i in range(len(z["image_ids"]))]
