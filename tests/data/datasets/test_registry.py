"""Which dataset an archive is: --dataset, NIH by its metadata, detection, refusals; the marker."""

from __future__ import annotations

import logging
import zipfile

import pytest
from dataset_helpers import image_bytes, write_zip

from imgae_dx.config import DataConfig, load_config, packaged_config_path
from imgae_dx.data.datasets import DATASET_NAMES, open_dataset
from imgae_dx.data.datasets.base import SYNTHETIC_MARKER
from imgae_dx.data.datasets.registry import detect, resolve_dataset, spec
from imgae_dx.errors import UserError
from imgae_dx.streaming.sources import open_archive

ZL = {f"chest_xray/{s}/{c}/IM-{i:04d}-0001.jpeg": image_bytes("jpeg", i)
      for i, (s, c) in enumerate([("train", "NORMAL")] * 6 + [("test", "NORMAL"), ("test", "PNEUMONIA")])}
FOLDER = {**{f"normal/{i}.png": image_bytes("png", i) for i in range(6)}, "abnormal/x.png": image_bytes("png", 9)}


def test_every_name_has_a_spec_that_says_where_it_comes_from():
    assert DATASET_NAMES == ("nih", "zhanglab", "rsna", "folder")
    for name in DATASET_NAMES:
        s = spec(name)
        assert s.name == name and s.title and s.layout and s.protocol and s.source
    with pytest.raises(UserError, match="unknown dataset 'chexpert'; choose one of nih, zhanglab, rsna, folder"):
        spec("chexpert")


def test_detection_nih_first_then_the_one_layout_that_matches(tmp_path, small_archive, caplog):
    assert detect(list(ZL)) == ["zhanglab"] and detect(list(FOLDER)) == ["folder"]
    rsna = ["stage_2_train_labels.csv", "stage_2_detailed_class_info.csv", "stage_2_train_images/a.dcm"]
    assert detect(rsna) == detect([f"top/{n}" for n in rsna]) == ["rsna"]
    assert detect(rsna[:2]) == detect(rsna[1:]) == []  # labels and images both needed
    assert detect(["a.txt"]) == []
    with open_archive(str(small_archive)) as a:
        assert resolve_dataset(a, None) == "nih"
    with caplog.at_level(logging.INFO), open_archive(str(write_zip(tmp_path / "z.zip", ZL))) as a:
        assert resolve_dataset(a, None) == "zhanglab"
    assert "dataset: zhanglab (detected from the layout" in caplog.text
    with open_archive(str(write_zip(tmp_path / "none.zip", {"a/b.txt": b"x"}))) as a, \
            pytest.raises(UserError, match="matches no dataset layout .*nih: .*zhanglab: .*rsna: .*folder: "):
        resolve_dataset(a, None)
    both = write_zip(tmp_path / "both.zip", {**ZL, **FOLDER})
    with open_archive(str(both)) as a:
        with pytest.raises(UserError, match=r"several dataset layouts \(zhanglab, folder\); choose one "
                                            r"with --dataset zhanglab\|folder"):
            resolve_dataset(a, None)
        assert resolve_dataset(a, "folder") == "folder"  # named: no ambiguity
        assert len(open_dataset(a, DataConfig(dataset="folder"), 1, quiet=True)) == 7


def test_a_named_dataset_the_archive_is_not_laid_out_as_is_refused(tmp_path, small_archive):
    with open_archive(str(small_archive)) as a, \
            pytest.raises(UserError, match="is not laid out as zhanglab .*chest_xray"):
        resolve_dataset(a, "zhanglab")
    with open_archive(str(write_zip(tmp_path / "f.zip", FOLDER))) as a, \
            pytest.raises(UserError, match=r"not laid out as zhanglab .*it looks like folder \(--dataset folder\)"):
        resolve_dataset(a, "zhanglab")


def test_the_synthetic_marker_not_the_archive_size_says_synthetic(tmp_path, small_archive):
    cfg = DataConfig(view="all")
    with open_archive(str(small_archive), cfg) as a:
        assert open_dataset(a, cfg, 0, quiet=True).synthetic
    real_like = tmp_path / "subset.zip"  # the same NIH subset without the marker: real data
    with zipfile.ZipFile(small_archive) as src, zipfile.ZipFile(real_like, "w") as dst:
        for info in src.infolist():
            if info.filename != SYNTHETIC_MARKER:
                dst.writestr(info, src.read(info.filename))
    with open_archive(str(real_like), cfg) as a:
        ix = open_dataset(a, cfg, 0, quiet=True)
        assert ix.name == "nih" and not ix.synthetic and ix.summary()["metadata_rows"] < 1000


@pytest.mark.parametrize("layout", ["zhanglab", "folder"])
def test_demo_config_on_other_datasets_uses_all_their_images(tmp_path, layout):
    """demo.yaml sets view: PA; a dataset without views must still train on every normal."""
    path = write_zip(tmp_path / f"{layout}.zip", ZL if layout == "zhanglab" else FOLDER)
    cfg = load_config(packaged_config_path("demo.yaml"), {"source": str(path)})
    assert cfg.data.view == "PA" and cfg.data.dataset is None
    with open_archive(cfg.source, cfg.data) as a:
        ix = open_dataset(a, cfg.data, cfg.seed, quiet=True)
        stages = ix.resolve_stages(cfg.stages)
        n = sum(len(ix.split(s, sp)) for s in stages for sp in ("train", "val"))
        pool = int(ix.normal.sum()) - sum(int(ix.normal[ix.member == m][0]) for m in ix.split("all", "test"))
        assert ix.name == layout and n == pool > 0
