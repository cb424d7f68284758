"""The acceptance scenario of predict and export, run as a user would, on a real tiny training run
with the default models (unet, ra, pca):

* ``export`` writes a bundle for every model (the PCA baseline: its components and mean as
  safetensors, its ONNX graph with ``--onnx``, a model card);
* ``predict`` over a folder of good files and hostile ones — a name that is not UTF-8, a
  formula-named file, a FIFO, a link to ``/dev/zero``, a deflated-DICOM bomb that inflates to
  2 GB — finishes, scores every good file, writes an error row for each bad one, stays under
  1.5 GB of peak RSS (measured on the ``predict`` process), and no CSV cell starts with
  ``= + - @`` (tab, CR);
* a tampered bundle (``config.json`` asking for a 509-billion-number U-Net) is refused in one
  line, exit status 2, without building the network (its process stays small).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from imgae_dx.cli import main
from imgae_dx.config import nest_dotted

from ..data.test_dicom import deflate_bomb, make_dicom
from ..inference.conftest import DEFAULT_MODELS, TINY, extract_pngs, gray_of

#: the trainer's quick settings on top of the tiny widths of the inference tests
QUICK = {"data.val_fraction": 0.4, "data.decode_workers": 1, "data.shuffle_buffer": 16,
         "training.log_every_steps": 1, "training.checkpoint_every_steps": 4,
         "training.warmup_steps": 2, "seed": 7}
PEAK_RSS_LIMIT_MB = 1536
#: peak RSS of a child process: run it under this wrapper, which prints its children's maxrss (kB)
MEASURE = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
           "sys.exit(rc)")


@pytest.fixture(scope="module")
def default_run(small_archive, tmp_path_factory) -> Path:
    """``imgae-dx train`` without ``--model``: the default models, one small stage, 64 px."""
    tmp = tmp_path_factory.mktemp("default_run")
    cfg = tmp / "tiny.yaml"
    flagged = {"data.image_size", "training.batch_size", "training.device"}
    cfg.write_text(yaml.safe_dump(nest_dotted({k: v for k, v in {**TINY, **QUICK}.items()
                                               if k not in flagged})))
    run = tmp / "run"
    assert main(["train", "--config", str(cfg), "--source", str(small_archive), "--out", str(run),
                 "--stages", "images_001", "--image-size", "64", "--batch-size", "4",
                 "--epochs-per-stage", "1", "--device", "cpu"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["models"] == list(DEFAULT_MODELS)
    return run


def _measured(argv: list[str], tmp: Path) -> tuple[int, str, int]:
    """Run ``python -m imgae_dx ARGV`` in its own process: (exit status, stderr, peak RSS MB)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    res = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "imgae_dx", *argv],
                         capture_output=True, text=True, timeout=600, cwd=tmp, env=env,
                         errors="replace")
    *err, peak_kb = res.stderr.strip().splitlines()
    return res.returncode, "\n".join(err), int(peak_kb) // 1024


def _hostile_folder(root: Path, archive: Path) -> tuple[list[Path], list[Path]]:
    """(good files, bad files) in ``root``."""
    root.mkdir()
    pngs = extract_pngs(archive, root.parent / "src_pngs", 4)
    good = [root / "a.png", root / os.fsdecode(b"M\xfcller.png"),
            root / '=HYPERLINK("http:evil","click").png', root / "d.jpg", root / "e.dcm"]
    shutil.copy(pngs[0], good[0])
    shutil.copy(pngs[1], good[1])  # Latin-1 bytes: not UTF-8
    shutil.copy(pngs[2], good[2])  # a name a spreadsheet would run
    gray = gray_of(pngs[3])
    good[3].write_bytes(cv2.imencode(".jpg", gray)[1].tobytes())
    make_dicom(good[4], gray.astype(np.uint16) * 16, bits_stored=12)
    bad = [root / "fifo.png", root / "zero.png", root / "bomb.dcm"]
    os.mkfifo(bad[0])  # nobody writes to it
    bad[1].symlink_to("/dev/zero")
    bad[2].write_bytes(deflate_bomb())  # ~2 MB, inflates to 2 GB
    return good, bad


@pytest.mark.slow
def test_export_and_predict_hold_against_hostile_inputs(default_run, small_archive, tmp_path, capsys):
    # export: every default model, the PCA baseline included
    bundle = tmp_path / "bundle"
    assert main(["export", "--run", str(default_run), "--out", str(bundle)]) == 0
    assert sorted(p.name for p in bundle.iterdir()) == sorted(DEFAULT_MODELS)
    for m in DEFAULT_MODELS:
        assert {p.name for p in (bundle / m).iterdir()} == {
            "config.json", "model.safetensors", "calibration.json", "MODEL_CARD.md"}
        cfg = json.loads((bundle / m / "config.json").read_text())
        assert cfg["source"]["name"] == "data.zip" and str(small_archive.parent) not in json.dumps(cfg)
    assert "PCA baseline" in (bundle / "pca" / "MODEL_CARD.md").read_text()
    onnx = tmp_path / "onnx"
    assert main(["export", "--run", str(default_run), "--out", str(onnx), "--model-name", "pca",
                 "--onnx"]) == 0
    assert (onnx / "pca" / "model.onnx").is_file()
    capsys.readouterr()

    # predict over the hostile folder, in its own process, peak RSS measured
    good, bad = _hostile_folder(tmp_path / "scans", small_archive)
    out = tmp_path / "out"
    rc, err, peak_mb = _measured(["predict", str(tmp_path / "scans"), "--model", str(bundle),
                                  "--out", str(out)], tmp_path)
    print(f"acceptance: predict over {len(good)} good + {len(bad)} hostile files: exit {rc}, "
          f"peak RSS {peak_mb} MB")
    assert rc == 1, err  # some files could not be scored
    assert peak_mb < PEAK_RSS_LIMIT_MB
    with (out / "predictions.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    shown = {p: os.fsencode(str(p)).decode("utf-8", "replace") for p in good + bad}
    by_path: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_path.setdefault(r["path"], []).append(r)
    assert set(by_path) == set(shown.values())
    for p in good:
        got = by_path[shown[p]]
        assert sorted(r["model"] for r in got) == sorted(DEFAULT_MODELS)
        assert all(r["error"] == "" and float(r["score"]) >= 0 for r in got), got
    reasons = {bad[0]: "FIFO", bad[1]: "character device", bad[2]: "inflates to more than"}
    for p, why in reasons.items():
        got = by_path[shown[p]]
        assert len(got) == len(DEFAULT_MODELS) and all(r["score"] == "" and why in r["error"] for r in got)
    for r in rows:
        for cell in r.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), r
    assert len(list((out / "overlays").iterdir())) == len(good)
    assert "M\ufffdller.png" in (out / "index.html").read_text(encoding="utf-8")

    # a tampered bundle: refused in one line, exit 2, without building the network
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    cfg_path = tampered / "unet" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["architecture"].update(base_channels=4096, depth=6)  # 2 TB of float32 if built
    cfg_path.write_text(json.dumps(cfg))
    rc, err, peak_mb = _measured(["predict", str(good[0]), "--model", str(tampered),
                                  "--out", str(tmp_path / "out2")], tmp_path)
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and "does not fit model.safetensors" in err
    assert peak_mb < PEAK_RSS_LIMIT_MB and not (tmp_path / "out2").exists()
