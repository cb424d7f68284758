"""RSNA Pneumonia Detection Challenge (``--dataset rsna``): the Kaggle competition
``rsna-pneumonia-detection-challenge`` (``--source kaggle-competition:rsna-pneumonia-detection-challenge``;
its rules must be accepted on kaggle.com).

Layout (the competition's data download, at the root or under one top folder)::

    stage_2_train_images/<patientId>.dcm     the radiographs, one per patient (26,684)
    stage_2_train_labels.csv                 patientId,x,y,width,height,Target — one row per box;
                                             x/y/width/height empty when Target is 0
    stage_2_detailed_class_info.csv          patientId,class — one row per labels row
    stage_2_test_images/*.dcm                unlabeled (3,000): never used, not counted as images
    stage_2_sample_submission.csv, GCP Credits Request Link - RSNA.txt

The DICOMs are 1024², 8-bit MONOCHROME2, JPEG Baseline, with ``ViewPosition`` (PA / AP) in the
header (and ``PatientAge`` as bare strings such as ``51``, which nothing here reads). Classes:
``Normal`` (8,851 patients), ``No Lung Opacity / Not Normal`` (11,821), ``Lung Opacity`` (6,012;
Target 1, with boxes in the 1024-px frame).

Index: one image per patient; the image id is the file name ``<patientId>.dcm``, the patient its
``patientId``. Views come from each train image's DICOM header, read by
:func:`~imgae_dx.data.datasets.heads.dicom_fields` (first bytes of each member, few range requests,
a progress bar, cached on disk by archive identity and version: a remote archive is scanned once).

Protocol: every patient of a seeded share ``data.test_fraction`` (the same hash for every class,
:func:`~imgae_dx.data.datasets.base.held_out`) is a test patient; the other ``Normal`` patients
train, a seeded patient share ``data.val_fraction`` of them validates; the other non-Normal
patients are not used. Both non-Normal classes are abnormal and are the images' findings
(per-finding AUROC); the ``Lung Opacity`` boxes feed the localisation metric. View cohort
(``data.view``) as for NIH. Stages: ``part_NNN`` of ``data.images_per_stage`` training images in
archive order.

Skipped and counted (one log line per reason, with an example): unlabeled test images, members
outside the layout, ``.dcm`` files without a CSV row, patients in the CSVs without a ``.dcm``
(a partial archive), patients in only one of the two CSVs, rows that cannot be read (a Target
other than 0/1, a Target-1 box that is not four numbers with a positive size, an unknown class),
patients whose rows disagree (Target 1 with class ``Normal`` or ``No Lung Opacity / Not Normal``,
Target 0 with ``Lung Opacity``, Target 0 and 1 rows, two classes), and images whose DICOM header
cannot be read. Disagreeing patients are skipped rather than refused: the archive is the
competition's, read-only to the user, so an error would leave no fix, and a skipped patient can
neither train as a normal nor be tested under a wrong label. CSV quirks handled: a UTF-8 BOM,
CRLF line ends, blank lines, columns in another order or extra columns, identical rows
(counted once; the log says how many).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imgae_dx.data.datasets.base import (
    ROLE_POOL,
    ROLE_TEST,
    ROLE_UNUSED,
    SYNTHETIC_MARKER,
    Box,
    DatasetIndex,
    DatasetSpec,
    HeadReads,
    IndexFacts,
    Protocol,
    held_out,
    index_from_columns,
    member_names,
    name_keys,
)
from imgae_dx.data.datasets.heads import dicom_fields
from imgae_dx.errors import MetadataError

LABELS_CSV = "stage_2_train_labels.csv"
CLASSES_CSV = "stage_2_detailed_class_info.csv"
TRAIN_DIR = "stage_2_train_images"
TEST_DIR = "stage_2_test_images"
#: The competition's other files (not images, not counted as skipped).
OTHER_FILES = ("stage_2_sample_submission.csv", "GCP Credits Request Link - RSNA.txt", SYNTHETIC_MARKER)
LABELS_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
CLASSES_COLUMNS = ("patientId", "class")
NORMAL = "Normal"
NOT_NORMAL = "No Lung Opacity / Not Normal"
OPACITY = "Lung Opacity"
CLASSES = (NORMAL, NOT_NORMAL, OPACITY)
#: Bytes of each DICOM read for its header (RSNA's headers end before byte ~700).
HEAD_BYTES = 4096

# why images or patients are skipped (the log and ``summary()["skipped"]`` add an example)
SKIP_TEST = f"unlabeled images in {TEST_DIR}/ (never used)"
SKIP_OTHER = "members outside the RSNA layout"
SKIP_NO_ROW = f"images in {TRAIN_DIR}/ without a row in the CSVs"
SKIP_NO_IMAGE = "patients in the CSVs without an image in the archive"
SKIP_ONE_CSV = "patients in only one of the two CSVs"
SKIP_UNREADABLE = "patients with a CSV row that cannot be read"
SKIP_DISAGREE = "patients whose labels disagree"
SKIP_HEADER = "images whose DICOM header cannot be read"
SKIP_COPY = "second copies of an image"


def _parts(name: str) -> list[str]:
    return name.replace("\\", "/").strip("/").split("/")


def find_top(names: Sequence[str]) -> str | None:
    """The folder holding :data:`LABELS_CSV` (``""`` = the root, else ``"top/"``; the root wins),
    or None."""
    tops = [n[: -len(LABELS_CSV)] for n in names if n.endswith(LABELS_CSV) and len(_parts(n)) <= 2
            and _parts(n)[-1] == LABELS_CSV and "__MACOSX" not in n]
    return min(tops, key=len) if tops else None


def image_patient(name: str, top: str) -> str | None:
    """The patientId of a train image member ``{top}stage_2_train_images/<patientId>.dcm``, else None."""
    prefix = f"{top}{TRAIN_DIR}/"
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix):]
    if "/" in rest or rest.startswith(".") or not rest.lower().endswith(".dcm") or len(rest) <= 4:
        return None
    return rest[:-4]


def looks_like(names: Sequence[str]) -> bool:
    """True when the archive holds :data:`LABELS_CSV` and train images beside it."""
    top = find_top(names)
    return top is not None and any(image_patient(n, top) is not None for n in names)


@dataclass
class _Skips:
    """Counts and a first example per reason, flushed into :class:`IndexFacts`."""

    counts: dict[str, int] = field(default_factory=dict)
    example: dict[str, str] = field(default_factory=dict)

    def add(self, why: str, example: str) -> None:
        self.counts[why] = self.counts.get(why, 0) + 1
        self.example.setdefault(why, example)

    def into(self, facts: IndexFacts) -> None:
        for why, n in self.counts.items():
            facts.skip(f"{why} (e.g. {self.example[why]})", n)


@dataclass
class _Patient:
    """What the two CSVs say of one patient."""

    targets: set[int] = field(default_factory=set)
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    classes: set[str] = field(default_factory=set)
    in_labels: bool = False
    in_classes: bool = False
    bad: str = ""  # why a row of this patient cannot be read (first one)


def _rows(archive: Any, name: str, columns: Sequence[str]) -> tuple[dict[str, int], list[tuple[int, list[str]]]]:
    """The CSV member ``name``: column positions of ``columns`` and its non-blank rows with their
    line numbers (BOM, CRLF and blank lines tolerated).

    Raises:
        MetadataError: not UTF-8, unreadable, empty, or a required column missing.
    """
    raw = archive.read_member(name)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise MetadataError(f"{name}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
        rows = [(reader.line_num, r) for r in reader if r and any(c.strip() for c in r)]
    except StopIteration:
        raise MetadataError(f"{name} is empty; expected the header {','.join(columns)}") from None
    except csv.Error as e:
        raise MetadataError(f"{name}:{reader.line_num}: unreadable CSV ({e})") from None
    missing = [c for c in columns if c not in header]
    if missing:
        raise MetadataError(f"{name}: the header {','.join(header)!r} lacks {', '.join(missing)}; "
                            f"expected {','.join(columns)} (the competition's file)")
    return {c: header.index(c) for c in columns}, rows


def _cell(row: list[str], i: int) -> str:
    return row[i].strip() if len(row) > i else ""


def _patient_rows(rows: list[tuple[int, list[str]]], col: dict[str, int],
                  patients: dict[str, _Patient]) -> Iterator[tuple[int, list[str], _Patient]]:
    """``(line, row, the row's patient)`` for the rows naming a patientId (patients made as met)."""
    for line, row in rows:
        pid = _cell(row, col["patientId"])
        if pid:
            yield line, row, patients.setdefault(pid, _Patient())


def _box(row: list[str], col: dict[str, int]) -> tuple[float, float, float, float] | None:
    try:
        x, y, w, h = (float(row[col[c]]) for c in ("x", "y", "width", "height"))
    except (ValueError, IndexError):
        return None
    if not all(np.isfinite((x, y, w, h))) or w <= 0 or h <= 0:
        return None
    return x, y, w, h


def read_labels(archive: Any, top: str, facts: IndexFacts) -> dict[str, _Patient]:
    """Both CSVs joined by patientId (see the module doc for what is tolerated).

    Raises:
        MetadataError: a CSV missing, not UTF-8, or without its columns.
    """
    names = {f"{top}{LABELS_CSV}", f"{top}{CLASSES_CSV}"}
    missing = [n for n in sorted(names) if not archive.has(n)]
    if missing:
        raise MetadataError(f"{getattr(archive, 'identity', 'the archive')} has no {missing[0]}; the "
                            f"RSNA layout needs {LABELS_CSV} and {CLASSES_CSV} beside {TRAIN_DIR}/")
    patients: dict[str, _Patient] = {}
    where = f"{top}{LABELS_CSV}"
    col, rows = _rows(archive, where, LABELS_COLUMNS)
    seen: set[tuple[str, ...]] = set()
    duplicates = 0
    for line, row, p in _patient_rows(rows, col, patients):
        p.in_labels = True
        key = tuple(c.strip() for c in row)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        target = _cell(row, col["Target"])
        if target not in ("0", "1"):
            p.bad = p.bad or f"{where}:{line}: Target {target!r} is not 0 or 1"
            continue
        p.targets.add(int(target))
        if target == "1":
            box = _box(row, col)
            if box is None:
                p.bad = p.bad or f"{where}:{line}: the box is not four numbers with a positive size"
            else:
                p.boxes.append(box)
    where = f"{top}{CLASSES_CSV}"
    col, rows = _rows(archive, where, CLASSES_COLUMNS)
    for line, row, p in _patient_rows(rows, col, patients):
        p.in_classes = True
        cls = _cell(row, col["class"])
        if cls not in CLASSES:
            p.bad = p.bad or f"{where}:{line}: class {cls!r} is not one of {', '.join(CLASSES)}"
        else:
            p.classes.add(cls)
    if duplicates:
        facts.notes.append(f"{duplicates} identical rows of {LABELS_CSV} counted once")
    return patients


def _class_of(pid: str, p: _Patient, skips: _Skips) -> str | None:
    """The patient's class, or None (skipped and counted) when its rows are unreadable or disagree."""
    if not (p.in_labels and p.in_classes):
        skips.add(SKIP_ONE_CSV, f"{pid} only in {LABELS_CSV if p.in_labels else CLASSES_CSV}")
        return None
    if p.bad:
        skips.add(SKIP_UNREADABLE, p.bad)
        return None
    why = ""
    if len(p.targets) > 1:
        why = "Target 0 and Target 1 rows"
    elif len(p.classes) > 1:
        why = "classes " + " and ".join(sorted(p.classes))
    else:
        cls, target = next(iter(p.classes)), next(iter(p.targets))
        if (target == 1) != (cls == OPACITY):
            why = f"Target {target} but class {cls}"
    if why:
        skips.add(SKIP_DISAGREE, f"{pid}: {why}")
        return None
    return next(iter(p.classes))


def build(archive: Any, protocol: Protocol, reads: HeadReads | None = None) -> DatasetIndex:
    """The RSNA index of ``archive`` (see the module doc); ``reads``: how the DICOM headers are
    fetched and where their views are cached.

    Raises:
        MetadataError: a CSV missing or malformed, or no usable image.
    """
    reads = reads or HeadReads()
    names = member_names(archive.index)
    top = find_top(names)
    if top is None:
        raise MetadataError(f"{getattr(archive, 'identity', 'the archive')} holds no {LABELS_CSV} "
                            "(at the root or one folder deep): not the RSNA layout")
    facts = IndexFacts()
    skips = _Skips()
    member_of: dict[str, int] = {}
    known = {f"{top}{n}" for n in (LABELS_CSV, CLASSES_CSV, *OTHER_FILES)}
    for mid, name in enumerate(names):
        pid = image_patient(name, top)
        if pid is not None:
            if pid in member_of:
                skips.add(SKIP_COPY, name)
            else:
                member_of[pid] = mid
        elif name.startswith(f"{top}{TEST_DIR}/"):
            facts.skip(SKIP_TEST)
        elif name not in known and _parts(name)[-1] != SYNTHETIC_MARKER:
            skips.add(SKIP_OTHER, name)
    labels = read_labels(archive, top, facts)
    for pid in member_of.keys() - labels.keys():
        skips.add(SKIP_NO_ROW, f"{TRAIN_DIR}/{pid}.dcm")
    usable: list[tuple[int, str, str]] = []  # member, patientId, class
    for pid, p in labels.items():
        if pid not in member_of:
            skips.add(SKIP_NO_IMAGE, pid)
            continue
        cls = _class_of(pid, p, skips)
        if cls is not None:
            usable.append((member_of[pid], pid, cls))
    usable.sort()
    headers = dicom_fields(archive, [m for m, _, _ in usable], ["ViewPosition"], reads,
                           nbytes=HEAD_BYTES, what="rsna DICOM headers")
    kept = []
    for (mid, pid, cls), fields in zip(usable, headers, strict=True):
        if fields is None:
            skips.add(SKIP_HEADER, f"{TRAIN_DIR}/{pid}.dcm")
        else:
            kept.append((mid, pid, cls, fields.get("ViewPosition", "").strip().upper()))
    skips.into(facts)
    if not kept:
        raise MetadataError(f"{getattr(archive, 'identity', 'the archive')}: no image of the RSNA layout "
                            f"has a usable row in {LABELS_CSV} and {CLASSES_CSV}")
    member = np.array([k[0] for k in kept], dtype=np.int64)
    pids = [k[1] for k in kept]
    classes = [k[2] for k in kept]
    views = [k[3] for k in kept]
    normal = np.array([c == NORMAL for c in classes], dtype=bool)
    test = held_out(name_keys(pids), protocol)
    role = np.where(test, ROLE_TEST, np.where(normal, ROLE_POOL, ROLE_UNUSED)).astype(np.int8)
    boxes: dict[str, list[Box]] = {f"{pid}.dcm": [(OPACITY, *b) for b in labels[pid].boxes]
                                   for pid, c in zip(pids, classes, strict=True) if c == OPACITY}
    counts = {v or "unknown": views.count(v) for v in sorted(set(views))}
    facts.notes.append("views (DICOM ViewPosition): " + ", ".join(f"{v} {n}" for v, n in counts.items()))
    index = index_from_columns(
        "rsna", member, [f"{pid}.dcm" for pid in pids], pids, normal, views,
        ["" if c == NORMAL else c for c in classes], role, protocol, has_views=True, facts=facts,
        boxes=boxes)
    index.check_disjoint()
    return index


SPEC = DatasetSpec(
    name="rsna", title="RSNA Pneumonia Detection Challenge",
    source="kaggle-competition:rsna-pneumonia-detection-challenge",
    layout=f"{TRAIN_DIR}/<patientId>.dcm + {LABELS_CSV}, {CLASSES_CSV}",
    protocol="test on a seeded share data.test_fraction of the patients of every class (Lung Opacity "
             "and No Lung Opacity / Not Normal abnormal, reported as findings; Lung Opacity boxes feed "
             "localisation), train on the other Normal patients (a seeded patient share validates); "
             "views from each DICOM's ViewPosition",
    looks_like=looks_like, build=build,
)
