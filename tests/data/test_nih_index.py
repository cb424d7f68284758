"""NIH metadata parsers and NIHIndex: malformed headers, joins, stages, patient-disjoint splits."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgae_dx.data.datasets.nih import (
    BBOX_HEADER,
    DATA_ENTRY_HEADER,
    NIHIndex,
    find_metadata_members,
    parse_bbox_list,
    parse_data_entry,
    parse_image_list,
)
from imgae_dx.errors import MetadataError, UserError

# --------------------------------------------------------------------------- hand-written data
# patient: (images as (follow-up, labels, view))
PATIENTS = {
    1: [(0, "Cardiomegaly", "PA"), (1, "Cardiomegaly|Emphysema", "PA"), (2, "No Finding", "PA")],
    2: [(0, "No Finding", "PA"), (1, "No Finding", "AP")],
    3: [(0, "No Finding", "PA")],
    4: [(0, "No Finding", "PA"), (1, "Infiltration", "AP")],
    5: [(0, "No Finding", "AP")],
    6: [(0, "Nodule", "PA"), (1, "No Finding", "PA")],
    7: [(0, "No Finding", "PA"), (1, "Effusion|Infiltration", "PA")],
    8: [(0, "No Finding", "PA")],  # listed but not in the archive
}
TEST_PATIENTS = {6, 7}


def _name(pid: int, fu: int) -> str:
    return f"{pid:08d}_{fu:03d}.png"


def _data_entry(eol: str = "\n") -> bytes:
    lines = [DATA_ENTRY_HEADER]
    for pid, imgs in PATIENTS.items():
        for fu, lab, view in imgs:
            lines.append(f"{_name(pid, fu)},{lab},{fu},{pid},{40 + pid},M,{view},2500,2048,0.168,0.168")
    return (eol.join(lines) + eol).encode()


def _lists() -> tuple[bytes, bytes]:
    tv = [_name(p, fu) for p, imgs in PATIENTS.items() for fu, *_ in imgs if p not in TEST_PATIENTS]
    te = [_name(p, fu) for p, imgs in PATIENTS.items() for fu, *_ in imgs if p in TEST_PATIENTS]
    return ("\n".join(tv) + "\n").encode(), ("\r\n".join(te) + "\r\n").encode()


BBOX = (
    BBOX_HEADER + "\n"
    "00000006_000.png,Nodule,100.5,200.25,30,40,,,\n"
    "00000007_001.png,Infiltrate,300,310,120,130,,,\n"
    "00000007_001.png,Effusion,10,700,200,150\n"
).encode()


def _members(top: str = "") -> list[str]:
    """Archive member names: metadata, patients 1-3 in images_001, 4-7 in images_002 (8 absent)."""
    names = [f"{top}BBox_List_2017.csv", f"{top}Data_Entry_2017.csv"]
    for pid, imgs in PATIENTS.items():
        if pid == 8:
            continue
        stage = "images_001" if pid <= 3 else "images_002"
        names += [f"{top}{stage}/images/{_name(pid, fu)}" for fu, *_ in imgs]
    names += [f"{top}test_list.txt", f"{top}train_val_list.txt", f"{top}images_002/"]
    return names


def _index(**kw) -> NIHIndex:
    tv, te = _lists()
    return NIHIndex.from_files(_data_entry(), BBOX, tv, te, kw.get("members", _members()))


def _names(index: NIHIndex, ids: np.ndarray) -> list[str]:
    return [index.record(int(i)).image for i in ids]


# --------------------------------------------------------------------------------- parsers
def test_data_entry_malformed_header_read_by_position() -> None:
    t = parse_data_entry(_data_entry())
    assert len(t) == 14 and t.report.malformed == 0
    assert t.image[0] == "00000001_000.png" and t.labels[1] == "Cardiomegaly|Emphysema"
    assert t.patient[0] == 1 and t.follow_up[1] == 1 and t.view[0] == "PA" and t.age[0] == 41
    assert t.normal.tolist().count(True) == 9


def test_data_entry_tolerates_crlf_quotes_trailing_commas_and_reports_bad_rows() -> None:
    text = (
        DATA_ENTRY_HEADER + "\r\n"
        '00000001_000.png,"Cardiomegaly|Effusion",0,1,058Y,M,PA,2682,2749,0.143,0.143,\r\n'
        '"00000001_001.png",No Finding,1,"1",58,F,AP,2500,2048,0.168,0.168,,\r\n'
        "00000002_000.png,No Finding\r\n"  # too few fields
        "00000003_000.png,No Finding,0,abc,30,M,PA,1,1,1,1\r\n"  # patient id not a number
        "00000001_000.png,No Finding,0,1,58,M,PA,1,1,1,1\r\n"  # duplicate
        "\r\n"
    ).encode()
    t = parse_data_entry(text)
    assert t.image.tolist() == ["00000001_000.png", "00000001_001.png"]
    assert t.age.tolist() == [58, 58] and t.view.tolist() == ["PA", "AP"]
    assert t.labels[0] == "Cardiomegaly|Effusion" and t.normal.tolist() == [False, True]
    assert t.report.malformed == 3
    assert t.report.examples[0].startswith("Data_Entry_2017.csv:4:")
    assert "malformed" in str(t.report)


def test_data_entry_without_header_and_with_bom() -> None:
    t = parse_data_entry(b"\xef\xbb\xbf00000009_000.png,Mass,0,9,50,F,PA,1,1,1,1\n")
    assert t.image.tolist() == ["00000009_000.png"] and not t.normal[0]


@pytest.mark.parametrize("data", [b"", DATA_ENTRY_HEADER.encode() + b"\n", b"<html>403</html>\n",
                                  b"\xff\xfe\x00garbage", b"a,b\n" * 40])
def test_unusable_data_entry_raises_metadata_error_naming_file(data: bytes) -> None:
    with pytest.raises(MetadataError, match="Data_Entry_2017.csv"):
        parse_data_entry(data)


def test_bbox_list_spelling_and_trailing_fields() -> None:
    boxes, rep = parse_bbox_list(BBOX + b"00000001_000.png,Mass,1,2,nan,4,,,\nbroken\n")
    assert boxes["00000007_001.png"][0] == ("Infiltration", 300.0, 310.0, 120.0, 130.0)
    assert boxes["00000006_000.png"] == [("Nodule", 100.5, 200.25, 30.0, 40.0)]
    assert rep.rows == 3 and rep.malformed == 2
    empty, rep2 = parse_bbox_list(BBOX_HEADER.encode() + b"\r\n")
    assert empty == {} and rep2.rows == 0  # a header-only list is valid: no boxes


def test_image_lists() -> None:
    names, rep = parse_image_list(b"a.png\r\n\r\n b.png \nc.png d.png\n", "test_list.txt")
    assert names == ["a.png", "b.png"] and rep.malformed == 1
    with pytest.raises(MetadataError, match="train_val_list.txt"):
        parse_image_list(b"\n\n", "train_val_list.txt")


# ---------------------------------------------------------------------------------- index
def test_join_stages_and_rows_without_members() -> None:
    ix = _index()
    assert ix.stages() == ["images_001", "images_002"]
    assert len(ix) == 13 and ix.rows_without_member == 1  # patient 8 is listed, not archived
    s = ix.summary()
    assert s["stages"] == {"images_001": 6, "images_002": 7} and s["boxes"] == 3


def test_metadata_in_a_top_folder() -> None:
    names = _members("data/")
    found = find_metadata_members(names)
    assert found["Data_Entry_2017.csv"] == "data/Data_Entry_2017.csv"
    ix = _index(members=names)
    assert ix.stages() == ["images_001", "images_002"] and len(ix) == 13


def test_resolve_stages() -> None:
    ix = _index()
    assert ix.resolve_stages("all") == ["images_001", "images_002"]
    assert ix.resolve_stages(None) == ["images_001", "images_002"]
    assert ix.resolve_stages("images_002, images_001") == ["images_002", "images_001"]
    assert ix.resolve_stages(["images_002"]) == ["images_002"]
    with pytest.raises(UserError, match="images_001, images_002"):
        ix.resolve_stages("images_009")


def test_split_rules() -> None:
    ix = _index()
    # val_fraction=0: no val slice, train = every normal train_val image (view all)
    train = _names(ix, ix.split("all", "train", view="all", val_fraction=0.0, seed=0))
    assert train == ["00000001_002.png", "00000002_000.png", "00000002_001.png", "00000003_000.png",
                     "00000004_000.png", "00000005_000.png"]
    test = _names(ix, ix.split("all", "test", view="all"))
    assert test == ["00000006_000.png", "00000006_001.png", "00000007_000.png", "00000007_001.png"]
    assert ix.labels(ix.split("all", "test", view="all")).tolist() == [1, 0, 0, 1]
    assert len(ix.split("all", "val", view="all", val_fraction=0.0, seed=0)) == 0
    # stage restriction
    assert _names(ix, ix.split("images_001", "train", view="all", val_fraction=0.0)) == train[:4]
    with pytest.raises(UserError, match="split"):
        ix.split("all", "everything")


def test_view_filter_applies_to_every_split() -> None:
    ix = _index()
    pa = _names(ix, ix.split("all", "train", view="PA", val_fraction=0.0))
    ap = _names(ix, ix.split("all", "train", view="AP", val_fraction=0.0))
    assert pa == ["00000001_002.png", "00000002_000.png", "00000003_000.png", "00000004_000.png"]
    assert ap == ["00000002_001.png", "00000005_000.png"]
    assert all(ix.record(int(i)).view == "PA" for i in ix.split("all", "test", view="PA"))
    with pytest.raises(UserError, match="view"):
        ix.split("all", "test", view="LL")


def test_val_slice_is_patient_disjoint_seeded_and_stage_independent() -> None:
    ix = _index()
    for seed in range(20):
        tr = ix.split("all", "train", "all", 0.4, seed)
        va = ix.split("all", "val", "all", 0.4, seed)
        te = ix.split("all", "test", "all", 0.4, seed)
        pats = [{ix.record(int(i)).patient for i in s} for s in (tr, va, te)]
        assert not (pats[0] & pats[1]) and not (pats[0] & pats[2]) and not (pats[1] & pats[2])
        assert set(_names(ix, tr)) | set(_names(ix, va)) == set(
            _names(ix, ix.split("all", "train", "all", 0.0, seed)))
        # val membership of a patient does not depend on which stages are asked for
        va1 = set(_names(ix, ix.split("images_001", "val", "all", 0.4, seed)))
        assert va1 == {n for n in _names(ix, va) if int(n[:8]) <= 3}
        ix.check_disjoint(0.4, seed)
    assert np.array_equal(ix.split("all", "val", "all", 0.4, 3), ix.split("all", "val", "all", 0.4, 3))
    sizes = {len(ix.split("all", "val", "all", 0.4, s)) for s in range(20)}
    assert len(sizes) > 1  # the seed changes the slice


def test_val_fraction_roughly_respected_on_many_patients() -> None:
    n = 4000
    de = [DATA_ENTRY_HEADER] + [f"{_name(p, 0)},No Finding,0,{p},30,M,PA,1,1,1,1" for p in range(1, n + 1)]
    tv = "\n".join(_name(p, 0) for p in range(1, n + 1)).encode()
    ix = NIHIndex.from_files("\n".join(de).encode(), None, tv, b"99999999_000.png\n", [f"images_001/images/{_name(p, 0)}"
                                                                         for p in range(1, n + 1)])
    share = len(ix.split("all", "val", "PA", 0.1, 7)) / n
    assert 0.08 < share < 0.12


def test_record_contents() -> None:
    ix = _index()
    mid = _members().index("images_002/images/00000007_001.png")
    r = ix.record(mid)
    assert r.image == "00000007_001.png" and r.patient == 7 and r.view == "PA"
    assert r.findings == ("Effusion", "Infiltration") and r.label == 1
    assert r.boxes == [("Infiltration", 300.0, 310.0, 120.0, 130.0), ("Effusion", 10.0, 700.0, 200.0, 150.0)]
    assert r.stage == "images_002" and r.member == mid and r.split == "test"
    normal = ix.record(_members().index("images_001/images/00000003_000.png"))
    assert normal.findings == () and normal.label == 0 and normal.boxes == []
    with pytest.raises(KeyError):
        ix.record(0)  # BBox_List_2017.csv is a member, not an image


def test_patient_in_both_official_lists_is_refused() -> None:
    tv, te = _lists()
    with pytest.raises(MetadataError, match="patient-disjoint"):
        NIHIndex.from_files(_data_entry(), BBOX, tv + b"00000006_000.png\n", te.replace(b"00000006_000.png\r\n", b""),
                            _members())
    with pytest.raises(MetadataError, match="both"):
        NIHIndex.from_files(_data_entry(), BBOX, tv + b"00000006_000.png\n", te, _members())


def test_from_archive_reads_members_and_names_missing_files() -> None:
    tv, te = _lists()
    files = {"Data_Entry_2017.csv": _data_entry("\r\n"), "BBox_List_2017.csv": BBOX,
             "train_val_list.txt": tv, "test_list.txt": te}
    names = _members()

    class Index:
        def __len__(self) -> int:
            return len(names)

        def name(self, i: int) -> str:
            return names[i]

    archive = SimpleNamespace(index=Index(), identity="file:/x/data.zip", read_member=lambda n: files[n])
    ix = NIHIndex.from_archive(archive)
    assert len(ix) == 13
    names.remove("test_list.txt")
    names.remove("BBox_List_2017.csv")
    with pytest.raises(MetadataError, match=r"file:/x/data.zip lacks BBox_List_2017.csv, test_list.txt"):
        NIHIndex.from_archive(archive)


def test_indexes_112k_rows_quickly() -> None:
    rng = np.random.default_rng(0)
    n = 112_120
    pid = np.sort(rng.integers(1, 30_806, n))
    names = [f"{p:08d}_{i:03d}.png" for i, p in enumerate(pid)]
    labels = np.where(rng.random(n) < 0.54, "No Finding", "Nodule|Mass")
    views = np.where(rng.random(n) < 0.6, "PA", "AP")
    de = "\n".join([DATA_ENTRY_HEADER] + [f"{a},{b},0,{c},40,M,{d},2500,2048,0.168,0.168"
                                          for a, b, c, d in zip(names, labels, pid, views, strict=True)]).encode()
    test_p = set(range(1, 30_806, 3))
    tv = "\n".join(nm for nm, p in zip(names, pid, strict=True) if p not in test_p).encode()
    te = "\n".join(nm for nm, p in zip(names, pid, strict=True) if p in test_p).encode()
    members = [f"images_{i // 10_000 + 1:03d}/images/{nm}" for i, nm in enumerate(names[:60_000])]
    t0 = time.process_time()  # CPU time: robust to a loaded machine
    ix = NIHIndex.from_files(de, BBOX, tv, te, members)
    dt = time.process_time() - t0
    assert len(ix) == 60_000 and len(ix.stages()) == 6
    t1 = time.process_time()
    tr = ix.split("all", "train", "PA", 0.1, 0)
    assert time.process_time() - t1 < 0.5 and len(tr) > 10_000
    assert dt < 4.0, f"indexing took {dt:.2f} s of CPU"  # ~1 s


# -------------------------------------------------------------------------------- fuzzing
_fields = st.sampled_from(["00000001_000.png", "No Finding", "Mass|Nodule", "1", "x", "", "PA", "AP",
                           '"a,b"', "058Y", "-3", "1e9", "\x00", "Infiltrate", "nan", "12.5"])
_lines = st.lists(_fields, min_size=0, max_size=12).map(",".join)
_texts = st.lists(_lines, max_size=30).map(lambda ls: "\n".join(ls).encode())


@settings(max_examples=150, deadline=None)
@given(st.one_of(_texts, st.binary(max_size=400)),
       st.sampled_from([b"", DATA_ENTRY_HEADER.encode() + b"\n", b'"', b"\r\n"]))
def test_fuzz_parsers_fail_only_with_metadata_error(data: bytes, prefix: bytes) -> None:
    blob = prefix + data
    for parse in (parse_data_entry, lambda b: parse_bbox_list(b),
                  lambda b: parse_image_list(b, "test_list.txt")):
        try:
            parse(blob)
        except MetadataError:
            pass


@settings(max_examples=60, deadline=None)
@given(_texts, _texts, _texts)
def test_fuzz_index_fails_only_with_metadata_error(de: bytes, tv: bytes, te: bytes) -> None:
    try:
        ix = NIHIndex.from_files(_data_entry() + de, de, _lists()[0] + tv, te, _members())
    except MetadataError:
        return
    for split in ("train", "val", "test"):
        ids = ix.split("all", split, "all", 0.3, 1)
        for i in ids:
            ix.record(int(i))
