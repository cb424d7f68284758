"""ZhangLab pediatric pneumonia (``--dataset zhanglab``): Kaggle ``paultimothymooney/chest-xray-pneumonia``.

Layout (Kermany et al., Cell 2018; Kaggle's re-upload)::

    chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg

Kaggle's archive also carries macOS junk (``__MACOSX/…/._NAME`` AppleDouble files, a top-level
``chest_xray/__MACOSX``, ``.DS_Store``) and a second copy of the whole tree
(``chest_xray/chest_xray/…``). Junk is skipped; copies are deduplicated by the path under the
split folder (``train/NORMAL/IM-0115-0001.jpeg``), keeping the shallowest (then first) copy. The
image id is that relative path.

Patients come from file names; ``personN`` numbering restarts in each split folder, so a patient
key includes the split folder: ``IM-0115-0001.jpeg`` → ``train/IM-0115``,
``NORMAL2-IM-1427-0001.jpeg`` → ``train/NORMAL2-IM-1427``, ``person1_bacteria_1.jpeg`` and
``person1_virus_6.jpeg`` → ``train/person1``. Findings: ``bacteria`` / ``virus`` (from the name;
``pneumonia`` when the name says neither). No view positions: ``data.view`` is ignored.

Protocol (SQUID, Xiang et al., CVPR 2023): train on ``train/NORMAL`` + ``val/NORMAL`` (a seeded
patient share ``data.val_fraction`` of them validates), test on ``test/`` (234 normal vs 390
pneumonia on the real set); ``train/PNEUMONIA`` and ``val/PNEUMONIA`` are not used. Stages:
``part_NNN`` of ``data.images_per_stage`` training images in archive order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from imgae_dx.data.datasets.base import (
    ROLE_POOL,
    ROLE_TEST,
    ROLE_UNUSED,
    SYNTHETIC_MARKER,
    DatasetIndex,
    DatasetSpec,
    HeadReads,
    IndexFacts,
    Protocol,
    index_from_columns,
    member_names,
)

SPLIT_DIRS = ("train", "val", "test")
CLASS_DIRS = ("NORMAL", "PNEUMONIA")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
_PERSON = re.compile(r"^(person\d+)_(bacteria|virus)_\d+$", re.IGNORECASE)
_IM = re.compile(r"^(.*IM-\d+)-\d+$", re.IGNORECASE)


def is_junk(parts: Sequence[str]) -> bool:
    """macOS metadata: anything under ``__MACOSX``, AppleDouble ``._NAME`` files, ``.DS_Store``."""
    return "__MACOSX" in parts or parts[-1].startswith("._") or parts[-1] == ".DS_Store"


def layout_key(name: str) -> tuple[str, int] | None:
    """``(split/CLASS/file, depth)`` of an image member in the layout (depth: folders above the
    split folder), or None for anything else (junk included)."""
    parts = name.replace("\\", "/").strip("/").split("/")
    if len(parts) < 3 or is_junk(parts) or not parts[-1].lower().endswith(IMAGE_SUFFIXES):
        return None
    split, cls = parts[-3], parts[-2]
    if split not in SPLIT_DIRS or cls not in CLASS_DIRS:
        return None
    return f"{split}/{cls}/{parts[-1]}", len(parts) - 3


def patient_of(split: str, filename: str) -> str:
    """The patient key of an image: its split folder and the name's patient part."""
    stem = filename.rsplit(".", 1)[0]
    m = _PERSON.match(stem) or _IM.match(stem)
    return f"{split}/{m.group(1) if m else stem}"


def finding_of(cls: str, filename: str) -> str:
    """``""`` (NORMAL), else ``bacteria`` / ``virus`` from the name, else ``pneumonia``."""
    if cls == "NORMAL":
        return ""
    m = _PERSON.match(filename.rsplit(".", 1)[0])
    return m.group(2).lower() if m else "pneumonia"


def looks_like(names: Sequence[str]) -> bool:
    """True when some member is an image of ``{train,val,test}/{NORMAL,PNEUMONIA}/``."""
    return any(layout_key(n) is not None for n in names)


def build(archive: Any, protocol: Protocol, reads: HeadReads | None = None) -> DatasetIndex:
    """The ZhangLab index of ``archive`` (see the module doc; told by member names alone, so
    ``reads`` is not used)."""
    names = member_names(archive.index)
    facts = IndexFacts()
    best: dict[str, tuple[int, int]] = {}  # key → (depth, member id)
    crc = getattr(archive.index, "crc", None)
    differing = 0
    for mid, name in enumerate(names):
        parts = name.replace("\\", "/").strip("/").split("/")
        if is_junk(parts):
            facts.skip("macOS junk files (__MACOSX, ._*, .DS_Store)")
            continue
        hit = layout_key(name)
        if hit is None and parts[-1] != SYNTHETIC_MARKER:
            facts.skip("members outside {train,val,test}/{NORMAL,PNEUMONIA}/")
            continue
        if hit is None:
            continue
        key, depth = hit
        prev = best.get(key)
        if prev is None:
            best[key] = (depth, mid)
            continue
        facts.skip("second copies of an image (chest_xray/chest_xray/…)")
        if crc is not None and getattr(archive.index, "crc_known", True) and crc[prev[1]] != crc[mid]:
            differing += 1
        if depth < prev[0]:
            best[key] = (depth, mid)
    if differing:
        facts.notes.append(f"{differing} second copies differ in content from the copy kept")
    keys = sorted(best, key=lambda k: best[k][1])
    member = np.array([best[k][1] for k in keys], dtype=np.int64)
    split = [k.split("/", 1)[0] for k in keys]
    cls = [k.split("/")[1] for k in keys]
    files = [k.rsplit("/", 1)[1] for k in keys]
    normal = np.array([c == "NORMAL" for c in cls], dtype=bool)
    role = np.array([ROLE_TEST if s == "test" else (ROLE_POOL if c == "NORMAL" else ROLE_UNUSED)
                     for s, c in zip(split, cls, strict=True)], dtype=np.int8)
    return index_from_columns(
        "zhanglab", member, keys, [patient_of(s, f) for s, f in zip(split, files, strict=True)],
        normal, [""] * len(keys), [finding_of(c, f) for c, f in zip(cls, files, strict=True)], role,
        protocol, has_views=False, facts=facts)


SPEC = DatasetSpec(
    name="zhanglab", title="ZhangLab pediatric pneumonia (Kermany et al. 2018)",
    source="kaggle:paultimothymooney/chest-xray-pneumonia",
    layout="chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg",
    protocol="SQUID (CVPR 2023): train on train/NORMAL + val/NORMAL (a seeded patient share "
             "validates), test on test/ (NORMAL vs PNEUMONIA: bacteria, virus)",
    looks_like=looks_like, build=build,
)
