"""The synthetic sample archive: Kaggle layout, exact headers, determinism, content mix."""

from __future__ import annotations

import csv
import io
import re
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from imgae_dx.data.datasets.base import SYNTHETIC_MARKER
from imgae_dx.data.datasets.nih import (
    BBOX_HEADER,
    DATA_ENTRY_HEADER,
    FINDINGS,
    METADATA_NAMES,
    NIHIndex,
)
from imgae_dx.testing.sample import write_sample_archive

NAME_RE = re.compile(r"^images_(\d{3})/images/(\d{8})_(\d{3})\.png$")


def _rows(zf: zipfile.ZipFile, name: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(zf.read(name).decode())))


def test_layout_and_exact_headers(small_archive: Path) -> None:
    with zipfile.ZipFile(small_archive) as zf:
        names = zf.namelist()
        assert zf.testzip() is None  # every CRC checks
        pngs = [n for n in names if n.endswith(".png")]
        assert len(pngs) == 120
        assert all(NAME_RE.match(n) for n in pngs), [n for n in pngs if not NAME_RE.match(n)][:3]
        assert {NAME_RE.match(n).group(1) for n in pngs} == {"001", "002", "003"}
        assert sum(n.startswith("images_002/") for n in pngs) == 40
        # metadata and the synthetic marker at the root, nothing else
        assert set(names) - set(pngs) == {*METADATA_NAMES, SYNTHETIC_MARKER}
        assert names == sorted(names)  # alphabetical like Kaggle's listing
        de = zf.read("Data_Entry_2017.csv").decode()
        bb = zf.read("BBox_List_2017.csv").decode()
        assert de.split("\n", 1)[0] == DATA_ENTRY_HEADER
        assert DATA_ENTRY_HEADER == (
            "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
            "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
        )
        assert bb.split("\n", 1)[0] == BBOX_HEADER == "Image Index,Finding Label,Bbox [x,y,w,h],,,"
        # deflate for metadata; PNGs deflated too (the reader must handle both methods anyway)
        infos = {i.filename: i for i in zf.infolist()}
        assert infos["Data_Entry_2017.csv"].compress_type == zipfile.ZIP_DEFLATED
        assert infos[pngs[0]].compress_type == zipfile.ZIP_DEFLATED
        assert all(i.date_time == infos[pngs[0]].date_time for i in zf.infolist())


def test_metadata_rows_match_names_and_list_extra_images(small_archive: Path) -> None:
    with zipfile.ZipFile(small_archive) as zf:
        pngs = {n.rsplit("/", 1)[1] for n in zf.namelist() if n.endswith(".png")}
        rows = _rows(zf, "Data_Entry_2017.csv")[1:]
        listed = [r[0] for r in rows]
        for r in rows:
            m = re.match(r"^(\d{8})_(\d{3})\.png$", r[0])
            assert m and int(m.group(1)) == int(r[3]) and int(m.group(2)) == int(r[2])
            assert r[6] in ("PA", "AP") and r[5] in ("M", "F") and len(r) == 11
        assert pngs < set(listed)  # every image listed, plus rows without an image here
        assert 5 <= len(set(listed) - pngs) <= 20
        tv = zf.read("train_val_list.txt").decode().split()
        te = zf.read("test_list.txt").decode().split()
        assert sorted(tv + te) == sorted(listed) and not set(tv) & set(te)


def test_patient_disjoint_lists_and_several_images_per_patient(small_archive: Path) -> None:
    with zipfile.ZipFile(small_archive) as zf:
        tv = {n[:8] for n in zf.read("train_val_list.txt").decode().split()}
        te = {n[:8] for n in zf.read("test_list.txt").decode().split()}
        rows = _rows(zf, "Data_Entry_2017.csv")[1:]
    assert not tv & te
    share = len(te) / (len(tv) + len(te))
    assert 0.2 <= share <= 0.4
    per_patient = np.bincount(np.unique([int(r[3]) for r in rows], return_inverse=True)[1])
    assert per_patient.max() >= 3 and (per_patient > 1).mean() > 0.3


def test_label_mix_views_and_findings() -> None:
    # label statistics on a realistic size; the plan is cheap (no pixels rendered)
    from imgae_dx.testing.sample.plan import plan_images

    plans, _, _ = plan_images(300, 3, seed=0)
    arch = [p for p in plans if p.stage]
    normal = np.mean([not p.findings for p in arch])
    assert 0.48 <= normal <= 0.58
    pa = np.mean([p.view == "PA" for p in arch])
    assert 0.55 <= pa <= 0.8
    found = {f for p in arch for f in p.findings}
    assert {"Nodule", "Mass", "Effusion", "Cardiomegaly", "Pneumothorax", "Atelectasis",
            "Infiltration"} <= found <= set(FINDINGS)
    assert any(len(p.findings) > 1 for p in arch)
    assert sum(p.rgba for p in arch) >= 2


def test_labels_and_bbox_rows(small_archive: Path) -> None:
    with zipfile.ZipFile(small_archive) as zf:
        rows = _rows(zf, "Data_Entry_2017.csv")[1:]
        boxes = _rows(zf, "BBox_List_2017.csv")[1:]
    labels = {r[0]: r[1] for r in rows}
    for lab in labels.values():
        parts = lab.split("|")
        assert lab == "No Finding" or (set(parts) <= set(FINDINGS) and len(set(parts)) == len(parts))
    assert boxes
    seen_labels = set()
    for b in boxes:
        assert len(b) == 9 and b[6:] == ["", "", ""]  # trailing empty fields like the real file
        name, lab = b[0], b[1]
        seen_labels.add(lab)
        x, y, w, h = map(float, b[2:6])
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 1024.001 and y + h <= 1024.001
        ref = "Infiltration" if lab == "Infiltrate" else lab
        assert ref in labels[name].split("|")
    assert "Infiltration" not in seen_labels  # the BBox list's spelling is "Infiltrate"


def test_rgba_member_present_and_images_gray(small_archive: Path) -> None:
    with zipfile.ZipFile(small_archive) as zf:
        pngs = [n for n in zf.namelist() if n.endswith(".png")]
        channels = []
        for n in pngs:
            a = cv2.imdecode(np.frombuffer(zf.read(n), np.uint8), cv2.IMREAD_UNCHANGED)
            assert a.dtype == np.uint8 and a.shape[:2] == (256, 256)
            channels.append(1 if a.ndim == 2 else a.shape[2])
            if a.ndim == 3:
                assert (a[..., 3] == 255).all() and (a[..., 0] == a[..., 2]).all()
    assert channels.count(4) >= 1 and channels.count(1) >= len(pngs) - 3


def test_deterministic_bytes_and_seed_changes(tmp_path: Path) -> None:
    kw = dict(images_per_stage=5, stages=2, image_px=64, progress=False)
    a = write_sample_archive(tmp_path / "a", seed=3, **kw).read_bytes()
    b = write_sample_archive(tmp_path / "b", seed=3, **kw).read_bytes()
    c = write_sample_archive(tmp_path / "c", seed=4, **kw).read_bytes()
    assert a == b
    assert a != c
    assert not list((tmp_path / "a").glob(".data.zip.*"))  # temp file replaced atomically


def test_bytes_do_not_depend_on_the_render_thread_count(tmp_path: Path, monkeypatch) -> None:
    import imgae_dx.testing.sample.render as render

    kw = dict(images_per_stage=24, stages=2, seed=5, image_px=96, progress=False)
    monkeypatch.setattr(render, "RENDER_THREADS", 1)
    one = write_sample_archive(tmp_path / "one", **kw).read_bytes()
    monkeypatch.setattr(render, "RENDER_THREADS", 5)
    five = write_sample_archive(tmp_path / "five", **kw).read_bytes()
    assert one == five


def test_metadata_independent_of_image_px(tmp_path: Path) -> None:
    kw = dict(images_per_stage=4, stages=2, seed=1, progress=False)
    z1 = zipfile.ZipFile(write_sample_archive(tmp_path / "p64", image_px=64, **kw))
    z2 = zipfile.ZipFile(write_sample_archive(tmp_path / "p96", image_px=96, **kw))
    for name in METADATA_NAMES:
        assert z1.read(name) == z2.read(name)


def test_png_size_like_real_ones_at_1024(tmp_path: Path) -> None:
    path = write_sample_archive(tmp_path, images_per_stage=4, stages=1, seed=0, progress=False)
    with zipfile.ZipFile(path) as zf:
        infos = [i for i in zf.infolist() if i.filename.endswith(".png")]
        for i in infos:
            a = cv2.imdecode(np.frombuffer(zf.read(i), np.uint8), cv2.IMREAD_UNCHANGED)
            assert a.shape[:2] == (1024, 1024)
            if a.ndim == 2:  # RGBA files (~0.5 %) are larger, as 4-channel PNGs are
                assert 300_000 <= i.file_size <= 500_000, (i.filename, i.file_size)


def test_images_look_like_chest_radiographs(small_archive: Path) -> None:
    """Dark lungs between brighter mediastinum and chest wall; air outside the body is darkest."""
    with zipfile.ZipFile(small_archive) as zf:
        names = [n for n in zf.namelist() if n.endswith(".png")][:10]
        for n in names:
            a = cv2.imdecode(np.frombuffer(zf.read(n), np.uint8), cv2.IMREAD_GRAYSCALE).astype(float)
            lung_r = a[90:130, 50:80].mean()  # patient's right lung (image left), mid-height
            lung_l = a[90:130, 176:206].mean()
            mediastinum = a[60:100, 120:136].mean()
            abdomen = a[230:250, 100:156].mean()
            assert mediastinum > min(lung_r, lung_l) + 40, n
            assert abdomen > min(lung_r, lung_l) + 40, n
            assert a[0:6, 0:12].mean() < min(lung_r, lung_l), n  # air above the shoulders


def test_index_on_sample_has_usable_splits(small_archive: Path) -> None:
    with zipfile.ZipFile(small_archive) as zf:
        index = NIHIndex.from_files(*(zf.read(n) for n in METADATA_NAMES), zf.namelist())
    assert index.stages() == ["images_001", "images_002", "images_003"]
    assert index.rows_without_member >= 5
    test = index.split("all", "test", view="PA", val_fraction=0.1, seed=0)
    lab = index.labels(test)
    assert 0 < lab.sum() < len(lab)
    assert len(index.split("all", "train", view="PA", val_fraction=0.1, seed=0)) > 10
    index.check_disjoint(0.1, 0)


@pytest.mark.parametrize("bad", [dict(images_per_stage=0), dict(stages=0), dict(image_px=8),
                                 dict(png_method="lzma")])
def test_rejects_bad_arguments(tmp_path: Path, bad: dict) -> None:
    kw = dict(images_per_stage=2, stages=1, image_px=64, progress=False)
    kw.update(bad)
    with pytest.raises(ValueError):
        write_sample_archive(tmp_path, **kw)


def test_stored_png_members(tmp_path: Path) -> None:
    path = write_sample_archive(tmp_path, images_per_stage=2, stages=1, image_px=64, progress=False,
                                png_method="stored")
    with zipfile.ZipFile(path) as zf:
        for i in zf.infolist():
            assert i.compress_type == (zipfile.ZIP_STORED if i.filename.endswith(".png")
                                       else zipfile.ZIP_DEFLATED)
        assert zf.testzip() is None


def test_wide_variety_widens_pose_exposure_and_adds_clutter_to_both_classes() -> None:
    from imgae_dx.testing.sample.plan import plan_images

    std, _, _ = plan_images(200, 2, seed=4)
    wide, _, _ = plan_images(200, 2, seed=4, variety="wide")
    assert abs(np.mean([not p.findings for p in wide]) - np.mean([not p.findings for p in std])) < 0.08
    assert not any(p.leads or any(p.collimation) for p in std)

    def spread(plans, i, part):
        return float(np.std([getattr(p, part)[i] for p in plans]))

    for part, i in (("warp", 0), ("warp", 1), ("window", 0), ("window", 2)):
        assert spread(wide, i, part) > 2 * spread(std, i, part), (part, i)
    # the clutter of real normals is in both classes, not a proxy for the label
    for normal in (True, False):
        grp = [p for p in wide if (not p.findings) == normal]
        assert 0.2 < np.mean([bool(p.leads) for p in grp]) < 0.5
        assert 0.1 < np.mean([any(p.collimation) for p in grp]) < 0.45


def test_wide_archive_renders_leads_and_collimation(tmp_path: Path) -> None:
    from imgae_dx.testing.sample.plan import plan_images
    from imgae_dx.testing.sample.render import Renderer

    plans, anatomy, _ = plan_images(40, 1, seed=2, variety="wide")
    r = Renderer(128, 2)
    p = next(p for p in plans if p.leads and not p.rgba)
    bare = r.render(type(p)(**{**p.__dict__, "leads": ()}), anatomy[p.patient])
    with_leads = r.render(p, anatomy[p.patient])
    assert (with_leads.astype(int) - bare).max() > 40  # bright electrodes and wires
    q = next(p for p in plans if p.collimation[1] > 0.03 and not p.rgba)  # a top band
    img = r.render(q, anatomy[q.patient])
    assert img[1:3, 40:90].mean() > 200  # unexposed: bright
    path = write_sample_archive(tmp_path, images_per_stage=20, stages=1, seed=2, image_px=64,
                                variety="wide", progress=False)
    assert zipfile.ZipFile(path).testzip() is None
    with pytest.raises(ValueError, match="variety must be one of standard, wide"):
        plan_images(10, 1, seed=0, variety="noisy")


# ------------------------------------------------------------------------ other layouts
def test_zhanglab_sample_has_kaggles_layout_junk_and_second_tree(tmp_path: Path) -> None:
    from imgae_dx.testing.sample import write_zhanglab_archive

    path = write_zhanglab_archive(tmp_path / "a", images=60, seed=3, image_px=96)
    assert path.read_bytes() == write_zhanglab_archive(tmp_path / "b", images=60, seed=3, image_px=96).read_bytes()
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert zf.testzip() is None and SYNTHETIC_MARKER in names
        tree = [n for n in names if re.match(r"^chest_xray/(train|val|test)/(NORMAL|PNEUMONIA)/[^/]+\.jpeg$", n)]
        assert len(tree) == 60
        assert {f"chest_xray/chest_xray/{n[len('chest_xray/'):]}" for n in tree} <= set(names)
        assert any(n.startswith("__MACOSX/chest_xray/") and "/._" in n for n in names)
        assert any(n.startswith("chest_xray/__MACOSX/") for n in names)
        assert "chest_xray/.DS_Store" in names
        square, channels = [], set()
        for n in tree:
            img = cv2.imdecode(np.frombuffer(zf.read(n), np.uint8), cv2.IMREAD_UNCHANGED)
            square.append(img.shape[0] == img.shape[1])
            channels.add(1 if img.ndim == 2 else img.shape[2])
        assert sum(square) < len(tree) // 4 and channels == {1, 3}  # mostly non-square; gray and RGB
        files = [n.rsplit("/", 1)[1] for n in tree]
        assert any(re.match(r"^person\d+_(bacteria|virus)_\d+\.jpeg$", f) for f in files)
        assert any(re.match(r"^(NORMAL2-)?IM-\d{4}-\d{4}\.jpeg$", f) for f in files)
        assert {n.split("/")[1] for n in tree} == {"train", "val", "test"}


def test_folder_sample_mixes_formats_and_strays_and_has_a_labels_csv_variant(tmp_path: Path) -> None:
    from imgae_dx.testing.sample import write_folder_archive

    path = write_folder_archive(tmp_path / "a", images=60, seed=3, image_px=96)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert SYNTHETIC_MARKER in names and "my_xrays/normal/README.txt" in names
        imgs = [n for n in names if n.startswith("my_xrays/") and n.endswith((".png", ".jpg"))]
        kinds = {(n.rsplit(".", 1)[1], zf.read(n)[:4] == b"\x89PNG") for n in imgs}
        assert ("png", True) in kinds and ("jpg", False) in kinds and ("png", False) in kinds  # misnamed JPEG
        assert any(re.match(r"^my_xrays/abnormal/[a-z_]+/", n) for n in imgs)  # findings subfolders
        assert any(n.startswith("my_xrays/normal/site_b/") for n in imgs)
    csv_path = write_folder_archive(tmp_path / "c", images=60, seed=3, image_px=96, labels_csv=True)
    with zipfile.ZipFile(csv_path) as zf:
        rows = _rows(zf, "my_xrays/labels.csv")
        assert rows[0] == ["path", "label", "patient", "view", "split"] and len(rows) == 61
        assert all(f"my_xrays/{r[0]}" in zf.namelist() for r in rows[1:])
        assert {r[1] for r in rows[1:]} == {"normal", "abnormal"}
