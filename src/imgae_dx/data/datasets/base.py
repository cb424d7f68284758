"""The dataset interface: a columnar index of an archive's images, their labels and their splits.

Every dataset (NIH ChestX-ray14, ZhangLab, one's own folder, …) turns an archive's members into
one :class:`DatasetIndex`: numpy arrays over the images it uses, sorted by archive member id —

=============  ==========================================================================
``member``     archive member id (int64, ascending)
``image``      image id (object; unique: NIH the basename, others the path in the layout)
``patient``    patient key (int64): NIH's patient id, else a stable hash of ``patient_name``
``normal``     bool: the normal class
``view``       view position (object: ``PA``, ``AP``, … ; ``""`` unknown)
``findings``   ``|``-joined findings (object; ``""`` for normals)
``stage_idx``  index into :meth:`stages` (int32)
``role``       :data:`ROLE_POOL` (train/val by a seeded patient share), :data:`ROLE_VAL` (always
               validation), :data:`ROLE_TEST`, :data:`ROLE_UNUSED` (int8)
=============  ==========================================================================

plus ``boxes`` (image id → ``[(finding, x, y, w, h), …]`` in a frame of ``box_frame`` px).

Splits are the same rule for every dataset (:meth:`DatasetIndex.split`): ``train`` = normal images
of pool patients outside the validation slice; ``val`` = normal images of the slice (a seeded,
patient-disjoint share ``val_fraction`` of the pool's patients) and of :data:`ROLE_VAL`; ``test``
= every image of :data:`ROLE_TEST`. A view cohort (``PA``/``AP``/``all``) filters every split of
a dataset with views; a dataset without (:attr:`DatasetIndex.has_views` False) ignores it.

Stages: NIH keeps its folders (``images_NNN``); other datasets are cut by :func:`cut_parts` into
``part_001``, … of ``images_per_stage`` *training* images in archive order. Such an index is
bound to its :class:`Protocol` (seed, fractions, view, stage size): its splits and stages are
those of the protocol it was built with.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imgae_dx.errors import MetadataError, UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
VIEWS = ("PA", "AP")
ROLE_UNUSED, ROLE_POOL, ROLE_TEST, ROLE_VAL = -1, 0, 1, 2
#: The name of each role in ``split.csv``-style listings and records.
ROLE_NAMES = {ROLE_UNUSED: "", ROLE_POOL: "train_val", ROLE_TEST: "test", ROLE_VAL: "val"}
PART_PREFIX = "part_"
#: Member (at the root or in one top folder) by which ``imgae-dx sample-data`` marks its archives
#: as synthetic; the evaluator and the report read it instead of guessing from sizes.
SYNTHETIC_MARKER = "imgae_dx_synthetic.json"

Box = tuple[str, float, float, float, float]  # finding, x, y, w, h (in the box frame)


@dataclass(frozen=True)
class ImageRecord:
    """One image of the archive with its metadata.

    ``findings`` is empty for normal images; ``label`` is 0 normal / 1 abnormal; ``boxes`` are
    ``(finding, x, y, w, h)`` in the index's box frame; ``patient`` is NIH's integer id, or the
    patient's name in other datasets; ``split`` is the image's role (``train_val``, ``val``,
    ``test`` or ``""``).
    """

    image: str
    patient: int | str
    view: str
    findings: tuple[str, ...]
    label: int
    boxes: list[Box]
    stage: str
    member: int
    follow_up: int = -1
    age: int = -1
    sex: str = ""
    split: str = ""


@dataclass(frozen=True)
class Protocol:
    """The settings a cut dataset's splits and stages are built with (``data.*`` and ``seed``)."""

    seed: int = 42
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    view: str = "PA"
    images_per_stage: int = 2500

    @classmethod
    def from_config(cls, data_cfg: Any, seed: int) -> Protocol:
        """The protocol of a run: ``data.val_fraction``, ``test_fraction``, ``view``, ``images_per_stage``."""
        return cls(seed=int(seed), val_fraction=float(data_cfg.val_fraction),
                   test_fraction=float(data_cfg.test_fraction), view=str(data_cfg.view),
                   images_per_stage=int(data_cfg.images_per_stage))


@dataclass(frozen=True)
class HeadReads:
    """How a dataset reads the first bytes of many members (content sniffing, DICOM headers) and
    where it keeps what it learnt from them: the run's request settings (``data.max_request_mb``,
    ``gap_bridge_kb``, ``requests_in_flight``), the cache folder (``data.index_cache_dir``; None:
    no cache) and whether this process draws progress bars (rank 0, not quiet)."""

    cache_dir: str | None = None
    max_request_bytes: int = 16 << 20
    gap_bridge_bytes: int = 256 << 10
    in_flight: int = 4
    progress: bool = False

    @classmethod
    def from_config(cls, data_cfg: Any, *, progress: bool) -> HeadReads:
        """The reads of a run's ``data`` settings."""
        return cls(cache_dir=data_cfg.index_cache_dir,
                   max_request_bytes=int(float(data_cfg.max_request_mb) * (1 << 20)),
                   gap_bridge_bytes=int(float(data_cfg.gap_bridge_kb) * 1024),
                   in_flight=int(data_cfg.requests_in_flight), progress=bool(progress))


@dataclass(frozen=True)
class DatasetSpec:
    """What the registry knows of a dataset: its name, where it comes from, its layout and
    protocol (one line each, for logs, errors, docs and reports), how to recognise its layout
    from member names, and how to build its index from an opened archive (with the run's
    :class:`Protocol` and :class:`HeadReads`)."""

    name: str
    title: str
    source: str
    layout: str
    protocol: str
    looks_like: Callable[[Sequence[str]], bool]
    build: Callable[[Any, Protocol, HeadReads], DatasetIndex]


def unit_hash(keys: np.ndarray, seed: int) -> np.ndarray:
    """Per key uniform [0, 1) from a splitmix64 hash of (key, seed): stable across stages and runs."""
    with np.errstate(over="ignore"):
        z = keys.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


#: Salt of the test share's hash (the validation share uses the seed itself): independent draws.
TEST_SALT = 0x7E57


def held_out(keys: np.ndarray, protocol: Protocol) -> np.ndarray:
    """Bool per patient key: in the seeded test share ``protocol.test_fraction`` (a patient's draw
    is independent of its class and of the validation draw, and the same in any subset)."""
    return unit_hash(keys, protocol.seed + TEST_SALT) < protocol.test_fraction


def name_keys(names: Sequence[str]) -> np.ndarray:
    """A stable int64 key per name (the first 8 bytes of its BLAKE2b digest, top bit cleared)."""
    out = np.empty(len(names), dtype=np.int64)
    for i, n in enumerate(names):
        d = hashlib.blake2b(n.encode("utf-8"), digest_size=8).digest()
        out[i] = int.from_bytes(d, "little") & 0x7FFFFFFFFFFFFFFF
    return out


def member_names(archive_index: Any) -> list[str]:
    """Every member name of an :class:`~imgae_dx.streaming.archive_index.ArchiveIndex` (id = position)."""
    names = getattr(archive_index, "names", None)
    if callable(names):
        return list(names())
    return [archive_index.name(i) for i in range(len(archive_index))]


def part_name(k: int) -> str:
    """``part_001`` for ``k`` = 0."""
    return f"{PART_PREFIX}{k + 1:03d}"


def cut_parts(counted: np.ndarray, images_per_stage: int) -> tuple[np.ndarray, list[str]]:
    """Stages of ``images_per_stage`` counted images in archive order.

    Args:
        counted: bool per image, in archive (member) order: the images a part holds a fixed number
            of (a run's training images).
        images_per_stage: counted images per part (the last part holds the rest).

    Returns:
        ``(stage_idx int32 per image, part names)``. Part ``k`` ends with its last counted image;
        an image that is not counted belongs to the part of the next counted image (images after
        the last one to the last part), so every part is one contiguous range of the archive.
        With no counted image there is one part holding every image.
    """
    n_counted = int(counted.sum())
    n_parts = max(1, math.ceil(n_counted / images_per_stage))
    before = np.cumsum(counted) - counted  # counted images strictly before each image
    idx = np.minimum(before // images_per_stage, n_parts - 1).astype(np.int32)
    return idx, [part_name(k) for k in range(n_parts)]


@dataclass
class IndexFacts:
    """What building an index skipped or decided, for logs and ``summary()``: counts by reason
    (``{"junk files": 12, "duplicate copies": 624}``) and one-line notes."""

    skipped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def skip(self, why: str, n: int = 1) -> None:
        if n:
            self.skipped[why] = self.skipped.get(why, 0) + int(n)


class DatasetIndex:
    """An archive's images as columns (see the module doc); one subclass or builder per dataset.

    Args:
        dataset: the dataset's name (``nih``, ``zhanglab``, ``rsna``, ``folder``).
        member, image, patient, normal, view, findings, stage_idx, role: the columns, one entry
            per image, sorted by ``member``.
        stage_names: the stages ``stage_idx`` points into, in training order.
        boxes: image id → boxes in a ``box_frame`` px frame.
        patient_name: per image the patient's name (object), when patients are named, not numbered.
        has_views: False: the dataset has no view positions and ignores a view cohort.
        protocol: the protocol a cut index was built with (None: stages do not depend on it, and
            :meth:`split` takes any seed / fraction / view).
        facts: what the build skipped (logged once by :func:`~imgae_dx.data.datasets.open_dataset`).
        box_frame: side of the frame box coordinates are in.
    """

    name: str = "dataset"

    def __init__(self, *, dataset: str, member: np.ndarray, image: np.ndarray, patient: np.ndarray,
                 normal: np.ndarray, view: np.ndarray, findings: np.ndarray, stage_idx: np.ndarray,
                 stage_names: list[str], role: np.ndarray, boxes: dict[str, list[Box]] | None = None,
                 patient_name: np.ndarray | None = None, has_views: bool = True,
                 protocol: Protocol | None = None, facts: IndexFacts | None = None,
                 box_frame: float = 1024.0) -> None:
        self.name = dataset
        self.member = np.asarray(member, dtype=np.int64)
        n = len(self.member)
        if n and np.any(np.diff(self.member) <= 0):
            raise ValueError("DatasetIndex: member ids must be unique and ascending")
        self.image = np.asarray(image, dtype=object)
        self.patient = np.asarray(patient, dtype=np.int64)
        self.normal = np.asarray(normal, dtype=bool)
        self.view = np.asarray(view, dtype=object)
        self.findings = np.asarray(findings, dtype=object)
        self.stage_idx = np.asarray(stage_idx, dtype=np.int32)
        self.role = np.asarray(role, dtype=np.int8)
        self.patient_name = None if patient_name is None else np.asarray(patient_name, dtype=object)
        for col in ("image", "patient", "normal", "view", "findings", "stage_idx", "role"):
            if len(getattr(self, col)) != n:
                raise ValueError(f"DatasetIndex: column {col} has {len(getattr(self, col))} rows, not {n}")
        self._stages = list(stage_names)
        self.boxes = dict(boxes or {})
        self.has_views = bool(has_views)
        self.protocol = protocol
        self.facts = facts or IndexFacts()
        self.box_frame = float(box_frame)
        self.synthetic = False  # set by open_dataset from the archive's SYNTHETIC_MARKER
        self._by_image: dict[str, int] | None = None

    # ------------------------------------------------------------------------------ stages
    def __len__(self) -> int:
        return len(self.member)

    def stages(self) -> list[str]:
        """Stages that hold at least one image, in training order."""
        return list(self._stages)

    def resolve_stages(self, spec: str | Sequence[str] | None) -> list[str]:
        """``"all"`` / None → every stage; ``"a,b"`` or a list → those, in the order given.

        Unknown stage → UserError listing the available ones.
        """
        if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
            if not self._stages:
                raise UserError(f"the archive holds no image of the {self.name} layout")
            return self.stages()
        items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
        items = [s for s in items if s]
        if any(s.lower() == "all" for s in items):
            return self.resolve_stages("all")
        unknown = [s for s in items if s not in self._stages]
        if unknown or not items:
            raise UserError(
                f"unknown stage(s) {', '.join(unknown) or '(none given)'}; available: "
                f"{', '.join(self._stages) or '(none)'} or 'all'"
            )
        return list(dict.fromkeys(items))

    # ------------------------------------------------------------------------------ splits
    def _settings(self, view: str | None, val_fraction: float | None,
                  seed: int | None) -> tuple[str, float, int]:
        """The split settings: given values, else the bound protocol's (else NIH's defaults). A
        cut index refuses settings other than those its stages were cut with."""
        p = self.protocol
        got = (view if view is not None else (p.view if p else "PA"),
               float(val_fraction) if val_fraction is not None else (p.val_fraction if p else 0.1),
               int(seed) if seed is not None else (p.seed if p else 42))
        if p is not None and self.cut_by_protocol:
            bound = (p.view, p.val_fraction, p.seed)
            if (got[0].upper() != bound[0].upper() and self.has_views) or got[1:] != bound[1:]:
                raise ValueError(
                    f"this {self.name} index was cut into stages for view={bound[0]}, "
                    f"val_fraction={bound[1]}, seed={bound[2]}; build one with the other settings "
                    f"(open_dataset) instead of asking it for view={got[0]}, val_fraction={got[1]}, "
                    f"seed={got[2]}")
        return got

    @property
    def cut_by_protocol(self) -> bool:
        """True when the stages are ``part_NNN`` cuts that depend on the protocol."""
        return any(s.startswith(PART_PREFIX) for s in self._stages)

    def val_patients_mask(self, val_fraction: float | None = None, seed: int | None = None) -> np.ndarray:
        """Bool per image: a pool image whose patient falls in the seeded validation slice."""
        _, vf, sd = self._settings(None, val_fraction, seed)
        if not 0.0 <= vf < 1.0:
            raise UserError(f"val_fraction must be in [0, 1), got {vf}")
        return (unit_hash(self.patient, sd) < vf) & (self.role == ROLE_POOL)

    def cohort(self, view: str) -> str:
        """The view cohort a run configured with ``view`` actually uses: ``all`` when the dataset
        has no view positions (it ignores the setting), else ``view``."""
        return view if self.has_views else "all"

    def view_mask(self, view: str | None = None) -> np.ndarray:
        """Bool per image: in the view cohort (every image when the dataset has no views)."""
        v = view if view is not None else (self.protocol.view if self.protocol else "PA")
        v = (v or "all").strip().upper()
        if v != "ALL" and v not in VIEWS:
            raise UserError(f"unknown view {v!r}; expected PA, AP or all")
        if v == "ALL" or not self.has_views:
            return np.ones(len(self.member), dtype=bool)
        return self.view == v

    def split_masks(self, view: str | None = None, val_fraction: float | None = None,
                    seed: int | None = None) -> dict[str, np.ndarray]:
        """``{"train", "val", "test"}`` → bool per image (every stage), cohort applied."""
        v, vf, sd = self._settings(view, val_fraction, seed)
        vmask = self.view_mask(v)
        valm = self.val_patients_mask(vf, sd)
        return {
            "train": (self.role == ROLE_POOL) & ~valm & self.normal & vmask,
            "val": (valm | (self.role == ROLE_VAL)) & self.normal & vmask,
            "test": (self.role == ROLE_TEST) & vmask,
        }

    def split(self, stage: str | Sequence[str] | None, split: str, view: str | None = None,
              val_fraction: float | None = None, seed: int | None = None) -> np.ndarray:
        """Member ids (int64, ascending) of one split of one stage (or several / ``"all"``).

        train: normal pool images outside the validation slice; val: normal images of the slice
        (a seeded, patient-disjoint share ``val_fraction`` of the pool's patients, the same
        whatever the stage) and fixed validation images; test: every test image. ``view``: PA, AP
        or all (ignored by datasets without views). Settings left None come from the protocol.
        """
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        stages = self.resolve_stages(stage)
        smask = np.isin(self.stage_idx, [self._stages.index(s) for s in stages])
        return np.sort(self.member[self.split_masks(view, val_fraction, seed)[split] & smask])

    def assignments(self, view: str | None = None, val_fraction: float | None = None,
                    seed: int | None = None) -> np.ndarray:
        """Per image its split in a run: ``train``, ``val``, ``test`` or ``unused`` (object array)."""
        out = np.full(len(self.member), "unused", dtype=object)
        for name, m in self.split_masks(view, val_fraction, seed).items():
            out[m] = name
        return out

    def check_disjoint(self, val_fraction: float | None = None, seed: int | None = None) -> None:
        """Raise MetadataError if any patient falls in two of train / val / test."""
        valm = self.val_patients_mask(val_fraction, seed) | (self.role == ROLE_VAL)
        groups = {"train": (self.role == ROLE_POOL) & ~valm, "val": valm, "test": self.role == ROLE_TEST}
        pats = {k: np.unique(self.patient[m]) for k, m in groups.items()}
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            both = np.intersect1d(pats[a], pats[b])
            if len(both):
                raise MetadataError(
                    f"patients in both {a} and {b} (e.g. {self._patient_text(both[0])}): splits "
                    "are not patient-disjoint"
                )

    def _patient_text(self, key: int) -> str:
        if self.patient_name is None:
            return str(int(key))
        return str(self.patient_name[np.flatnonzero(self.patient == key)[0]])

    # ------------------------------------------------------------------------------ records
    def _pos(self, member_id: int) -> int:
        i = int(np.searchsorted(self.member, member_id))
        if i >= len(self.member) or self.member[i] != member_id:
            raise KeyError(f"archive member {member_id} is not an image of this {self.name} index")
        return i

    def _positions(self, member_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(member_ids, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.member, ids), 0, max(len(self.member) - 1, 0))
        if len(ids) and not np.array_equal(self.member[pos], ids):
            raise KeyError(f"some member ids are not images of this {self.name} index")
        return pos

    def record(self, member_id: int) -> ImageRecord:
        """Metadata of one image (KeyError when the member is not one of the index's images)."""
        i = self._pos(member_id)
        img = str(self.image[i])
        f = str(self.findings[i])
        patient: int | str = (int(self.patient[i]) if self.patient_name is None
                              else str(self.patient_name[i]))
        return ImageRecord(
            image=img, patient=patient, view=str(self.view[i]),
            findings=tuple(x for x in f.split("|") if x), label=0 if self.normal[i] else 1,
            boxes=list(self.boxes.get(img, [])), stage=self._stages[int(self.stage_idx[i])],
            member=int(member_id), split=ROLE_NAMES[int(self.role[i])],
        )

    def labels(self, member_ids: np.ndarray) -> np.ndarray:
        """0/1 labels (int64) of many members at once."""
        return (~self.normal[self._positions(member_ids)]).astype(np.int64)

    def image_ids(self, member_ids: np.ndarray) -> list[str]:
        """Image ids of many members at once."""
        return [str(x) for x in self.image[self._positions(member_ids)].tolist()]

    def member_of(self, image: str) -> int | None:
        """Archive member id of an image id, or None."""
        if self._by_image is None:
            self._by_image = {str(im): i for i, im in enumerate(self.image.tolist())}
        i = self._by_image.get(image)
        return None if i is None else int(self.member[i])

    def patient_names(self) -> np.ndarray:
        """Per image the patient as written in records and ``split.csv`` (object array of str)."""
        if self.patient_name is not None:
            return self.patient_name
        return self.patient.astype(str).astype(object)

    # ------------------------------------------------------------------------------ summary
    def summary(self) -> dict[str, Any]:
        """Counts for logs and ``imgae-dx stream``: images, normals, stages, patients, skipped."""
        return {
            "dataset": self.name,
            "images": len(self.member),
            "normal": int(self.normal.sum()),
            "abnormal": int((~self.normal).sum()),
            "patients": int(len(np.unique(self.patient))),
            "stages": {s: int((self.stage_idx == i).sum()) for i, s in enumerate(self._stages)},
            "skipped": dict(self.facts.skipped),
            "boxes": sum(len(v) for v in self.boxes.values()),
        }


def index_from_columns(dataset: str, member: np.ndarray, image: Sequence[str], patient_name: Sequence[str],
                       normal: np.ndarray, view: Sequence[str], findings: Sequence[str], role: np.ndarray,
                       protocol: Protocol, *, has_views: bool, facts: IndexFacts,
                       boxes: dict[str, list[Box]] | None = None) -> DatasetIndex:
    """A cut :class:`DatasetIndex` from per-image columns in any order: sorted by member, patients
    keyed by :func:`name_keys`, stages cut by :func:`cut_parts` on the protocol's training split.

    Raises:
        MetadataError: no image at all.
    """
    member = np.asarray(member, dtype=np.int64)
    if not len(member):
        raise MetadataError(f"the archive holds no image of the {dataset} layout")
    order = np.argsort(member, kind="stable")
    pname = np.asarray(list(patient_name), dtype=object)[order]
    cols = dict(
        dataset=dataset, member=member[order], image=np.asarray(list(image), dtype=object)[order],
        patient=name_keys(pname.tolist()), patient_name=pname,
        normal=np.asarray(normal, dtype=bool)[order], view=np.asarray(list(view), dtype=object)[order],
        findings=np.asarray(list(findings), dtype=object)[order],
        role=np.asarray(role, dtype=np.int8)[order],
    )
    # a first index with one stage gives the training split the parts are cut on
    probe = DatasetIndex(**cols, stage_idx=np.zeros(len(member), np.int32), stage_names=["all"],
                         has_views=has_views, protocol=protocol)
    counted = probe.split_masks(protocol.view, protocol.val_fraction, protocol.seed)["train"]
    stage_idx, names = cut_parts(counted, protocol.images_per_stage)
    return DatasetIndex(**cols, stage_idx=stage_idx, stage_names=names, has_views=has_views,
                        protocol=protocol, facts=facts, boxes=boxes)
