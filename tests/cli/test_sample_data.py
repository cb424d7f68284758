"""``imgae-dx sample-data``: writes OUT_DIR/data.zip and prints path, counts and size."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from imgae_dx.cli import main


def test_sample_data_command(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    import imgae_dx.testing.sample as sample

    real = sample.write_sample_archive
    # keep the pixels small: the command's contract is layout and counts, not image size
    monkeypatch.setattr(sample, "write_sample_archive",
                        lambda *a, **kw: real(*a, **{**kw, "image_px": 64}))
    rc = main(["sample-data", str(tmp_path / "out"), "--images-per-stage", "6", "--stages", "2",
               "--seed", "5"])
    assert rc == 0
    out = capsys.readouterr().out
    path = tmp_path / "out" / "data.zip"
    assert out.splitlines()[0] == str(path)
    assert "12 images in 2 stages (images_001, images_002)" in out
    assert "MB written in" in out and "without an image here" in out
    with zipfile.ZipFile(path) as zf:
        assert sum(n.endswith(".png") for n in zf.namelist()) == 12


def test_sample_data_rejects_bad_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sample-data", str(tmp_path), "--images-per-stage", "0"]) == 2
    assert "--images-per-stage" in capsys.readouterr().err
    assert main(["sample-data", str(tmp_path), "--stages", "1000"]) == 2
    assert not (tmp_path / "data.zip").exists()


def test_sample_data_unwritable_out_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["sample-data", str(blocker / "sub"), "--images-per-stage", "1", "--stages", "1"]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_sample_data_wide_variety(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    import imgae_dx.testing.sample as sample

    seen = {}
    real = sample.write_sample_archive

    def spy(*a, **kw):
        seen.update(kw)
        return real(*a, **{**kw, "image_px": 64})

    monkeypatch.setattr(sample, "write_sample_archive", spy)
    assert main(["sample-data", str(tmp_path / "w"), "--images-per-stage", "4", "--stages", "1",
                 "--variety", "wide"]) == 0
    assert seen["variety"] == "wide" and (tmp_path / "w" / "data.zip").is_file()
    with pytest.raises(SystemExit):
        main(["sample-data", str(tmp_path / "x"), "--variety", "extreme"])
    assert "invalid choice: 'extreme'" in capsys.readouterr().err


@pytest.mark.parametrize("dataset, extra, needle", [
    ("zhanglab", [], "of the zhanglab layout"),
    ("folder", [], "skipped 2 files that are not PNG, JPEG or DICOM"),
    ("folder", ["--labels-csv"], "of the folder layout"),
])
def test_sample_data_other_layouts(tmp_path: Path, capsys: pytest.CaptureFixture[str], dataset, extra,
                                   needle) -> None:
    assert main(["sample-data", str(tmp_path / dataset), "--dataset", dataset, "--images", "24", *extra]) == 0
    out = capsys.readouterr().out
    assert "24 images in 1 stages (part_001)" in out and needle in out
    assert (tmp_path / dataset / "data.zip").is_file()


def test_sample_data_rsna(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    import imgae_dx.testing.sample as sample

    real = sample.write_rsna_archive
    monkeypatch.setitem(sample.SAMPLE_WRITERS, "rsna", lambda *a, **kw: real(*a, **{**kw, "image_px": 64}))
    assert main(["sample-data", str(tmp_path / "r"), "--dataset", "rsna", "--images", "24"]) == 0
    out = capsys.readouterr().out
    assert "24 images in 1 stages (part_001) of the rsna layout" in out
    assert "classes: Normal " in out and "Lung Opacity " in out and " PA, " in out
    assert "skipped 2 unlabeled images in stage_2_test_images/ (never used)" in out
    with zipfile.ZipFile(tmp_path / "r" / "data.zip") as zf:
        assert sum(n.startswith("stage_2_train_images/") for n in zf.namelist()) == 24


def test_labels_csv_is_for_the_folder_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sample-data", str(tmp_path), "--dataset", "zhanglab", "--labels-csv"]) == 2
    assert "--labels-csv" in capsys.readouterr().err
    assert main(["sample-data", str(tmp_path), "--dataset", "folder", "--images", "2"]) == 2
