"""One's own images (``--dataset folder``): anomalib's Folder convention, or a ``labels.csv``.

Two layouts, in a zip or an extracted folder (at the root or in one top folder):

* **folders**: ``normal/`` and ``abnormal/`` (names compared case-insensitively), images at any
  depth below them; the first subfolder of ``abnormal/`` is the image's finding
  (``abnormal/pneumonia/a.png`` → ``pneumonia``), images directly in ``abnormal/`` have none.
* **labels.csv** (wins when present): a header naming the columns, ``path,label`` required,
  ``patient``, ``view``, ``split`` and ``findings`` optional. ``path`` is relative to the CSV's
  folder; ``label`` is ``0`` / ``normal`` or ``1`` / ``abnormal`` (case-insensitive); ``view`` a
  view position (``PA``, ``AP``, …); ``split`` ``train`` (train or validation by the seeded
  share), ``val``, ``test`` or empty (the protocol decides); ``findings`` ``|``-separated names.

Files are told by content, not extension: PNG, JPEG and DICOM by their first bytes; anything
else (notes, thumbnails, macOS junk) is skipped and counted in one log line. Image ids are paths
relative to the layout's root.

Patients: the CSV's ``patient`` column; else a DICOM's PatientID (read from its header); else
one patient per file. Views: the CSV's ``view`` column; without it the dataset has no views and
``data.view`` is ignored.

Protocol (test = held-out patients): every patient with an abnormal image, and a seeded share
``data.test_fraction`` of the other patients, are test patients (all their images are tested);
the remaining normals train, a seeded patient share ``data.val_fraction`` of them validates. A
CSV ``split`` overrides the protocol for its rows; patients must stay in one split. Stages:
``part_NNN`` of ``data.images_per_stage`` training images in archive order.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from imgae_dx.data.datasets.base import (
    ROLE_POOL,
    ROLE_TEST,
    ROLE_VAL,
    SYNTHETIC_MARKER,
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
from imgae_dx.data.datasets.heads import SNIFF_BYTES, read_heads, sniff
from imgae_dx.data.decode import describe_bytes
from imgae_dx.data.dicom import header_fields
from imgae_dx.errors import MetadataError

log = logging.getLogger(__name__)

LABELS_CSV = "labels.csv"
NORMAL_DIR, ABNORMAL_DIR = "normal", "abnormal"
NORMAL_VALUES = ("0", "normal")
ABNORMAL_VALUES = ("1", "abnormal")
SPLIT_VALUES = {"": None, "train": ROLE_POOL, "val": ROLE_VAL, "test": ROLE_TEST}
#: Bytes of a DICOM's head read for its PatientID (the header precedes the pixels).
DICOM_HEAD_BYTES = 16 << 10
_CSV_COLUMNS = ("path", "label", "patient", "view", "split", "findings")


def _parts(name: str) -> list[str]:
    return name.replace("\\", "/").strip("/").split("/")


def _hidden(parts: Sequence[str]) -> bool:
    return "__MACOSX" in parts or any(p.startswith(".") for p in parts)


def find_labels_csv(names: Sequence[str]) -> str | None:
    """The member ``labels.csv`` at the root or one folder deep (root wins), or None."""
    hits = [n for n in names if _parts(n)[-1].lower() == LABELS_CSV and len(_parts(n)) <= 2
            and not _hidden(_parts(n))]
    return min(hits, key=lambda n: len(_parts(n))) if hits else None


def find_class_root(names: Sequence[str]) -> str | None:
    """The shallowest folder (``""`` = root, else ``"top/"``) holding files under both
    ``normal/`` and ``abnormal/``, or None."""
    seen: dict[str, set[str]] = {}
    for n in names:
        parts = _parts(n)
        if _hidden(parts):
            continue
        for k, p in enumerate(parts[:-1]):
            low = p.lower()
            if low in (NORMAL_DIR, ABNORMAL_DIR):
                seen.setdefault("/".join(parts[:k]), set()).add(low)
                break
    roots = [r for r, kinds in seen.items() if len(kinds) == 2]
    if not roots:
        return None
    best = min(roots, key=lambda r: (r.count("/") + (r != ""), r))
    return best + "/" if best else ""


def looks_like(names: Sequence[str]) -> bool:
    """True when the archive has a root ``labels.csv`` or ``normal/`` + ``abnormal/`` folders."""
    return find_labels_csv(names) is not None or find_class_root(names) is not None


# --------------------------------------------------------------------------------- layouts
class _Rows:
    """The candidate images of a layout as parallel lists, before content sniffing."""

    def __init__(self) -> None:
        self.member: list[int] = []
        self.image: list[str] = []
        self.normal: list[bool] = []
        self.findings: list[str] = []
        self.patient: list[str | None] = []
        self.view: list[str] = []
        self.role: list[int | None] = []

    def add(self, member: int, image: str, normal: bool, findings: str = "", patient: str | None = None,
            view: str = "", role: int | None = None) -> None:
        self.member.append(member)
        self.image.append(image)
        self.normal.append(normal)
        self.findings.append(findings)
        self.patient.append(patient)
        self.view.append(view)
        self.role.append(role)

    def keep(self, mask: Sequence[bool]) -> None:
        for col in ("member", "image", "normal", "findings", "patient", "view", "role"):
            vals = getattr(self, col)
            setattr(self, col, [v for v, k in zip(vals, mask, strict=True) if k])


def _from_folders(names: Sequence[str], root: str, facts: IndexFacts) -> _Rows:
    rows = _Rows()
    for mid, name in enumerate(names):
        if not name.startswith(root) or name.endswith("/"):
            continue
        rel = name[len(root):]
        parts = _parts(rel)
        if len(parts) < 2 or parts[0].lower() not in (NORMAL_DIR, ABNORMAL_DIR):
            continue
        if _hidden(parts):
            facts.skip("hidden or macOS files (.*, __MACOSX)")
            continue
        normal = parts[0].lower() == NORMAL_DIR
        finding = parts[1] if not normal and len(parts) > 2 else ""
        rows.add(mid, rel, normal, finding)
    return rows


def _label(value: str, where: str) -> bool:
    v = value.strip().lower()
    if v in NORMAL_VALUES:
        return True
    if v in ABNORMAL_VALUES:
        return False
    raise MetadataError(
        f"{where}: label {value!r} is not one of {', '.join(NORMAL_VALUES)} (normal) or "
        f"{', '.join(ABNORMAL_VALUES)} (abnormal)")


def _from_labels_csv(archive: Any, names: Sequence[str], csv_name: str, facts: IndexFacts) -> tuple[_Rows, set[str]]:
    """Rows of ``labels.csv`` that name a member; returns them and the optional columns present."""
    raw = archive.read_member(csv_name)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise MetadataError(f"{csv_name}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise MetadataError(f"{csv_name} is empty; it needs a header line: path,label[,patient]"
                            "[,view][,split][,findings]") from None
    except csv.Error as e:
        raise MetadataError(f"{csv_name}:1: unreadable CSV ({e})") from None
    header = ["findings" if h == "finding" else h for h in header]
    missing = [c for c in ("path", "label") if c not in header]
    if missing:
        raise MetadataError(
            f"{csv_name}: the header {','.join(header)!r} lacks {' and '.join(missing)}; expected "
            "path,label[,patient][,view][,split][,findings]")
    extra = [h for h in header if h not in _CSV_COLUMNS]
    if extra:
        facts.notes.append(f"{csv_name}: columns ignored: {', '.join(extra)}")
    col = {c: header.index(c) for c in _CSV_COLUMNS if c in header}
    top = csv_name[: -len(_parts(csv_name)[-1])]
    member_of = {n: i for i, n in enumerate(names)}
    rows = _Rows()
    first_line: dict[str, int] = {}
    absent: list[str] = []
    try:
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            where = f"{csv_name}:{line}"
            if len(row) < len(header):
                raise MetadataError(f"{where}: {len(row)} fields, the header names {len(header)}")
            path = row[col["path"]].strip().replace("\\", "/")
            while path.startswith("./"):
                path = path[2:]
            if not path:
                raise MetadataError(f"{where}: empty path")
            if path in first_line:
                raise MetadataError(f"{where}: {path} is listed twice (first on line {first_line[path]})")
            first_line[path] = line
            normal = _label(row[col["label"]], where)
            split = row[col["split"]].strip().lower() if "split" in col else ""
            if split not in SPLIT_VALUES:
                raise MetadataError(f"{where}: split {split!r} is not train, val, test or empty")
            mid = member_of.get(top + path)
            if mid is None:
                absent.append(path)
                continue
            fnd = row[col["findings"]].strip() if "findings" in col else ""
            fnd = "|".join(f.strip() for f in fnd.split("|") if f.strip()) if not normal else ""
            pat = row[col["patient"]].strip() if "patient" in col else ""
            rows.add(mid, path, normal, fnd, pat or None,
                     row[col["view"]].strip().upper() if "view" in col else "", SPLIT_VALUES[split])
    except csv.Error as e:
        raise MetadataError(f"{csv_name}:{reader.line_num}: unreadable CSV ({e})") from None
    if absent:
        facts.skip(f"rows of {LABELS_CSV} naming no file in the archive (e.g. {absent[0]})", len(absent))
    return rows, {c for c in col if c not in ("path", "label")}


# ------------------------------------------------------------------------------------ build
def _sniff_rows(archive: Any, rows: _Rows, facts: IndexFacts, reads: HeadReads) -> list[str | None]:
    """Keep the rows whose content is PNG / JPEG / DICOM; returns the kept rows' kinds."""
    heads = read_heads(archive, rows.member, SNIFF_BYTES, reads=reads)
    kinds = [sniff(h) for h in heads]
    bad = [i for i, k in enumerate(kinds) if k is None]
    if bad:
        facts.skip(f"files that are not PNG, JPEG or DICOM (e.g. {rows.image[bad[0]]}: "
                   f"{describe_bytes(heads[bad[0]])})", len(bad))
    keep = [k is not None for k in kinds]
    rows.keep(keep)
    return [k for k in kinds if k is not None]


def _patients(archive: Any, rows: _Rows, kinds: list[str | None], from_csv: bool, facts: IndexFacts,
              reads: HeadReads) -> list[str]:
    """Patient names: the CSV's, else DICOM PatientIDs, else one per file (said in a note)."""
    if from_csv and all(p is not None for p in rows.patient):
        facts.notes.append(f"patients from the patient column of {LABELS_CSV}")
        return [str(p) for p in rows.patient]
    out = [p if p is not None else "" for p in rows.patient]
    dicoms = [i for i, k in enumerate(kinds) if k == "dicom" and not out[i]]
    from_dicom = 0
    if dicoms:
        heads = read_heads(archive, [rows.member[i] for i in dicoms], DICOM_HEAD_BYTES, reads=reads)
        for i, h in zip(dicoms, heads, strict=True):
            pid = header_fields(h, ["PatientID"]).get("PatientID")
            if pid:
                out[i] = f"dicom:{pid}"
                from_dicom += 1
    per_file = sum(1 for p in out if not p)
    parts = []
    if from_csv and len(out) - per_file - from_dicom:
        parts.append(f"{len(out) - per_file - from_dicom} from {LABELS_CSV}")
    if from_dicom:
        parts.append(f"{from_dicom} from DICOM PatientID")
    if per_file:
        parts.append(f"{per_file} one patient per file")
    facts.notes.append("patients: " + ", ".join(parts))
    return [p if p else f"file:{img}" for p, img in zip(out, rows.image, strict=True)]


def _roles(rows: _Rows, patients: list[str], protocol: Protocol) -> np.ndarray:
    """Test: patients with an abnormal image and a seeded share of the others; CSV splits win."""
    keys = name_keys(patients)
    normal = np.asarray(rows.normal, dtype=bool)
    sick = np.isin(keys, keys[~normal])
    held = held_out(keys, protocol)
    role = np.where(sick | held, ROLE_TEST, ROLE_POOL).astype(np.int8)
    given = np.array([r is not None for r in rows.role], dtype=bool)
    if given.any():
        role[given] = np.array([r for r in rows.role if r is not None], dtype=np.int8)
    return role


def build(archive: Any, protocol: Protocol, reads: HeadReads | None = None) -> DatasetIndex:
    """The folder index of ``archive`` (see the module doc); ``reads``: how the files' first bytes
    are fetched.

    Raises:
        MetadataError: neither layout found, a malformed ``labels.csv``, no image, or a patient in
            two splits.
    """
    names = member_names(archive.index)
    facts = IndexFacts()
    csv_name = find_labels_csv(names)
    if csv_name is not None:
        rows, optional = _from_labels_csv(archive, names, csv_name, facts)
        facts.notes.append(f"layout: {csv_name}" + (f" with {', '.join(sorted(optional))}" if optional else ""))
        has_views = "view" in optional
    else:
        root = find_class_root(names)
        if root is None:
            raise MetadataError(
                f"{getattr(archive, 'identity', 'the archive')} holds neither {LABELS_CSV} nor normal/ "
                "and abnormal/ folders; put images in normal/ and abnormal/ (subfolders of abnormal/ "
                f"name findings) or list them in a {LABELS_CSV} (path,label[,patient][,view][,split])")
        rows = _from_folders(names, root, facts)
        facts.notes.append(f"layout: {root or './'}normal/ + abnormal/")
        has_views, optional = False, set()
    marker = [i for i, img in enumerate(rows.image) if _parts(img)[-1] == SYNTHETIC_MARKER]
    rows.keep([i not in marker for i in range(len(rows.image))])
    reads = reads or HeadReads()
    kinds = _sniff_rows(archive, rows, facts, reads)
    patients = _patients(archive, rows, kinds, "patient" in optional, facts, reads)
    role = _roles(rows, patients, protocol)
    index = index_from_columns(
        "folder", np.asarray(rows.member, dtype=np.int64), rows.image, patients, np.asarray(rows.normal),
        rows.view, rows.findings, role, protocol, has_views=has_views, facts=facts)
    index.check_disjoint()
    return index


SPEC = DatasetSpec(
    name="folder", title="your own images (normal/ + abnormal/ folders or labels.csv)",
    source="a local folder or .zip (any source kind)",
    layout="normal/ + abnormal/[FINDING/] (any depth), or labels.csv: path,label[,patient][,view][,split]",
    protocol="test = every patient with an abnormal image + a seeded share data.test_fraction of the "
             "others; train on the remaining normals (a seeded patient share validates)",
    looks_like=looks_like, build=build,
)
