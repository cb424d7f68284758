"""``imgae-dx predict``: real files in, predictions.csv / overlays / index.html out, bad files on
their rows and stderr, exit status 1 when any failed, nothing written outside --out; hostile
names (not UTF-8, formulas), earlier outputs, --out as the input folder, scope warnings."""

from __future__ import annotations

import csv
import os
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from imgae_dx.cli import main

from ..data.test_dicom import make_dicom
from ..visualization.test_report import needs_chromium, render_check
from .conftest import gray_of, make_run_folder
from .test_images import bomb_png


def _snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for p in root.rglob("*"):
        if p.is_file() and skip not in p.parents:
            st = p.stat()
            out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "predictions.csv").open(newline="") as f:
        r = csv.DictReader(f)
        assert tuple(r.fieldnames or ()) == ("path", "model", "score", "percentile", "flagged", "error",
                                             "warning")
        return list(r)


@pytest.fixture
def inputs(tmp_path, sample_pngs) -> dict[str, Path]:
    """A scans/ folder of good files of every kind, and bad files beside it."""
    scans = tmp_path / "scans"
    (scans / "nested").mkdir(parents=True)
    (scans / ".hidden").mkdir()
    shutil.copy(sample_pngs[0], scans / "a.png")
    shutil.copy(sample_pngs[1], scans / "nested" / "b.PNG")
    shutil.copy(sample_pngs[2], scans / ".hidden" / "skipped.png")
    gray = gray_of(sample_pngs[3])
    (scans / "c.jpg").write_bytes(cv2.imencode(".jpg", gray)[1].tobytes())
    make_dicom(scans / "IM0001", gray.astype(np.uint16) * 16, bits_stored=12)  # bare scanner name
    make_dicom(scans / "d1.dcm", 4095 - gray.astype(np.uint16) * 16, bits_stored=12,
               photometric="MONOCHROME1", window_cw=(2048.0, 4096.0))
    (scans / "notes.txt").write_text("not scanned: not an image name")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "text.png").write_text("I am text")
    data = sample_pngs[4].read_bytes()
    (bad / "truncated.png").write_bytes(data[: len(data) // 3])
    bomb_png(bad / "bomb.png")
    make_dicom(bad / "nopixels.dcm", None, bits_stored=8)
    return {"scans": scans, "bad": bad}


def test_predict_scores_every_good_file_and_reports_each_bad_one(tmp_path, inputs, capsys):
    run = make_run_folder(tmp_path / "run")
    out = tmp_path / "out"
    before = _snapshot(tmp_path, out)
    bad = inputs["bad"]
    args = ["predict", str(inputs["scans"]), str(bad / "text.png"), str(bad / "truncated.png"),
            str(bad / "bomb.png"), str(bad / "nopixels.dcm"), str(tmp_path / "nowhere.png"),
            str(tmp_path / "scans" / "*.gif"), "--run", str(run), "--out", str(out)]
    rc = main(args)
    cap = capsys.readouterr()
    assert rc == 1
    assert _snapshot(tmp_path, out) == before  # nothing written outside --out
    rows = _rows(out)
    paths = list(dict.fromkeys(r["path"] for r in rows))
    good = [str(inputs["scans"] / n) for n in ("IM0001", "a.png", "c.jpg", "d1.dcm", "nested/b.PNG")]
    assert paths[:5] == good  # the folder, recursively, sorted; hidden and non-image names skipped
    assert len(rows) == 3 * len(paths) == 3 * 11
    for r in rows:
        if r["path"] in good:
            assert r["error"] == "" and float(r["score"]) > 0 and 0 <= float(r["percentile"]) <= 100
            assert r["flagged"] in ("true", "false")
        else:
            assert r["error"] and r["score"] == r["percentile"] == r["flagged"] == ""
    errors = {r["path"]: r["error"] for r in rows if r["error"]}
    assert "not a PNG, JPEG or DICOM" in errors[str(bad / "text.png")]
    assert "truncated" in errors[str(bad / "truncated.png")]
    assert "before decoding" in errors[str(bad / "bomb.png")]
    assert "no pixel data" in errors[str(bad / "nopixels.dcm")]
    assert "no such file" in errors[str(tmp_path / "nowhere.png")]
    assert "no file matches" in errors[str(tmp_path / "scans" / "*.gif")]
    # stderr: one line per bad file, then the one-line summary
    for p, e in errors.items():
        assert f"error: {p}: {e}" in cap.err
    assert cap.err.strip().splitlines()[-1] == (
        f"6 of 11 files could not be scored (see the error column of {out / 'predictions.csv'})")
    assert "scored 5 of 11 files" in cap.out
    overlays = sorted((out / "overlays").iterdir())
    assert len(overlays) == 5 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in overlays)
    img = cv2.imread(str(overlays[0]))
    assert img.shape[1] > 4 * 256  # input + three model panels with colour bars


def test_same_image_as_dicom_and_png_scores_the_same(tmp_path, sample_pngs):
    import imgae_dx

    gray = gray_of(sample_pngs[0]).copy()
    gray[0, 0], gray[0, 1] = 0, 255
    png = tmp_path / "x.png"
    png.write_bytes(cv2.imencode(".png", gray)[1].tobytes())
    dcm = make_dicom(tmp_path / "x.dcm", gray.astype(np.uint16) * 16, bits_stored=12)
    res = imgae_dx.load(make_run_folder(tmp_path / "run")).predict([png, dcm])
    by = {(Path(r.source).suffix, r.model): r.score for r in res}
    for m in ("unet", "ra", "ae"):
        assert by[(".png", m)] == by[(".dcm", m)]


def test_all_good_exits_0_and_a_second_run_replaces_its_own_outputs(tmp_path, sample_pngs, capsys):
    run = make_run_folder(tmp_path / "run", models=("ae",))
    out = tmp_path / "out"
    assert main(["predict", *map(str, sample_pngs[:3]), "--run", str(run), "--out", str(out)]) == 0
    assert len(list((out / "overlays").iterdir())) == 3 and "error" not in capsys.readouterr().err
    before = (out / "predictions.csv").read_bytes()
    # an earlier run's outputs are not replaced silently
    assert main(["predict", str(sample_pngs[0]), "--run", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds predictions.csv and index.html" in err and "--overwrite" in err
    assert (out / "predictions.csv").read_bytes() == before and len(list((out / "overlays").iterdir())) == 3
    assert main(["predict", str(sample_pngs[0]), "--run", str(run), "--out", str(out),
                 "--specificity", "0.5", "--overwrite"]) == 0
    assert len(list((out / "overlays").iterdir())) == 1 and len(_rows(out)) == 1
    capsys.readouterr()
    # an out folder holding someone else's overlays/ is refused untouched
    other = tmp_path / "other"
    (other / "overlays").mkdir(parents=True)
    (other / "overlays" / "mine.png").write_bytes(b"x")
    assert main(["predict", str(sample_pngs[0]), "--run", str(run), "--out", str(other)]) == 2
    assert "not write" in capsys.readouterr().err and (other / "overlays" / "mine.png").is_file()


def test_out_inside_an_input_folder_is_not_scanned(tmp_path, sample_pngs):
    run = make_run_folder(tmp_path / "run", models=("ae",))
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(sample_pngs[0], scans / "a.png")
    for _ in range(2):
        assert main(["predict", str(scans), "--run", str(run), "--out", str(scans / "pred"),
                     "--overwrite"]) == 0
        assert [r["path"] for r in _rows(scans / "pred")] == [str(scans / "a.png")]


def test_out_may_be_the_input_folder_itself(tmp_path, sample_pngs, capsys):
    """It used to be reported as a folder holding no image; its files are scored, its own
    overlays/ never."""
    run = make_run_folder(tmp_path / "run", models=("ae",))
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(sample_pngs[0], scans / "a.png")
    shutil.copy(sample_pngs[1], scans / "b.png")
    for _ in range(2):
        assert main(["predict", str(scans), "--run", str(run), "--out", str(scans), "--overwrite"]) == 0
        assert [r["path"] for r in _rows(scans)] == [str(scans / "a.png"), str(scans / "b.png")]
    assert "holds no PNG" not in capsys.readouterr().err


def test_hostile_names_cannot_lose_the_run_or_inject_formulas(tmp_path, sample_pngs, capsys,
                                                             monkeypatch):
    """A name that is not UTF-8 used to kill the run (UnicodeEncodeError, no CSV, no gallery);
    a name starting with '=' landed verbatim in the CSV, where a spreadsheet runs it."""
    run = make_run_folder(tmp_path / "run", models=("ae",))
    scans = tmp_path / "scans"
    scans.mkdir()
    latin1 = os.fsdecode(b"M\xfcller.png")  # 'M\udcfcller.png': Latin-1 bytes, not UTF-8
    names = [latin1, '=HYPERLINK("http:evil","click").png', "+1.png", "@SUM(A1).png", "-2.png",
             "\tx.png", "ok.png"]
    for name, src in zip(names, sample_pngs * 2, strict=False):
        shutil.copy(src, scans / name)
    (scans / "=bad.png").write_text("not an image")  # an error row: its own path and message
    out = tmp_path / "out"
    rc = main(["predict", str(scans), "--run", str(run), "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 1  # only the text file failed
    (out / "predictions.csv").read_bytes().decode("utf-8")  # valid UTF-8 throughout
    rows = _rows(out)
    assert len(rows) == len(names) + 1 and sum(1 for r in rows if r["score"]) == len(names)
    paths = {r["path"] for r in rows}
    assert f"{scans}/M\ufffdller.png" in paths  # shown with a replacement character
    assert str(scans / '=HYPERLINK("http:evil","click").png') in paths
    assert f"error: {scans}/=bad.png: not a PNG" in cap.err
    doc = (out / "index.html").read_text(encoding="utf-8")
    assert "M\ufffdller.png" in doc and "=HYPERLINK(&quot;http:evil&quot;" in doc
    assert len(list((out / "overlays").iterdir())) == len(names)
    # given as bare names (a relative path starts with the name itself), every cell is safe
    monkeypatch.chdir(scans)
    assert main(["predict", "--run", str(run), "--out", str(tmp_path / "o2"), "--", *names[1:-1],
                 "=bad.png"]) == 1
    rows = _rows(tmp_path / "o2")
    for r in rows:
        for cell in r.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), r
    assert [r["path"] for r in rows] == ["'" + n for n in names[1:-1]] + ["'=bad.png"]


def test_scope_warnings_mark_the_row_and_the_gallery(tmp_path, sample_pngs):
    import pydicom

    ct = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
    if not ct.is_file():
        pytest.skip("pydicom's CT_small.dcm is not installed")
    run = make_run_folder(tmp_path / "run", models=("ae",))
    out = tmp_path / "out"
    assert main(["predict", str(ct), str(sample_pngs[0]), "--run", str(run), "--out", str(out)]) == 0
    rows = {Path(r["path"]).name: r for r in _rows(out)}
    assert rows["CT_small.dcm"]["score"] and "Modality CT" in rows["CT_small.dcm"]["warning"]
    assert rows[sample_pngs[0].name]["warning"] == ""
    doc = (out / "index.html").read_text()
    assert doc.count("class=wbadge") == 1 and "Modality CT is not a projection radiograph" in doc


@pytest.mark.parametrize("argv,match", [
    (["--specificity", "1.5"], "between 0 and 1"),
    (["--model-name", "ra"], "holds no 'ra' model"),
])
def test_user_errors_are_one_line_exit_2(argv, match, tmp_path, sample_pngs, capsys):
    run = make_run_folder(tmp_path / "run", models=("ae",))
    rc = main(["predict", str(sample_pngs[0]), "--run", str(run), "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and re.search(match, err) and len(err.strip().splitlines()) == 1


def test_not_a_run_nor_a_bundle(tmp_path, sample_pngs, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(sample_pngs[0]), "--model", str(tmp_path / "empty")]) == 2
    assert "is not a model bundle" in capsys.readouterr().err


@needs_chromium
@pytest.mark.slow
def test_gallery_is_sorted_by_score_and_renders_in_headless_chromium(tmp_path, sample_pngs, inputs):
    run = make_run_folder(tmp_path / "run")
    out = tmp_path / "out"
    assert main(["predict", str(inputs["scans"]), str(inputs["bad"] / "text.png"), "--run", str(run),
                 "--out", str(out)]) == 1
    doc = (out / "index.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", doc)
    assert "<script" not in doc.lower()
    rows = _rows(out)
    best: dict[str, float] = {}
    for r in rows:
        if r["score"]:
            best[r["path"]] = max(best.get(r["path"], -1.0), float(r["percentile"]))
    shown = re.findall(r"<div class=path>([^<]+)</div>", doc)
    assert sorted(shown) == sorted(best)
    assert [best[p] for p in shown] == sorted(best.values(), reverse=True)  # most anomalous first
    assert "text.png" in doc and "Files that could not be scored" in doc
    # the probe page goes beside index.html: the overlays are relative links into the same folder
    res = render_check(out / "index.html", out, screenshot=tmp_path / "gallery.png")
    assert res["n"] == 5 and res["broken"] == [] and res["console_errors"] == [], res
    keep = os.environ.get("IMGAE_DX_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "gallery.png", Path(keep) / "gallery_screenshot.png")
