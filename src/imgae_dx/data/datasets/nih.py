"""NIH ChestX-ray14 (``--dataset nih``): metadata parsers, the join to archive members, stages, splits.

Over 500 lines on purpose: the three metadata formats, their join to the members and the split
rules depend on each other's quirks (malformed headers, spellings, patients), kept side by side.

The metadata files come with the dataset (at the archive's root, or in one top folder):

- ``Data_Entry_2017.csv``: one row per image. Its header is malformed (bracketed names with commas,
  a trailing comma), so columns are read **by position**: 0 image, 1 labels (``|``-separated,
  ``No Finding`` = normal), 2 follow-up, 3 patient id, 4 age, 5 gender, 6 view position.
- ``BBox_List_2017.csv``: ``image, label, x, y, w, h`` (1024 px frame) and trailing empty fields; it
  spells ``Infiltrate`` where Data_Entry says ``Infiltration`` (normalised here).
- ``train_val_list.txt`` / ``test_list.txt``: the official patient-disjoint split, one image per line.

The metadata lists all 112,120 images whatever part of the dataset a source holds: rows are joined to
archive members by basename, and rows without a member are simply not used.

Splits (``NIHIndex.split``, the rule of :class:`~imgae_dx.data.datasets.base.DatasetIndex` with
the official lists as roles): ``train`` = normal images of train_val patients outside a seeded,
patient-disjoint validation slice; ``val`` = normal images of that slice; ``test`` = every image
(normal and abnormal) of test_list patients. A view filter (PA / AP / all) applies to every split.
Stages are the archive's ``images_NNN`` folders.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from imgae_dx.data.datasets.base import (
    SPLITS,
    VIEWS,
    Box,
    DatasetIndex,
    DatasetSpec,
    HeadReads,
    ImageRecord,
    Protocol,
)
from imgae_dx.data.datasets.base import (
    member_names as list_members,
)
from imgae_dx.errors import MetadataError, UserError

__all__ = [
    "BBOX_HEADER", "BBOX_NAME", "DATA_ENTRY_HEADER", "DATA_ENTRY_NAME", "FINDINGS", "METADATA_NAMES",
    "NORMAL_LABEL", "SPLITS", "TEST_NAME", "TRAIN_VAL_NAME", "VIEWS", "Box", "DataEntryTable",
    "ImageRecord", "NIHIndex", "ParseReport", "find_metadata_members", "looks_like",
    "SPEC", "build", "parse_bbox_list", "parse_data_entry", "parse_image_list",
]

DATA_ENTRY_NAME = "Data_Entry_2017.csv"
BBOX_NAME = "BBox_List_2017.csv"
TRAIN_VAL_NAME = "train_val_list.txt"
TEST_NAME = "test_list.txt"
METADATA_NAMES = (DATA_ENTRY_NAME, BBOX_NAME, TRAIN_VAL_NAME, TEST_NAME)
DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
NORMAL_LABEL = "No Finding"
FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis",
    "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax",
)
BBOX_SPELLING = {"Infiltrate": "Infiltration"}
_LAYOUT_HINT = (
    "an NIH ChestX-ray14 archive holds Data_Entry_2017.csv, BBox_List_2017.csv, train_val_list.txt "
    "and test_list.txt at its root (or in one top folder) next to images_NNN/images/*.png"
)
_STAGE_RE = re.compile(r"^images_(\d{3})$")
_MAX_REPORTED = 5  # malformed lines quoted in a report
_UNUSABLE_SHARE = 0.5  # more malformed rows than this share makes a file unusable


@dataclass
class ParseReport:
    """What a parser skipped: counts and the first few offending lines (``file:line: why``)."""

    file: str
    rows: int = 0
    malformed: int = 0
    examples: list[str] = field(default_factory=list)

    def bad(self, line: int, why: str) -> None:
        self.malformed += 1
        if len(self.examples) < _MAX_REPORTED:
            self.examples.append(f"{self.file}:{line}: {why}")

    def check_usable(self, allow_empty: bool = False) -> None:
        """Raise MetadataError when nothing (unless ``allow_empty``) or mostly nothing parsed."""
        total = self.rows + self.malformed
        mostly_bad = self.malformed > 10 and self.malformed > _UNUSABLE_SHARE * total
        if (self.rows == 0 and not allow_empty) or mostly_bad:
            first = self.examples[0] if self.examples else f"{self.file}: no data rows"
            raise MetadataError(
                f"{self.file} is unusable: {self.rows} valid and {self.malformed} malformed rows "
                f"(first problem: {first}); re-download the dataset's metadata files"
            )

    def __str__(self) -> str:
        s = f"{self.file}: {self.rows} rows"
        if self.malformed:
            s += f", {self.malformed} malformed skipped (e.g. {'; '.join(self.examples[:2])})"
        return s


@dataclass
class DataEntryTable:
    """Data_Entry_2017.csv as columns (row i of every array is one image)."""

    image: np.ndarray  # object array of basenames, e.g. "00000001_000.png"
    labels: np.ndarray  # object array of the raw "A|B" label strings
    follow_up: np.ndarray  # int32
    patient: np.ndarray  # int64
    age: np.ndarray  # int32, -1 when unreadable
    sex: np.ndarray  # object array ("M" / "F" / "")
    view: np.ndarray  # object array ("PA", "AP", …)
    normal: np.ndarray  # bool: labels == "No Finding"
    report: ParseReport

    def __len__(self) -> int:
        return len(self.image)


def _text(data: bytes, name: str) -> str:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MetadataError(f"{name}: expected bytes, got {type(data).__name__}")
    try:
        return bytes(data).decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = bytes(data)[: e.start].count(b"\n") + 1
        raise MetadataError(f"{name}:{line}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _rows(text: str, name: str):
    """csv rows with 1-based line numbers; a csv-level error becomes MetadataError (file, line)."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=False)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise MetadataError(f"{name}:{reader.line_num}: unreadable CSV ({e})") from None
        yield reader.line_num, row


def _is_header(row: list[str], first: str) -> bool:
    return bool(row) and row[0].strip().lower() == first.lower()


def _table_rows(text: str, name: str) -> tuple[list[list[str]], list[int]]:
    """All CSV rows and their 1-based line numbers. Files without quotes (the real ones) take a
    fast split path; others go through the csv module (quoted commas, embedded newlines)."""
    if '"' not in text:
        lines = text.splitlines()
        return [ln.split(",") for ln in lines], list(range(1, len(lines) + 1))
    rows, nums = [], []
    for line, row in _rows(text, name):
        rows.append(row)
        nums.append(line)
    return rows, nums


def _ints(col: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(values int64, ok bool) of a column of decimal strings; blanks / junk → not ok."""
    vals = np.zeros(len(col), dtype=np.int64)
    ok = np.zeros(len(col), dtype=bool)
    for i, v in enumerate(col):
        if v.isdigit() and len(v) < 18:
            vals[i] = int(v)
            ok[i] = True
        else:
            try:
                x = int(v)
            except ValueError:
                continue
            if -(2**62) < x < 2**62:
                vals[i] = x
                ok[i] = True
    return vals, ok


def parse_data_entry(data: bytes, name: str = DATA_ENTRY_NAME) -> DataEntryTable:
    """Parse Data_Entry_2017.csv by position (header malformed: bracketed names, trailing comma).

    Tolerates CRLF, quoted fields, trailing commas and a missing header. Malformed rows (too few
    fields, empty image or labels, non-integer patient id, duplicates) are skipped and counted in
    ``table.report``; MetadataError (file and line) when the file is not text or mostly unusable.
    Columnar: 112k rows parse in well under a second.
    """
    text = _text(data, name)
    rep = ParseReport(name)
    rows, nums = _table_rows(text, name)
    if rows and _is_header(rows[0], "Image Index"):
        rows, nums = rows[1:], nums[1:]
    keep = [i for i, r in enumerate(rows) if len(r) >= 7]
    if len(keep) < len(rows):
        for i, r in enumerate(rows):
            if len(r) < 7 and any(c.strip() for c in r):
                rep.bad(nums[i], f"{len(r)} fields, expected at least 7")
    rows = [rows[i][:7] for i in keep]
    nums = [nums[i] for i in keep]
    if rows:
        c_img, c_lab, c_fu, c_pid, c_age, c_sex, c_view = (
            [v.strip() for v in col] for col in zip(*rows, strict=True))
    else:
        c_img = c_lab = c_fu = c_pid = c_age = c_sex = c_view = []
    c_img = [v if "/" not in v and "\\" not in v else re.split(r"[/\\]", v)[-1] for v in c_img]
    pid, pid_ok = _ints(c_pid)
    fu, fu_ok = _ints(c_fu)
    fu[~fu_ok] = -1
    fu_ok |= np.array([not v for v in c_fu], dtype=bool)
    good = pid_ok & fu_ok & (pid >= 0) & (np.abs(fu) < 2**31)
    good &= np.array([bool(a) and bool(b) for a, b in zip(c_img, c_lab, strict=True)], dtype=bool)
    seen: set[str] = set()
    for i in range(len(rows)):
        if not good[i]:
            if not c_img[i] or not c_lab[i]:
                rep.bad(nums[i], "empty image name or labels")
            else:
                rep.bad(nums[i], f"patient id {c_pid[i]!r} / follow-up {c_fu[i]!r} not valid integers")
        elif c_img[i] in seen:
            good[i] = False
            rep.bad(nums[i], f"duplicate image {c_img[i]}")
        else:
            seen.add(c_img[i])
    idx = np.flatnonzero(good)
    rep.rows = len(idx)
    rep.check_usable()
    sel = idx.tolist()
    labels = [c_lab[i] for i in sel]
    labels = [v if ("|" not in v or ("| " not in v and " |" not in v and "||" not in v
                                     and not v.startswith("|") and not v.endswith("|")))
              else "|".join(p.strip() for p in v.split("|") if p.strip()) or v for v in labels]
    ages = []
    for i in sel:
        a = c_age[i].upper().rstrip("YMD")  # "58" or NIH's original "058Y"
        ages.append(int(a) if a.isdigit() and len(a) < 5 else -1)
    lab_arr = np.array(labels, dtype=object)
    return DataEntryTable(
        image=np.array([c_img[i] for i in sel], dtype=object), labels=lab_arr,
        follow_up=fu[idx].astype(np.int32), patient=pid[idx],
        age=np.array(ages, dtype=np.int32), sex=np.array([c_sex[i] for i in sel], dtype=object),
        view=np.array([c_view[i].upper() for i in sel], dtype=object),
        normal=lab_arr == NORMAL_LABEL, report=rep,
    )


def parse_bbox_list(data: bytes, name: str = BBOX_NAME) -> tuple[dict[str, list[Box]], ParseReport]:
    """Parse BBox_List_2017.csv → {image: [(finding, x, y, w, h), …]}; ``Infiltrate`` → ``Infiltration``.

    Header ``Image Index,Finding Label,Bbox [x,y,w,h],,,`` (skipped when present); trailing empty
    fields tolerated. Rows with fewer than 6 fields or non-finite / negative-size boxes are counted
    as malformed. An empty list (header only) is valid: the archive then simply has no boxes.
    """
    text = _text(data, name)
    rep = ParseReport(name)
    boxes: dict[str, list[Box]] = {}
    first = True
    for line, row in _rows(text, name):
        if first:
            first = False
            if _is_header(row, "Image Index"):
                continue
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < 6:
            rep.bad(line, f"{len(row)} fields, expected at least 6")
            continue
        img, lab = row[0].strip(), row[1].strip()
        try:
            x, y, w, h = (float(v) for v in row[2:6])
        except ValueError:
            rep.bad(line, "box coordinates are not numbers")
            continue
        if not img or not lab or not all(math.isfinite(v) for v in (x, y, w, h)) or w < 0 or h < 0:
            rep.bad(line, "empty name/label or invalid box")
            continue
        boxes.setdefault(img, []).append((BBOX_SPELLING.get(lab, lab), x, y, w, h))
        rep.rows += 1
    rep.check_usable(allow_empty=True)  # a box list with no rows is allowed
    return boxes, rep


def parse_image_list(data: bytes, name: str) -> tuple[list[str], ParseReport]:
    """Parse train_val_list.txt / test_list.txt: one image basename per line (CRLF, blanks ok)."""
    text = _text(data, name)
    rep = ParseReport(name)
    lines = [ln.strip() for ln in text.splitlines()]
    out = [ln for ln in lines if ln and "," not in ln and len(ln.split()) == 1]
    rep.rows = len(out)
    if rep.rows < sum(1 for ln in lines if ln):
        for line, s in enumerate(lines, 1):
            if s and ("," in s or len(s.split()) != 1):
                rep.bad(line, f"not one image name: {s[:60]!r}")
    rep.check_usable()
    return out, rep


# ------------------------------------------------------------------------------------- index
def _stage_of(name: str) -> str | None:
    """The stage of an archive member path like ``[top/]images_001/images/X.png``, if any."""
    parts = name.replace("\\", "/").split("/")
    return next((p for p in parts[:-1] if _STAGE_RE.match(p)), None)


class NIHIndex(DatasetIndex):
    """The NIH metadata joined to an archive's members.

    Arrays over *joined* images (rows that have a member), sorted by member id: the
    :class:`DatasetIndex` columns, plus ``row`` (into ``table``) and ``official`` (the role: 0
    train_val, 1 test, -1 in neither list). Stages are the ``images_NNN`` folders; splits take any
    seed, fraction and view (their defaults: the protocol :func:`open_dataset` binds, else PA,
    0.1, 42).
    """

    def __init__(self, table: DataEntryTable, boxes: dict[str, list[Box]], train_val: list[str],
                 test: list[str], member_names: Sequence[str] | np.ndarray,
                 reports: list[ParseReport] | None = None):
        self.table = table
        self.reports = list(reports or [table.report])
        # official split per metadata row
        row_of = {img: i for i, img in enumerate(table.image.tolist())}
        official_row = np.full(len(table), -1, dtype=np.int8)
        tv_rows = np.array([row_of[n] for n in train_val if n in row_of], dtype=np.int64)
        te_rows = np.array([row_of[n] for n in test if n in row_of], dtype=np.int64)
        official_row[tv_rows] = 0
        both = np.intersect1d(tv_rows, te_rows)
        if len(both):
            ex = ", ".join(table.image[both[:3]].tolist())
            raise MetadataError(
                f"{len(both)} images are in both {TRAIN_VAL_NAME} and {TEST_NAME} (e.g. {ex}); "
                "the official lists must be disjoint"
            )
        official_row[te_rows] = 1
        overlap = np.intersect1d(table.patient[tv_rows], table.patient[te_rows])
        if len(overlap):
            ex = ", ".join(str(int(p)) for p in overlap[:5])
            raise MetadataError(
                f"{len(overlap)} patients have images in both {TRAIN_VAL_NAME} and {TEST_NAME} "
                f"(e.g. patient {ex}); splits must be patient-disjoint — check the list files"
            )
        self.unlisted_rows = int((official_row < 0).sum())
        self.official_row = official_row
        # join members by basename
        stage_names: list[str] = []
        stage_pos: dict[str, int] = {}
        members: list[int] = []
        rows: list[int] = []
        stage_idx: list[int] = []
        self.duplicate_members = 0
        self.unmatched_members = 0
        joined: set[int] = set()
        names = member_names.tolist() if isinstance(member_names, np.ndarray) else member_names
        dir_stage: dict[str, str | None] = {}
        for mid, name in enumerate(names):
            if not isinstance(name, str) or not name.endswith((".png", ".PNG")):
                continue
            d, _, base = name.replace("\\", "/").rpartition("/")
            stage = dir_stage.get(d, "")
            if stage == "":
                stage = dir_stage[d] = _stage_of(name)
            if stage is None:
                continue
            r = row_of.get(base)
            if r is None:
                self.unmatched_members += 1
                continue
            if r in joined:
                self.duplicate_members += 1
                continue
            joined.add(r)
            if stage not in stage_pos:
                stage_pos[stage] = len(stage_names)
                stage_names.append(stage)
            members.append(mid)
            rows.append(r)
            stage_idx.append(stage_pos[stage])
        order = sorted(range(len(stage_names)), key=lambda i: stage_names[i])
        remap = np.empty(len(stage_names), dtype=np.int32)
        remap[order] = np.arange(len(order), dtype=np.int32)
        self.row = np.array(rows, dtype=np.int64)
        normal = table.normal[self.row]
        labels = table.labels[self.row]
        findings = np.full(len(self.row), "", dtype=object)
        for i in np.flatnonzero(~normal).tolist():
            findings[i] = "|".join(f for f in str(labels[i]).split("|") if f and f != NORMAL_LABEL)
        super().__init__(
            dataset="nih", member=np.array(members, dtype=np.int64), image=table.image[self.row],
            patient=table.patient[self.row], normal=normal, view=table.view[self.row],
            findings=findings, stage_names=[stage_names[i] for i in order],
            stage_idx=remap[np.array(stage_idx, dtype=np.int64)] if stage_idx else np.zeros(0, np.int32),
            role=official_row[self.row], boxes=boxes,
        )
        self.official = self.role
        self.rows_without_member = len(table) - len(self.member)

    # construction ---------------------------------------------------------------------------
    @classmethod
    def from_files(cls, data_entry: bytes, bbox: bytes | None, train_val: bytes, test: bytes,
                   member_names: Sequence[str] | np.ndarray) -> NIHIndex:
        """Build from the four metadata files' bytes and the archive's member names (id = position).

        ``bbox`` may be None (no boxes). Raises MetadataError on unusable files or overlapping lists.
        """
        table = parse_data_entry(data_entry)
        reports = [table.report]
        boxes: dict[str, list[Box]] = {}
        if bbox is not None:
            boxes, r = parse_bbox_list(bbox)
            reports.append(r)
        tv, r1 = parse_image_list(train_val, TRAIN_VAL_NAME)
        te, r2 = parse_image_list(test, TEST_NAME)
        return cls(table, boxes, tv, te, member_names, reports + [r1, r2])

    @classmethod
    def from_archive(cls, archive: Any) -> NIHIndex:
        """Read the metadata through ``archive.read_member(name)`` and join ``archive.index`` names.

        Metadata may sit at the root or in one top folder. MetadataError names missing files.
        """
        index = archive.index
        names = list_members(index)
        found = find_metadata_members(names)
        missing = [m for m in METADATA_NAMES if m not in found]
        if missing:
            ident = getattr(archive, "identity", "the archive")
            raise MetadataError(f"{ident} lacks {', '.join(missing)}; {_LAYOUT_HINT}")
        data = {m: archive.read_member(found[m]) for m in METADATA_NAMES}
        return cls.from_files(data[DATA_ENTRY_NAME], data[BBOX_NAME], data[TRAIN_VAL_NAME],
                              data[TEST_NAME], names)

    # queries ----------------------------------------------------------------------------------
    def resolve_stages(self, spec: str | Sequence[str] | None) -> list[str]:
        """``"all"`` / None → every stage; ``"images_001,images_003"`` or a list → those, in order given.

        Unknown stage → UserError listing the available ones.
        """
        if not self._stages and (spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all"))):
            raise UserError("the archive holds no images_NNN/images/*.png listed in the metadata")
        return super().resolve_stages(spec)

    def record(self, member_id: int) -> ImageRecord:
        """Metadata of one joined member, with follow-up, age and sex (KeyError when the member is
        not a listed image)."""
        rec = super().record(member_id)
        r, t = int(self.row[self._pos(member_id)]), self.table
        return replace(rec, follow_up=int(t.follow_up[r]), age=int(t.age[r]), sex=str(t.sex[r]))

    def summary(self) -> dict[str, Any]:
        """Counts for logs and ``imgae-dx stream``: rows, joined images, stages, skipped rows."""
        return {
            **super().summary(),
            "metadata_rows": len(self.table),
            "rows_without_member": self.rows_without_member,
            "unlisted_rows": self.unlisted_rows,
            "malformed": {r.file: r.malformed for r in self.reports if r.malformed},
        }


def find_metadata_members(names: Sequence[str]) -> dict[str, str]:
    """{metadata file: member name} for those found at the root or one folder deep (root wins)."""
    found: dict[str, tuple[int, str]] = {}
    wanted = set(METADATA_NAMES)
    for n in names:
        parts = n.replace("\\", "/").strip("/").split("/")
        if len(parts) > 2 or parts[-1] not in wanted:
            continue
        depth = len(parts)
        if parts[-1] not in found or depth < found[parts[-1]][0]:
            found[parts[-1]] = (depth, n)
    return {k: v[1] for k, v in found.items()}


def looks_like(names: Sequence[str]) -> bool:
    """True when the archive holds NIH's metadata (``Data_Entry_2017.csv`` at the root or one
    folder deep)."""
    return DATA_ENTRY_NAME in find_metadata_members(names)


def build(archive: Any, protocol: Protocol, reads: HeadReads | None = None) -> NIHIndex:
    """The NIH index of ``archive`` with ``protocol``'s settings as the splits' defaults (its
    metadata says everything: no member's head is read, ``reads`` is not used)."""
    index = NIHIndex.from_archive(archive)
    index.protocol = protocol
    return index


SPEC = DatasetSpec(
    name="nih", title="NIH ChestX-ray14", source="kaggle:nih-chest-xrays/data",
    layout="images_NNN/images/*.png + Data_Entry_2017.csv, BBox_List_2017.csv, train_val_list.txt, "
           "test_list.txt",
    protocol="official patient-disjoint lists: train on the normal (No Finding) images of "
             "train_val_list.txt patients (a seeded patient share validates), test on every image of "
             "test_list.txt patients; stages are the images_NNN folders",
    looks_like=looks_like, build=build,
)
