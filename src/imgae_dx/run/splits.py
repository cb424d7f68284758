"""``RUN_DIR/split.csv``: every image's split in a run — one writer, one typed reader, the check.

The trainer (rank 0) writes it when a run starts: one row per image the dataset index knows, with
the columns :data:`SPLIT_FIELDS` — ``image`` (the image id), ``split`` (``train``, ``val``,
``test`` or ``unused``), ``label`` (0 normal, 1 abnormal), ``patient``, ``view``, ``findings``
(``|``-joined, empty for normals), ``stage``. A resumed run and ``imgae-dx evaluate`` derive the
same table from the archive they open and compare (:func:`split_differences`): a changed archive
(images added, removed or relabelled, another protocol) is refused instead of silently evaluating
other images than the run was trained against.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgae_dx.errors import RunFolderError
from imgae_dx.utils.atomic import atomic_write_text

SPLIT_FILE = "split.csv"
SPLIT_FIELDS: tuple[str, ...] = ("image", "split", "label", "patient", "view", "findings", "stage")
SPLIT_NAMES = ("train", "val", "test", "unused")


@dataclass
class SplitTable:
    """The rows of ``split.csv`` as columns (row i of every list is one image)."""

    image: list[str] = field(default_factory=list)
    split: list[str] = field(default_factory=list)
    label: list[int] = field(default_factory=list)
    patient: list[str] = field(default_factory=list)
    view: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    stage: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.image)

    @classmethod
    def from_index(cls, index: Any) -> SplitTable:
        """The table of a :class:`~imgae_dx.data.datasets.base.DatasetIndex` under its bound
        protocol (its ``assignments()``), in member order."""
        stages = index.stages()
        return cls(
            image=[str(x) for x in index.image.tolist()],
            split=[str(x) for x in index.assignments().tolist()],
            label=[0 if n else 1 for n in index.normal.tolist()],
            patient=[str(x) for x in index.patient_names().tolist()],
            view=[str(x) for x in index.view.tolist()],
            findings=[str(x) for x in index.findings.tolist()],
            stage=[stages[i] for i in index.stage_idx.tolist()],
        )

    def rows(self) -> dict[str, tuple[str, int, str, str, str, str]]:
        """image → (split, label, patient, view, findings, stage)."""
        return {im: (s, lab, p, v, f, st) for im, s, lab, p, v, f, st in zip(
            self.image, self.split, self.label, self.patient, self.view, self.findings, self.stage,
            strict=True)}

    def counts(self) -> dict[str, int]:
        """Images per split name."""
        return {s: self.split.count(s) for s in SPLIT_NAMES}


def write_split_table(run_dir: str | Path, table: SplitTable) -> Path:
    """Write ``RUN_DIR/split.csv`` atomically; returns its path."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SPLIT_FIELDS)
    for row in zip(table.image, table.split, table.label, table.patient, table.view, table.findings,
                   table.stage, strict=True):
        w.writerow(row)
    return atomic_write_text(Path(run_dir) / SPLIT_FILE, buf.getvalue())


def read_split_table(run_dir: str | Path) -> SplitTable | None:
    """``RUN_DIR/split.csv`` as a :class:`SplitTable`; None when the run has none (runs started
    before split files existed).

    Raises:
        RunFolderError: the file exists but is not a split table (wrong header, bad split or label).
    """
    path = Path(run_dir) / SPLIT_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise RunFolderError(f"{path} cannot be read ({e}); it is the run's split — restore it") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None or tuple(header) != SPLIT_FIELDS:
        raise RunFolderError(f"{path}: header {header!r} is not {','.join(SPLIT_FIELDS)}; not a split file")
    out = SplitTable()
    for row in reader:
        if len(row) != len(SPLIT_FIELDS) or row[1] not in SPLIT_NAMES or row[2] not in ("0", "1"):
            raise RunFolderError(f"{path}:{reader.line_num}: malformed row {row[:3]!r}; not a split file")
        out.image.append(row[0])
        out.split.append(row[1])
        out.label.append(int(row[2]))
        out.patient.append(row[3])
        out.view.append(row[4])
        out.findings.append(row[5])
        out.stage.append(row[6])
    return out


_COLUMNS = SPLIT_FIELDS[1:]


def split_differences(saved: SplitTable, derived: SplitTable, stages: Sequence[str] | None = None,
                      shown: int = 3) -> list[str]:
    """How ``derived`` (from the archive now) differs from ``saved`` (the run's), restricted to the
    images of ``stages`` (either side; None: all): lines like ``3 images are not in the run's
    split (e.g. …)``, ``train/NORMAL/x.jpeg: split val → test``; empty when they agree."""
    keep = None if stages is None else set(stages)
    a = {k: v for k, v in saved.rows().items() if keep is None or v[5] in keep}
    b = {k: v for k, v in derived.rows().items() if keep is None or v[5] in keep}
    out: list[str] = []
    gone = [k for k in a if k not in b]
    new = [k for k in b if k not in a]
    if gone:
        out.append(f"{len(gone)} images of the run's split are missing now (e.g. {', '.join(gone[:shown])})")
    if new:
        out.append(f"{len(new)} images are not in the run's split (e.g. {', '.join(new[:shown])})")
    changed = [k for k in a if k in b and a[k] != b[k]]
    for k in changed[:shown]:
        diffs = [f"{c} {x!r} → {y!r}" for c, x, y in zip(_COLUMNS, a[k], b[k], strict=True) if x != y]
        out.append(f"{k}: {', '.join(diffs)}")
    if len(changed) > shown:
        out.append(f"… {len(changed)} changed images in all")
    return out
