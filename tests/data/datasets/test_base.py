"""The dataset interface: stage cutting, the split rule over roles, records, the bound protocol."""

from __future__ import annotations

import numpy as np
import pytest

from imgae_dx.data.datasets.base import (
    ROLE_POOL,
    ROLE_TEST,
    ROLE_UNUSED,
    ROLE_VAL,
    DatasetIndex,
    IndexFacts,
    Protocol,
    cut_parts,
    index_from_columns,
    name_keys,
    unit_hash,
)
from imgae_dx.errors import MetadataError, UserError


def test_cut_parts_counts_training_images_and_keeps_ranges_contiguous():
    counted = np.array([0, 1, 1, 0, 1, 1, 0, 1, 0, 0], dtype=bool)
    idx, names = cut_parts(counted, 2)
    assert names == ["part_001", "part_002", "part_003"]
    # each part ends with its 2nd counted image; others join the part of the next counted one
    assert idx.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert [int(counted[idx == k].sum()) for k in range(3)] == [2, 2, 1]
    assert np.all(np.diff(idx) >= 0)
    idx, names = cut_parts(np.zeros(4, dtype=bool), 5)  # nothing to train on: one part
    assert names == ["part_001"] and idx.tolist() == [0, 0, 0, 0]


def test_name_keys_and_unit_hash_are_stable():
    k = name_keys(["train/person1", "test/person1", "train/person1"])
    assert k[0] == k[2] != k[1] and (k >= 0).all()
    assert k.tolist() == name_keys(["train/person1", "test/person1", "train/person1"]).tolist()
    u = unit_hash(np.arange(1000, dtype=np.int64), 3)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.05


def _columns(n_pool_patients: int = 40) -> dict:
    """Pool patients with 2 normals each, a fixed-val patient, test patients, unused abnormals."""
    images, patients, normal, role, view, findings = [], [], [], [], [], []

    def add(img, pat, nrm, rl, v="PA", f=""):
        images.append(img), patients.append(pat), normal.append(nrm), role.append(rl), view.append(v)
        findings.append(f)

    for p in range(n_pool_patients):
        add(f"n{p}a", f"p{p}", True, ROLE_POOL, "PA")
        add(f"n{p}b", f"p{p}", True, ROLE_POOL, "AP")
    add("v1", "fixed", True, ROLE_VAL)
    add("t1", "t", True, ROLE_TEST)
    add("t2", "t", False, ROLE_TEST, f="virus")
    add("u1", "p0", False, ROLE_UNUSED, f="bacteria")
    return dict(image=images, patient_name=patients, normal=np.array(normal), role=np.array(role),
                view=view, findings=findings)


def _index(protocol: Protocol, *, has_views: bool, shuffle: bool = False) -> DatasetIndex:
    c = _columns()
    member = np.arange(len(c["image"])) * 3 + 5
    if shuffle:  # columns in any order: the index sorts them by member
        perm = np.random.default_rng(0).permutation(len(member))
        member = member[perm]
        c = {k: (np.asarray(v, dtype=object)[perm] if not isinstance(v, np.ndarray) else v[perm]) for k, v in c.items()}
    return index_from_columns("test", member, c["image"], c["patient_name"], c["normal"], c["view"],
                              c["findings"], c["role"], protocol, has_views=has_views, facts=IndexFacts())


def test_split_rule_roles_and_patient_disjoint_validation():
    p = Protocol(seed=1, val_fraction=0.25, view="all", images_per_stage=10_000)
    ix = _index(p, has_views=True, shuffle=True)
    assert np.all(np.diff(ix.member) > 0) and ix.stages() == ["part_001"]
    train, val, test = (set(ix.split("all", s).tolist()) for s in ("train", "val", "test"))
    rec = {m: ix.record(m) for m in ix.member.tolist()}
    assert {rec[m].image for m in test} == {"t1", "t2"}
    assert "v1" in {rec[m].image for m in val}  # fixed validation image
    assert not {rec[m].image for m in train | val} & {"u1", "t1", "t2"}  # abnormal / test never train
    assert len(train) + len(val) == 2 * 40 + 1
    assert not {rec[m].patient for m in train} & {rec[m].patient for m in val}
    assert 4 <= len(val) // 2 <= 18  # ~a quarter of the 40 pool patients
    ix.check_disjoint()
    assign = dict(zip(ix.image.tolist(), ix.assignments().tolist(), strict=True))
    assert assign["u1"] == "unused" and assign["t2"] == "test" and assign["v1"] == "val"
    r = rec[ix.member_of("t2")]
    assert (r.label, r.findings, r.patient, r.split, r.stage) == (1, ("virus",), "t", "test", "part_001")
    ids = np.array(sorted(test))
    assert ix.labels(ids).tolist() == [rec[m].label for m in ids]
    assert ix.image_ids(ids) == [rec[m].image for m in ids]
    with pytest.raises(KeyError):
        ix.record(int(ix.member[0]) + 1)
    assert ix.member_of("nope") is None


def test_view_cohort_applies_only_to_datasets_with_views():
    p = Protocol(seed=1, val_fraction=0.25, view="PA", images_per_stage=10_000)
    with_views = _index(p, has_views=True)
    without = _index(p, has_views=False)
    n_with = sum(len(with_views.split("all", s)) for s in ("train", "val"))
    n_without = sum(len(without.split("all", s)) for s in ("train", "val"))
    assert n_without == 2 * 40 + 1 and n_with == 40 + 1  # AP normals dropped only with views
    with pytest.raises(UserError, match="unknown view"):
        with_views.view_mask("LL")


def test_parts_hold_images_per_stage_training_images_and_the_protocol_is_bound():
    p = Protocol(seed=1, val_fraction=0.25, view="all", images_per_stage=20)
    ix = _index(p, has_views=False)
    n_train = [len(ix.split(s, "train")) for s in ix.stages()]
    assert n_train[:-1] == [20] * (len(n_train) - 1) and 0 < n_train[-1] <= 20
    assert ix.resolve_stages("part_002,part_001") == ["part_002", "part_001"]
    with pytest.raises(UserError, match="available: part_001"):
        ix.resolve_stages("images_001")
    # the stages were cut for this seed and val share: another is refused, not silently mixed
    assert np.array_equal(ix.split("all", "train", seed=1), ix.split("all", "train"))
    with pytest.raises(ValueError, match="cut into stages for"):
        ix.split("all", "train", seed=2)
    with pytest.raises(ValueError, match="cut into stages for"):
        ix.split("all", "val", val_fraction=0.3)
    ix.split("all", "train", view="PA")  # no views: the cohort is ignored


def test_no_image_and_column_mismatch_are_clear_errors():
    with pytest.raises(MetadataError, match="no image of the x layout"):
        index_from_columns("x", np.zeros(0, np.int64), [], [], np.zeros(0, bool), [], [], np.zeros(0, np.int8),
                           Protocol(), has_views=False, facts=IndexFacts())
    with pytest.raises(ValueError, match="column image"):
        DatasetIndex(dataset="x", member=np.arange(2), image=["a"], patient=np.arange(2), normal=[1, 1],
                     view=["", ""], findings=["", ""], stage_idx=[0, 0], stage_names=["part_001"], role=[0, 0])
    with pytest.raises(ValueError, match="ascending"):
        DatasetIndex(dataset="x", member=[3, 1], image=["a", "b"], patient=[1, 2], normal=[1, 1],
                     view=["", ""], findings=["", ""], stage_idx=[0, 0], stage_names=["part_001"], role=[0, 0])
