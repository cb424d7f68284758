"""The RSNA competition layout: CSV and header quirks, per-box rows, views from DICOM headers
(cached per archive version), the held-out protocol, exact split counts, the competition source."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
from dataset_helpers import write_zip

from imgae_dx.cli import main
from imgae_dx.config import DataConfig
from imgae_dx.data.datasets import open_dataset, rsna
from imgae_dx.data.datasets.base import Protocol, held_out, name_keys, unit_hash
from imgae_dx.errors import MetadataError
from imgae_dx.streaming.sources import open_archive
from imgae_dx.testing.sample.dicom import rsna_dicom

SEED, TEST_FRACTION, VAL_FRACTION = 3, 0.3, 0.25
NORMALS = {f"n{i:02d}": "PA" if i % 3 else "AP" for i in range(30)}
OPACITIES = {f"o{i:02d}": "AP" if i % 4 else "PA" for i in range(10)}
NOT_NORMAL = {f"x{i:02d}": "PA" if i % 2 else "AP" for i in range(10)}
# Normal patients whose headers are odd but readable: view missing, lower case, lateral
ODD_VIEWS = {"q-noview": None, "q-lowerview": "pa ", "q-lateral": "LL"}
BOXES = {"o00": [(100.0, 200.5, 300.0, 250.0), (600.0, 220.0, 180.0, 330.25)], "o01": [(50.0, 60.0, 70.0, 80.0)]}
USABLE = len(NORMALS) + len(OPACITIES) + len(NOT_NORMAL) + len(ODD_VIEWS)


def _box(pid: str) -> list[tuple[float, float, float, float]]:
    return BOXES.get(pid, [(10.0 * int(pid[1:]), 100.0, 200.0, 150.0)])


def _csvs() -> tuple[bytes, bytes]:
    """RSNA's two CSVs with quirks: BOM, CRLF, blank lines, a duplicated row, bad and disagreeing rows."""
    labels, classes = ["patientId,x,y,width,height,Target"], ["patientId,class"]

    def add(pid: str, target_rows: list[str], cls: str | None) -> None:
        for r in target_rows:
            labels.append(f"{pid},{r}")
            if cls is not None:
                classes.append(f"{pid},{cls}")

    for pid in [*NORMALS, *ODD_VIEWS]:
        add(pid, [",,,,0"], rsna.NORMAL)
    for pid in OPACITIES:
        add(pid, [f"{x},{y},{w},{h},1" for x, y, w, h in _box(pid)], rsna.OPACITY)
    labels.append(labels[-1])  # an identical row: counted once
    for pid in NOT_NORMAL:
        add(pid, [",,,,0"], rsna.NOT_NORMAL)
    add("q-noimage", [",,,,0"], rsna.NORMAL)
    add("q-onlylabels", [",,,,0"], None)
    add("q-t1normal", ["1,2,3,4,1"], rsna.NORMAL)
    add("q-t0opacity", [",,,,0"], rsna.OPACITY)
    add("q-badtarget", [",,,,yes"], rsna.NORMAL)
    add("q-badbox", ["1,2,abc,4,1"], rsna.OPACITY)
    add("q-badclass", [",,,,0"], "Pneumonia")
    add("q-badheader", [",,,,0"], rsna.NORMAL)
    lab = ("\ufeff" + "\r\n".join(labels) + "\r\n\r\n\r\n").encode()
    return lab, ("\n".join(classes) + "\n\n").encode()


def _image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((48, 48)) * 180 + 40).astype(np.uint8)


def rsna_members(top: str = "") -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    views = {**NORMALS, **OPACITIES, **NOT_NORMAL, **ODD_VIEWS}
    quirky = ["q-norow", "q-onlylabels", "q-t1normal", "q-t0opacity", "q-badtarget", "q-badbox", "q-badclass"]
    for i, pid in enumerate([*views, *quirky]):
        files[f"{rsna.TRAIN_DIR}/{pid}.dcm"] = rsna_dicom(_image(i), pid, view=views.get(pid, "PA"), age=str(20 + i))
    files[f"{rsna.TRAIN_DIR}/q-badheader.dcm"] = b"<html><body>403 Forbidden</body></html>" + bytes(300)
    files[f"{rsna.TRAIN_DIR}/.DS_Store"] = bytes(64)
    for k in range(2):
        files[f"{rsna.TEST_DIR}/t{k}.dcm"] = rsna_dicom(_image(100 + k), f"t{k}")
    files[rsna.LABELS_CSV], files[rsna.CLASSES_CSV] = _csvs()
    files["stage_2_sample_submission.csv"] = b"patientId,PredictionString\nt0,\nt1,\n"
    files["GCP Credits Request Link - RSNA.txt"] = b"https://example.org\r\n"
    files["README.md"] = b"notes\n"
    return {top + k: v for k, v in sorted(files.items())}


@pytest.fixture(scope="module")
def rsna_zip(tmp_path_factory):
    return write_zip(tmp_path_factory.mktemp("rsna") / "rsna.zip", rsna_members(), deflate=True)


def _cfg(tmp_path, **kw) -> DataConfig:
    kw.setdefault("index_cache_dir", str(tmp_path / "cache"))
    return DataConfig(dataset="rsna", test_fraction=TEST_FRACTION, val_fraction=VAL_FRACTION, **kw)


def _skipped(ix) -> dict[str, int]:
    return {k.split(" (e.g. ")[0]: v for k, v in ix.summary()["skipped"].items()}


def test_quirks_are_skipped_and_counted_and_the_rest_indexed(rsna_zip, tmp_path, caplog):
    with caplog.at_level(logging.INFO), open_archive(str(rsna_zip)) as a:
        ix = open_dataset(a, _cfg(tmp_path, view="all"), SEED)
    assert len(ix) == USABLE
    assert _skipped(ix) == {
        rsna.SKIP_TEST: 2, rsna.SKIP_OTHER: 2, rsna.SKIP_NO_ROW: 1, rsna.SKIP_NO_IMAGE: 1, rsna.SKIP_ONE_CSV: 1,
        rsna.SKIP_UNREADABLE: 3, rsna.SKIP_DISAGREE: 2, rsna.SKIP_HEADER: 1}
    text = caplog.text
    assert "rsna: skipped 2 patients whose labels disagree (e.g. q-t1normal: Target 1 but class Normal)" in text
    assert "skipped 1 images whose DICOM header cannot be read (e.g. stage_2_train_images/q-badheader.dcm)" in text
    assert "Target 'yes' is not 0 or 1" in text and "1 identical rows of stage_2_train_labels.csv counted once" in text
    recs = {r.image: r for r in map(ix.record, ix.member.tolist())}
    assert set(recs) == {f"{p}.dcm" for p in [*NORMALS, *OPACITIES, *NOT_NORMAL, *ODD_VIEWS]}
    assert {r.image: r.view for r in recs.values() if r.image.startswith("q-")} == {
        "q-noview.dcm": "", "q-lowerview.dcm": "PA", "q-lateral.dcm": "LL"}
    assert all(recs[f"{p}.dcm"].view == v for p, v in {**NORMALS, **OPACITIES, **NOT_NORMAL}.items())
    assert {r.findings for r in recs.values()} == {(), (rsna.OPACITY,), (rsna.NOT_NORMAL,)}
    assert sum(r.label for r in recs.values()) == len(OPACITIES) + len(NOT_NORMAL)
    assert recs["o00.dcm"].patient == "o00" and recs["o00.dcm"].boxes == [(rsna.OPACITY, *b) for b in BOXES["o00"]]
    assert recs["o01.dcm"].boxes == [(rsna.OPACITY, 50.0, 60.0, 70.0, 80.0)]  # the duplicated row once
    assert ix.box_frame == 1024 and ix.summary()["boxes"] == sum(len(_box(p)) for p in OPACITIES)
    assert all(not r.boxes for r in recs.values() if rsna.OPACITY not in r.findings)
    ix.check_disjoint()


def _expected(view: str) -> dict[str, int]:
    """Split sizes by the protocol, from the fixture's own lists."""
    views = {**NORMALS, **{p: (v or "").strip().upper() for p, v in ODD_VIEWS.items()}}
    cls = {**{p: rsna.NORMAL for p in views}, **{p: rsna.OPACITY for p in OPACITIES},
           **{p: rsna.NOT_NORMAL for p in NOT_NORMAL}}
    views.update(OPACITIES)
    views.update(NOT_NORMAL)
    p = Protocol(seed=SEED, test_fraction=TEST_FRACTION, val_fraction=VAL_FRACTION)
    out = {"train": 0, "val": 0, "test": 0}
    for pid, c in cls.items():
        if view != "all" and views[pid] != view:
            continue
        key = name_keys([pid])
        if held_out(key, p)[0]:
            out["test"] += 1
        elif c == rsna.NORMAL:
            out["val" if unit_hash(key, SEED)[0] < VAL_FRACTION else "train"] += 1
    return out


@pytest.mark.parametrize("view", ["all", "PA", "AP"])
def test_held_out_patients_of_every_class_and_view_cohorts(rsna_zip, tmp_path, view):
    with open_archive(str(rsna_zip)) as a:
        ix = open_dataset(a, _cfg(tmp_path, view=view), SEED, quiet=True)
    got = {s: len(ix.split("all", s)) for s in ("train", "val", "test")}
    assert got == _expected(view)
    if view == "all":
        assert got == {"train": 16, "val": 5, "test": 17}  # the numbers the rule gives this fixture
        test = [ix.record(int(m)) for m in ix.split("all", "test")]
        assert {r.findings for r in test} == {(), (rsna.OPACITY,), (rsna.NOT_NORMAL,)}  # every class held out
        unused = [r for r in map(ix.record, ix.member.tolist()) if r.split == ""]
        assert unused and all(r.label == 1 for r in unused)  # non-Normal patients outside the test share
    for s in ("train", "val", "test"):
        views = {ix.record(int(m)).view for m in ix.split("all", s)}
        assert views <= ({view} if view != "all" else {"PA", "AP", "LL", ""})


def test_a_top_folder_and_reordered_class_columns_give_the_same_index(rsna_zip, tmp_path):
    members = rsna_members("rsna-pneumonia-detection-challenge/")
    key = f"rsna-pneumonia-detection-challenge/{rsna.CLASSES_CSV}"
    rows = [ln.split(",", 1) for ln in members[key].decode().splitlines()[1:] if ln]
    members[key] = ("class,remark,patientId\n" + "".join(f"{cls},-,{pid}\n" for pid, cls in rows)).encode()
    top = write_zip(tmp_path / "top.zip", members, deflate=True)
    with open_archive(str(rsna_zip)) as a, open_archive(str(top)) as b:
        ix, iy = (open_dataset(x, _cfg(tmp_path, view="all"), SEED, quiet=True) for x in (a, b))
        assert iy.image.tolist() == ix.image.tolist() and iy.view.tolist() == ix.view.tolist()
        assert iy.findings.tolist() == ix.findings.tolist() and iy.boxes == ix.boxes
        assert (iy.role == ix.role).all()


def test_missing_or_malformed_csvs_are_one_line_errors(tmp_path):
    m = rsna_members()
    del m[rsna.CLASSES_CSV]
    with open_archive(str(write_zip(tmp_path / "a.zip", m))) as a, \
            pytest.raises(MetadataError, match="has no stage_2_detailed_class_info.csv; the RSNA layout needs"):
        open_dataset(a, _cfg(tmp_path), SEED, quiet=True)
    m = rsna_members()
    m[rsna.LABELS_CSV] = b"patientId,x,y,w,h,Target\nn00,,,,,0\n"
    with open_archive(str(write_zip(tmp_path / "b.zip", m))) as a, \
            pytest.raises(MetadataError, match="lacks width, height; expected patientId,x,y,width,height,Target"):
        open_dataset(a, _cfg(tmp_path), SEED, quiet=True)


def test_header_views_are_cached_per_archive_version(rsna_zip, tmp_path):
    """The first open reads every train image's header; a second open of the same archive
    version reads none (only the two CSVs); a new version of the archive is read again."""
    path = tmp_path / "copy.zip"
    path.write_bytes(rsna_zip.read_bytes())
    cfg = _cfg(tmp_path, view="all", max_request_mb=0.001, gap_bridge_kb=0)  # one request per head

    def requests() -> tuple[int, list]:
        with open_archive(str(path), cfg) as a:
            before = a.stats()["requests"]
            ix = open_dataset(a, cfg, SEED, quiet=True)
            return a.stats()["requests"] - before, ix.view.tolist()

    first, views = requests()
    assert first == 2 + USABLE + 1  # the CSVs, then one request per usable image's head (+ the bad one)
    assert len(list((tmp_path / "cache").glob("dicom-fields-*.json"))) == 1
    again, views2 = requests()
    assert again == 2 and views2 == views
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # another version of the archive
    third, _ = requests()
    assert third == first


def test_stream_counts_every_split_exactly(rsna_zip, tmp_path, capsys):
    cfg = _cfg(tmp_path)  # view PA, the default cohort
    with open_archive(str(rsna_zip)) as a:
        ix = open_dataset(a, cfg, SEED, quiet=True)
        want = {s: len(ix.split("all", s)) for s in ("train", "val", "test")}
    assert want == _expected("PA")
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"seed: {SEED}\ndata:\n  test_fraction: {TEST_FRACTION}\n  val_fraction: {VAL_FRACTION}\n")
    rc = main(["stream", "--config", str(cfg_file), "--source", str(rsna_zip), "--dataset", "rsna",
               "--split", "all", "--image-size", "32", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == want and out["skipped"] == 0  # every JPEG-Baseline DICOM decodes


@pytest.fixture(scope="module")
def rsna_sample(tmp_path_factory):
    from imgae_dx.testing.sample import write_rsna_archive

    return write_rsna_archive(tmp_path_factory.mktemp("rsna_sample"), images=60, seed=1, image_px=96)


def test_the_sample_is_in_rsnas_layout_and_streams_exactly(rsna_sample, capsys):
    """``sample-data --dataset rsna``'s archive: detected, every class, boxes, views, the test
    images and stray files skipped; ``stream --split all`` gives exactly the protocol's counts."""
    import zipfile

    with zipfile.ZipFile(rsna_sample) as zf:
        names = zf.namelist()
        labels = zf.read(rsna.LABELS_CSV).decode().splitlines()
        classes = zf.read(rsna.CLASSES_CSV).decode().splitlines()
        head = zf.read(next(n for n in names if n.startswith(rsna.TRAIN_DIR)))
    assert labels[0] == "patientId,x,y,width,height,Target" and classes[0] == "patientId,class"
    assert len(labels) == len(classes) > 61  # one row per box in both
    assert {"GCP Credits Request Link - RSNA.txt", "stage_2_sample_submission.csv"} <= set(names)
    assert b"1.2.840.10008.1.2.4.50" in head[:1024] and b"MONOCHROME2" in head[:1024]  # JPEG Baseline
    cfg = DataConfig(view="all")
    with open_archive(str(rsna_sample), cfg) as a:
        ix = open_dataset(a, cfg, 0, quiet=True)
        want = {s: len(ix.split("all", s)) for s in ("train", "val", "test")}
    assert ix.name == "rsna" and ix.synthetic and len(ix) == 60
    assert set(ix.findings.tolist()) == {"", rsna.OPACITY, rsna.NOT_NORMAL} and set(ix.view.tolist()) == {"PA", "AP"}
    assert _skipped(ix) == {rsna.SKIP_TEST: 3}
    assert ix.summary()["boxes"] == len(labels) - 1 - sum(1 for ln in labels[1:] if ln.endswith(",0"))
    assert want == {"train": 26, "val": 2, "test": 15}  # pinned: the sample and the rule are seeded
    assert main(["stream", "--source", str(rsna_sample), "--dataset", "rsna", "--split", "all",
                 "--image-size", "64", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    pa = DataConfig()
    with open_archive(str(rsna_sample), pa) as a:
        ix = open_dataset(a, pa, 42, quiet=True)
        assert out["images"] == {s: len(ix.split("all", s)) for s in ("train", "val", "test")}
    assert out["skipped"] == 0


@pytest.mark.network
def test_the_competition_streams_through_the_sdk_and_gives_the_runs_split(rsna_sample, tmp_path, monkeypatch, capsys):
    """``kaggle-competition:rsna-pneumonia-detection-challenge`` through the real SDK and the
    loopback emulator: the same split as the local zip, headers scanned in few requests once and
    read from the cache after that."""
    from imgae_dx.run.splits import SplitTable
    from imgae_dx.testing.kaggle_emulator import KaggleEmulator

    slug, user, key = "rsna-pneumonia-detection-challenge", "alice", "0123456789abcdef0123456789abcdef"
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")
    monkeypatch.setenv("KAGGLE_USERNAME", user)
    monkeypatch.setenv("KAGGLE_KEY", key)
    cfg = DataConfig(view="all", index_cache_dir=str(tmp_path / "cache"))
    with open_archive(str(rsna_sample), cfg) as a:
        local = SplitTable.from_index(open_dataset(a, cfg, 5, quiet=True))
    with KaggleEmulator() as kaggle:
        kaggle.add_user(user, key)
        kaggle.add_competition(slug, rsna_sample, accepted_users={user})
        source = f"kaggle-competition:{slug}"
        counts = []
        for _ in range(2):
            with open_archive(source, cfg) as a:
                before = a.stats()["requests"]
                remote = SplitTable.from_index(open_dataset(a, cfg, 5, quiet=True))
                counts.append(a.stats()["requests"] - before)
            assert remote == local
        # every head of the small sample in one request the first time, none from the cache after
        # (the CSVs: a request, or none when the reader's tail bytes hold them)
        assert counts[0] - counts[1] == 1 and counts[1] <= 2
        assert kaggle.calls["DownloadDataFiles"] >= 1 and kaggle.calls["DownloadDataset"] == 0
        assert main(["stream", "--source", source, "--split", "all", "--image-size", "32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    pa = DataConfig()
    with open_archive(str(rsna_sample), pa) as a:
        ix = open_dataset(a, pa, 42, quiet=True)
        assert out["images"] == {s: len(ix.split("all", s)) for s in ("train", "val", "test")}
