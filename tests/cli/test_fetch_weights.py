"""``imgae-dx fetch-weights``: copies (``--from DIR``) and verifies the LPIPS weights; one-line
errors otherwise. Fake weight files, no network."""

from __future__ import annotations

import dataclasses

import pytest

from imgae_dx.cli import main
from imgae_dx.models import lpips_weights
from imgae_dx.utils.hashing import file_sha256


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(lpips_weights, "_package_file", lambda w: None)
    src = tmp_path / "brought"
    src.mkdir()
    for attr, data in (("BACKBONE", b"backbone bytes"), ("HEADS", b"heads bytes")):
        w = getattr(lpips_weights, attr)
        (src / w.name).write_bytes(data)
        monkeypatch.setattr(lpips_weights, attr, dataclasses.replace(w, sha256=file_sha256(src / w.name)))
    return src


def test_fetch_weights_from_a_folder(files, capsys):
    assert main(["fetch-weights", "--from", str(files)]) == 0
    out = capsys.readouterr().out
    assert out.count("sha256 verified") == 2 and "copied" in out
    assert lpips_weights.cache_path(lpips_weights.HEADS).read_bytes() == b"heads bytes"
    assert main(["fetch-weights"]) == 0  # present and valid: nothing fetched
    assert capsys.readouterr().out.count("present") == 2


def test_fetch_weights_errors_are_one_line(files, tmp_path, capsys):
    assert main(["fetch-weights", "--from", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (files / lpips_weights.BACKBONE.name).write_bytes(b"tampered")
    assert main(["fetch-weights", "--from", str(files)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "not the official" in err
    assert not lpips_weights.cache_path(lpips_weights.BACKBONE).exists()
