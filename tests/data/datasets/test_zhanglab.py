"""ZhangLab's Kaggle layout: junk and the second tree skipped, patients from names, SQUID's split."""

from __future__ import annotations

import json
import logging

import pytest
from dataset_helpers import image_bytes, write_zip

from imgae_dx.cli import main
from imgae_dx.config import DataConfig
from imgae_dx.data.datasets import open_dataset
from imgae_dx.data.datasets.zhanglab import finding_of, layout_key, patient_of
from imgae_dx.streaming.sources import open_archive

APPLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(200)
TRAIN_NORMAL = [f"IM-{p:04d}-{k:04d}.jpeg" for p in range(1, 9) for k in (1, 2)] + \
    ["NORMAL2-IM-0100-0001.jpeg", "NORMAL2-IM-0101-0001.jpeg"]
VAL_NORMAL = ["IM-0200-0001.jpeg", "NORMAL2-IM-0201-0001.jpeg"]
TEST = {"NORMAL": ["IM-0300-0001.jpeg", "IM-0300-0002.jpeg", "NORMAL2-IM-0301-0001.jpeg"],
        "PNEUMONIA": ["person1_bacteria_1.jpeg", "person1_virus_6.jpeg", "person2_bacteria_3.jpeg",
                      "person3_virus_4.jpeg"]}
TRAIN_PNEUMONIA = ["person1_bacteria_1.jpeg", "person1_virus_6.jpeg"]
VAL_PNEUMONIA = ["person1_virus_9.jpeg"]
N_POOL = len(TRAIN_NORMAL) + len(VAL_NORMAL)
N_TEST = sum(len(v) for v in TEST.values())


def _tree() -> dict[str, bytes]:
    """split/CLASS/name → JPEG bytes: gray and RGB, square and not, one PNG named .jpeg."""
    files: dict[str, bytes] = {}
    names = [("train", "NORMAL", n) for n in TRAIN_NORMAL] + [("val", "NORMAL", n) for n in VAL_NORMAL]
    names += [("test", c, n) for c, ns in TEST.items() for n in ns]
    names += [("train", "PNEUMONIA", n) for n in TRAIN_PNEUMONIA] + [("val", "PNEUMONIA", n) for n in VAL_PNEUMONIA]
    for i, (s, c, n) in enumerate(names):
        fmt = "png" if i == 3 else "jpeg"
        files[f"{s}/{c}/{n}"] = image_bytes(fmt, i, size=(40 + 8 * (i % 3), 40), rgb=i % 4 == 1)
    return files


@pytest.fixture(scope="module")
def zhanglab_zip(tmp_path_factory):
    tree = _tree()
    members: dict[str, bytes] = {"chest_xray/.DS_Store": bytes(64)}
    for rel, data in tree.items():  # Kaggle's second copy: first in the archive, one copy differs
        differs = rel == "train/NORMAL/IM-0001-0002.jpeg"
        members[f"chest_xray/chest_xray/{rel}"] = image_bytes("jpeg", 999) if differs else data
    for rel in list(tree)[::3]:
        members[f"__MACOSX/chest_xray/{rel.rsplit('/', 1)[0]}/._{rel.rsplit('/', 1)[1]}"] = APPLE
        members[f"chest_xray/__MACOSX/{rel.rsplit('/', 1)[0]}/._{rel.rsplit('/', 1)[1]}"] = APPLE
    for rel, data in tree.items():
        members[f"chest_xray/{rel}"] = data
    members["chest_xray/train/NORMAL/Thumbs.db"] = bytes(16)
    return write_zip(tmp_path_factory.mktemp("zl") / "chest-xray-pneumonia.zip", members, deflate=True)


def _open(path, **cfg):
    c = DataConfig(dataset="zhanglab", **cfg)
    archive = open_archive(str(path), c)
    return archive, open_dataset(archive, c, 42)


def test_names_give_keys_patients_and_findings():
    assert layout_key("chest_xray/chest_xray/train/NORMAL/IM-0115-0001.jpeg") == ("train/NORMAL/IM-0115-0001.jpeg", 2)
    assert layout_key("chest_xray/train/NORMAL/IM-0115-0001.jpeg") == ("train/NORMAL/IM-0115-0001.jpeg", 1)
    assert layout_key("__MACOSX/chest_xray/train/NORMAL/._IM-0115-0001.jpeg") is None
    assert layout_key("chest_xray/train/NORMAL/._IM-0115-0001.jpeg") is None
    assert layout_key("chest_xray/train/OTHER/IM-0115-0001.jpeg") is None
    assert patient_of("train", "IM-0115-0001.jpeg") == "train/IM-0115"
    assert patient_of("train", "NORMAL2-IM-1427-0001.jpeg") == "train/NORMAL2-IM-1427"
    assert patient_of("train", "person1_bacteria_1.jpeg") == patient_of("train", "person1_virus_6.jpeg") == "train/person1"
    assert patient_of("test", "person1_virus_6.jpeg") == "test/person1"  # personN restarts per split
    assert (finding_of("PNEUMONIA", "person1_bacteria_1.jpeg"), finding_of("PNEUMONIA", "person7_virus_2.jpeg"),
            finding_of("NORMAL", "IM-0001-0001.jpeg"), finding_of("PNEUMONIA", "x.jpeg")) == \
        ("bacteria", "virus", "", "pneumonia")


def test_index_skips_junk_counts_each_image_once_and_follows_squid(zhanglab_zip, caplog):
    with caplog.at_level(logging.INFO):
        archive, ix = _open(zhanglab_zip)
    with archive:
        n_all = N_POOL + N_TEST + len(TRAIN_PNEUMONIA) + len(VAL_PNEUMONIA)
        assert len(ix) == n_all == len(set(ix.image.tolist()))
        kept = [archive.index.name(int(m)) for m in ix.member]
        assert all(n.startswith("chest_xray/") and not n.startswith("chest_xray/chest_xray/") for n in kept)
        s = ix.summary()["skipped"]
        assert s["second copies of an image (chest_xray/chest_xray/…)"] == n_all
        assert s["macOS junk files (__MACOSX, ._*, .DS_Store)"] == 2 * len(range(0, n_all, 3)) + 1
        assert any("1 second copies differ" in n for n in ix.facts.notes)
        assert not ix.has_views and "data.view PA is ignored" in caplog.text
        train, val, test = (ix.split("all", s) for s in ("train", "val", "test"))
        assert len(train) + len(val) == N_POOL and len(val) >= 1 and len(test) == N_TEST
        recs = [ix.record(int(m)) for m in test]
        assert sum(r.label for r in recs) == len(TEST["PNEUMONIA"])
        assert {r.findings for r in recs if r.label} == {("bacteria",), ("virus",)}
        assert {r.patient for r in recs if r.label} == {"test/person1", "test/person2", "test/person3"}
        pool = {ix.record(int(m)).image.split("/")[0] for m in list(train) + list(val)}
        assert pool == {"train", "val"}  # train/ and val/ normals both train or validate
        unused = [r for r in map(ix.record, ix.member.tolist()) if r.split == ""]
        assert {r.image.split("/")[1] for r in unused} == {"PNEUMONIA"}
        assert len(unused) == len(TRAIN_PNEUMONIA) + len(VAL_PNEUMONIA)
        ix.check_disjoint()


def test_stream_counts_every_split_exactly(zhanglab_zip, capsys):
    archive, ix = _open(zhanglab_zip, view="PA")
    with archive:
        want = {s: len(ix.split("all", s)) for s in ("train", "val", "test")}
    assert want["train"] + want["val"] == N_POOL and want["test"] == N_TEST
    rc = main(["stream", "--source", str(zhanglab_zip), "--dataset", "zhanglab", "--split", "all",
               "--image-size", "32", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == want and out["skipped"] == 0  # RGB, non-square, a PNG named .jpeg: all decode


def test_parts_of_images_per_stage_training_images(zhanglab_zip, capsys):
    archive, ix = _open(zhanglab_zip, images_per_stage=5, view="all")
    with archive:
        per = [len(ix.split(s, "train")) for s in ix.stages()]
    assert ix.stages()[0] == "part_001" and per[:-1] == [5] * (len(per) - 1) and 1 <= per[-1] <= 5
    rc = main(["stream", "--source", str(zhanglab_zip), "--dataset", "zhanglab", "--stages", "part_002",
               "--split", "train", "--image-size", "32", "--json"])
    assert rc == 2  # images_per_stage 2500: one part only, and the error names it
    assert "available: part_001 or" in capsys.readouterr().err
