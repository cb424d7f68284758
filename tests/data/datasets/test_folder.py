"""One's own images: normal/ + abnormal/ folders or labels.csv, content sniffing, patients, protocol."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from dataset_helpers import dicom_bytes, image_bytes, write_zip

from imgae_dx.cli import main
from imgae_dx.config import DataConfig
from imgae_dx.data.datasets import open_dataset
from imgae_dx.data.datasets.folder import find_class_root, find_labels_csv
from imgae_dx.errors import MetadataError
from imgae_dx.streaming.sources import open_archive

N_PLAIN = 24  # extra plain normals, one patient each


def _folders() -> dict[str, bytes]:
    m: dict[str, bytes] = {"__MACOSX/mydata/normal/._a.png": b"\x00\x05\x16\x07junk"}
    m["mydata/normal/a.png"] = image_bytes("png", 1)
    m["mydata/normal/b.jpg"] = image_bytes("jpeg", 2, rgb=True, size=(64, 40))
    m["mydata/normal/sub/deep/c.png"] = image_bytes("png", 3)
    m["mydata/normal/d.png"] = image_bytes("jpeg", 4)  # a JPEG named .png: told by content
    m["mydata/normal/notes.txt"] = b"exported from PACS\n"
    m["mydata/normal/.hidden.png"] = image_bytes("png", 5)
    m["mydata/normal/scan1"] = dicom_bytes("PX", 1)  # DICOM without an extension
    m["mydata/normal/scan2.dcm"] = dicom_bytes("PX", 2)
    for i in range(N_PLAIN):
        m[f"mydata/normal/n{i:02d}.png"] = image_bytes("png", 100 + i)
    m["mydata/abnormal/nodule/e.png"] = image_bytes("png", 6)
    m["mydata/abnormal/nodule/deep/f.jpg"] = image_bytes("jpeg", 7)
    m["mydata/abnormal/g.png"] = image_bytes("png", 8)
    m["mydata/abnormal/effusion/h.dcm"] = dicom_bytes("PY", 3)
    m["mydata/abnormal/Thumbs.db"] = bytes(40)
    return m


@pytest.fixture(scope="module")
def folder_zip(tmp_path_factory):
    return write_zip(tmp_path_factory.mktemp("folder") / "mine.zip", _folders(), deflate=True)


def _open(path, seed: int = 42, **cfg):
    c = DataConfig(dataset="folder", **cfg)
    archive = open_archive(str(path), c)
    return archive, open_dataset(archive, c, seed)


def test_layout_roots():
    assert find_class_root(["x/normal/a.png", "x/abnormal/b.png", "x/y/normal/c.png"]) == "x/"
    assert find_class_root(["Normal/a.png", "ABNORMAL/k/b.png"]) == ""
    assert find_class_root(["x/normal/a.png", "y/abnormal/b.png"]) is None
    assert find_labels_csv(["top/labels.csv", "top/deep/x/labels.csv"]) == "top/labels.csv"
    assert find_labels_csv(["a/b/labels.csv"]) is None


def test_folders_by_content_findings_patients_and_held_out_patients(folder_zip, caplog):
    with caplog.at_level(logging.INFO):
        archive, ix = _open(folder_zip)
    with archive:
        by = {r.image: r for r in map(ix.record, ix.member.tolist())}
        assert set(by) == {"normal/a.png", "normal/b.jpg", "normal/sub/deep/c.png", "normal/d.png",
                           "normal/scan1", "normal/scan2.dcm", "abnormal/nodule/e.png",
                           "abnormal/nodule/deep/f.jpg", "abnormal/g.png", "abnormal/effusion/h.dcm",
                           *(f"normal/n{i:02d}.png" for i in range(N_PLAIN))}
        skipped = ix.summary()["skipped"]
        assert skipped["hidden or macOS files (.*, __MACOSX)"] == 1
        (why, n), = [(k, v) for k, v in skipped.items() if k.startswith("files that are not")]
        assert n == 2 and "text" in why  # notes.txt and Thumbs.db, said in one line
        assert by["abnormal/nodule/deep/f.jpg"].findings == ("nodule",)
        assert by["abnormal/effusion/h.dcm"].findings == ("effusion",) and by["abnormal/g.png"].findings == ()
        assert by["normal/scan1"].patient == by["normal/scan2.dcm"].patient == "dicom:PX"
        assert by["normal/a.png"].patient == "file:normal/a.png"
        assert "patients: 3 from DICOM PatientID, 31 one patient per file" in caplog.text
        assert "folder has no view positions: data.view PA is ignored" in caplog.text
        # every abnormal image is tested; a share of the other patients too; the rest train
        test = {ix.record(int(m)).image for m in ix.split("all", "test")}
        assert {k for k, r in by.items() if r.label} <= test
        n_normal_test = sum(1 for k in test if not by[k].label)
        assert 1 <= n_normal_test <= 12  # ~20 % of 30 normal patients
        assert {by["normal/scan1"].split, by["normal/scan2.dcm"].split} in ({"test"}, {"train_val"})
        pool = len(ix.split("all", "train")) + len(ix.split("all", "val"))
        assert pool + n_normal_test == sum(1 for r in by.values() if not r.label)
        ix.check_disjoint()
        # another test share: more normals held out
        other = open_dataset(archive, DataConfig(dataset="folder", test_fraction=0.6), 42, quiet=True)
        assert len(other.split("all", "test")) > len(test)


def test_stream_counts_every_split_exactly(folder_zip, capsys):
    archive, ix = _open(folder_zip, seed=42)
    with archive:
        want = {s: len(ix.split("all", s)) for s in ("train", "val", "test")}
    assert main(["stream", "--source", str(folder_zip), "--dataset", "folder", "--image-size", "32",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == want and out["skipped"] == 0  # PNG, JPEG (RGB, misnamed), DICOM decode


def _csv_archive(tmp_path, csv_text: str, extra: dict[str, bytes] | None = None):
    m = {f"data/img/{i}.png": image_bytes("png", i) for i in range(12)}
    m["data/img/x.dcm"] = dicom_bytes("Q", 9)
    m["data/img/readme.md"] = b"# notes"
    m["data/labels.csv"] = csv_text.encode()
    m.update(extra or {})
    return write_zip(tmp_path / "csv.zip", m)


def test_labels_csv_patients_views_splits_and_skips(tmp_path, caplog):
    rows = ["Path,Label,Patient,View,Split,Findings,site"]
    for i in range(12):
        label = "abnormal" if i in (10, 11) else ("0" if i % 2 else "Normal")
        split = {0: "val", 1: "test"}.get(i, "")
        rows.append(f"./img/{i}.png,{label},{('V', 'T')[i] if i < 2 else f'P{i // 2}'},{'AP' if i == 4 else 'PA'},{split},"
                    f"{'mass|nodule' if i == 10 else ''},A")
    rows += ["img/x.dcm,1,P9,PA,,,A", "img/missing.png,0,P20,PA,,,A", "img/readme.md,0,P21,PA,,,A"]
    with caplog.at_level(logging.INFO):
        archive, ix = _open(_csv_archive(tmp_path, "\n".join(rows) + "\n"), view="PA", test_fraction=0.2)
    with archive:
        by = {r.image: r for r in map(ix.record, ix.member.tolist())}
        assert set(by) == {*(f"img/{i}.png" for i in range(12)), "img/x.dcm"}
        skipped = ix.summary()["skipped"]
        assert skipped["rows of labels.csv naming no file in the archive (e.g. img/missing.png)"] == 1
        assert any(k.startswith("files that are not PNG") and v == 1 for k, v in skipped.items())
        assert "columns ignored: site" in caplog.text and "patients from the patient column" in caplog.text
        assert ix.has_views and by["img/4.png"].view == "AP" and by["img/10.png"].findings == ("mass", "nodule")
        assert by["img/0.png"].split == "val" and by["img/1.png"].split == "test"
        assert by["img/x.dcm"].patient == "P9" and by["img/x.dcm"].label == 1
        val = {ix.record(int(m)).image for m in ix.split("all", "val")}
        assert "img/0.png" in val and "img/4.png" not in val  # fixed val; AP outside the PA cohort
        test = {ix.record(int(m)).image for m in ix.split("all", "test")}
        assert {"img/1.png", "img/10.png", "img/11.png", "img/x.dcm"} <= test


@pytest.mark.parametrize("csv_text, message", [
    ("path,label\nimg/0.png,sick\n", "label 'sick' is not one of 0, normal"),
    ("path,patient\nimg/0.png,P1\n", "lacks label"),
    ("path,label\nimg/0.png,0\n./img/0.png,1\n", "listed twice"),
    ("path,label,split\nimg/0.png,0,holdout\n", "split 'holdout' is not train, val, test"),
    ("path,label,patient,split\nimg/0.png,0,P1,train\nimg/1.png,0,P1,test\n", "not patient-disjoint"),
    ("path,label\nimg/nothing.png,0\n", "no image of the folder layout"),
    ("", "is empty"),
])
def test_labels_csv_mistakes_are_one_clear_error(tmp_path, csv_text, message):
    path = _csv_archive(tmp_path, csv_text)
    c = DataConfig(dataset="folder")
    with open_archive(str(path), c) as archive, pytest.raises(MetadataError, match=message):
        open_dataset(archive, c, 42)


def test_a_patient_with_an_abnormal_image_is_a_test_patient(tmp_path):
    rows = ["path,label,patient"] + [f"img/{i}.png,{1 if i == 3 else 0},{'S' if i in (2, 3) else f'P{i}'}"
                                     for i in range(12)]
    archive, ix = _open(_csv_archive(tmp_path, "\n".join(rows) + "\n"), view="all")
    with archive:
        test = {ix.record(int(m)).image for m in ix.split("all", "test")}
        assert {"img/2.png", "img/3.png"} <= test  # the normal image of the sick patient too
        assert np.isin(ix.split("all", "train"), ix.split("all", "test")).sum() == 0
