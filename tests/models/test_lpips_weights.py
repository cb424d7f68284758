"""LPIPS weight files: cache layout, SHA-256 verification, fetching (loopback HTTP or a folder) and
the error that names what is missing. Fake weight files are built here; nothing is downloaded."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import threading

import pytest
import torch

from imgae_dx.config import AnomalyConfig
from imgae_dx.models import lpips_weights, perceptual
from imgae_dx.models.anomaly import anomaly_map
from imgae_dx.models.perceptual import CHANNELS, LPIPS, load_lpips
from imgae_dx.utils.hashing import file_sha256


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Fake backbone + heads in ``tmp_path/src``, the module's digests set to theirs, the caches
    under ``tmp_path`` (empty), no installed lpips package."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(lpips_weights, "_package_file", lambda w: None)
    perceptual._CACHE.clear()
    src = tmp_path / "src"
    src.mkdir()
    torch.manual_seed(5)
    ref = LPIPS()
    backbone = {f"features.{k}": v for k, v in ref.net.features.state_dict().items()}
    backbone["classifier.1.weight"] = torch.zeros(1000, 512, 1, 1)  # torchvision's file has it too
    heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(CHANNELS)}
    torch.save(backbone, src / lpips_weights.BACKBONE.name)
    torch.save(heads, src / lpips_weights.HEADS.name)
    for attr in ("BACKBONE", "HEADS"):
        w = getattr(lpips_weights, attr)
        monkeypatch.setattr(lpips_weights, attr, dataclasses.replace(w, sha256=file_sha256(src / w.name)))
    yield {"src": src, "ref": ref, "heads": heads}
    perceptual._CACHE.clear()


def _place(fake):
    for w in (lpips_weights.BACKBONE, lpips_weights.HEADS):
        lpips_weights.cache_path(w).parent.mkdir(parents=True, exist_ok=True)
        lpips_weights.cache_path(w).write_bytes((fake["src"] / w.name).read_bytes())


def test_cache_layout_is_torch_hub_and_the_package_cache(fake, tmp_path):
    assert lpips_weights.cache_path(lpips_weights.BACKBONE) == tmp_path / "torch" / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth"
    assert lpips_weights.cache_path(lpips_weights.HEADS) == tmp_path / "xdg" / "imgae_dx" / "lpips" / "squeeze.pth"


def test_verified_cached_files_are_loaded(fake):
    _place(fake)
    net = load_lpips("cpu")
    assert torch.equal(net.net.features[0].weight, fake["ref"].net.features[0].weight)
    assert all(torch.equal(net.lins[k].weight, fake["heads"][f"lin{k}.model.1.weight"]) for k in range(7))
    assert load_lpips("cpu") is net  # loaded once per process and device


def test_a_damaged_file_is_refused_with_its_path_and_the_fix(fake):
    _place(fake)
    damaged = lpips_weights.cache_path(lpips_weights.HEADS)
    damaged.write_bytes(damaged.read_bytes()[:-10])  # truncated
    with pytest.raises(lpips_weights.LPIPSWeightsError) as e:
        load_lpips("cpu")
    assert str(damaged) in str(e.value) and "imgae-dx fetch-weights" in str(e.value)


def test_missing_weights_offline_is_an_error_naming_the_files_and_the_layout(fake, monkeypatch):
    def offline(url, dst, timeout_s):
        raise ConnectionError("no network")

    monkeypatch.setattr(lpips_weights, "_download", offline)
    x, r = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    with pytest.raises(lpips_weights.LPIPSWeightsError) as e:
        anomaly_map(x, r, AnomalyConfig(map="clahe", saliency="lpips"))
    msg = str(e.value)
    assert "squeezenet1_1-b8a52dc0.pth" in msg and "squeeze.pth" in msg
    assert str(lpips_weights.cache_path(lpips_weights.BACKBONE)) in msg and str(lpips_weights.cache_path(lpips_weights.HEADS)) in msg
    assert "imgae-dx fetch-weights" in msg and "--from DIR" in msg and "ConnectionError" in msg
    assert not lpips_weights.cache_path(lpips_weights.BACKBONE).exists()
    # scoring without the saliency is a configuration the user chooses, and needs no weights
    anomaly_map(x, r, AnomalyConfig(map="clahe", saliency="none"))


@pytest.fixture
def server(fake):
    """A loopback HTTP server of fake['src']; yields its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(fake["src"]))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_fetch_downloads_and_verifies(fake, server, monkeypatch):
    for attr in ("BACKBONE", "HEADS"):
        w = getattr(lpips_weights, attr)
        monkeypatch.setattr(lpips_weights, attr, dataclasses.replace(w, url=f"{server}/{w.name}"))
    got = lpips_weights.fetch_all()
    assert got == {w.name: lpips_weights.cache_path(w) for w in (lpips_weights.BACKBONE, lpips_weights.HEADS)}
    assert all(file_sha256(p) == w.sha256 for w, p in zip((lpips_weights.BACKBONE, lpips_weights.HEADS), got.values(), strict=True))
    assert isinstance(load_lpips("cpu"), LPIPS)


def test_a_download_with_other_bytes_leaves_nothing_behind(fake, server, monkeypatch):
    (fake["src"] / "other.pth").write_bytes(b"not the weights")
    monkeypatch.setattr(lpips_weights, "HEADS", dataclasses.replace(lpips_weights.HEADS, url=f"{server}/other.pth"))
    with pytest.raises(lpips_weights.LPIPSWeightsError, match="not the official"):
        lpips_weights.fetch(lpips_weights.HEADS)
    assert list(lpips_weights.cache_path(lpips_weights.HEADS).parent.iterdir()) == []


def test_fetch_copies_from_a_folder_and_needs_both_files(fake, tmp_path):
    lpips_weights.fetch_all(fake["src"])
    assert all(lpips_weights.find(w) == lpips_weights.cache_path(w) for w in (lpips_weights.BACKBONE, lpips_weights.HEADS))
    only_one = tmp_path / "one"
    only_one.mkdir()
    (only_one / lpips_weights.HEADS.name).write_bytes((fake["src"] / lpips_weights.HEADS.name).read_bytes())
    with pytest.raises(lpips_weights.LPIPSWeightsError, match="no squeezenet1_1-b8a52dc0.pth there"):
        lpips_weights.fetch_all(only_one, force=True)
