"""open_archive(): every source form, and clear errors for bad ones."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from imgae_dx.config import DataConfig, HttpConfig
from imgae_dx.errors import ArchiveError, SourceError
from imgae_dx.streaming.range_reader import HttpRangeReader, LocalFileReader
from imgae_dx.streaming.sources import Archive, open_archive
from imgae_dx.testing import RangeServer


@pytest.fixture
def cfg(tmp_path: Path) -> DataConfig:
    return DataConfig(index_cache_dir=str(tmp_path / "idx"),
                      http=HttpConfig(timeout_s=2, retries=2, backoff_s=0.001, backoff_max_s=0.01))


def test_local_zip(zip_path: Path, zip_members: dict[str, bytes], cfg: DataConfig) -> None:
    with open_archive(str(zip_path), cfg) as a:
        assert isinstance(a, Archive) and isinstance(a.reader, LocalFileReader)
        assert a.identity == f"file:{zip_path}"
        assert a.read_member("Data_Entry_2017.csv") == zip_members["Data_Entry_2017.csv"]
        assert a.has("test_list.txt") and not a.has("BBox_List_2017.csv")
        with pytest.raises(ArchiveError, match="no member 'BBox_List_2017.csv'"):
            a.read_member("BBox_List_2017.csv")
        assert a.stats()["requests"] >= 2
    assert list((Path(cfg.index_cache_dir)).glob("*.npz"))


def test_http_url(big_zip, cfg: DataConfig) -> None:
    path, members = big_zip
    with RangeServer(path) as srv, open_archive(srv.url + "?token=xyz", cfg) as a:
        assert isinstance(a.reader, HttpRangeReader)
        assert a.identity == srv.url and "xyz" not in repr(a)
        name = next(iter(n for n in members if n.startswith("images_002/")))
        assert a.read_member(name) == members[name]
        assert srv.counts()["methods"].get("HEAD", 0) == 0


@pytest.mark.parametrize("spec, kwargs", [
    ("kaggle:nih-chest-xrays/data", {"dataset": "nih-chest-xrays/data"}),
    ("kaggle-competition:rsna-pneumonia-detection-challenge",
     {"competition": "rsna-pneumonia-detection-challenge"}),
])
def test_kaggle_specs_use_kaggle_client(monkeypatch, zip_path: Path, cfg: DataConfig, spec: str,
                                        kwargs: dict[str, str]) -> None:
    """The kaggle: and kaggle-competition: forms hand the name to KaggleStreamClient and index
    its reader."""
    seen: dict[str, object] = {}

    class FakeClient:  # test double for the dispatch only; the real client has its own tests
        def __init__(self, **kw: str) -> None:
            seen.update(kw)

        def open_reader(self, http_cfg: HttpConfig) -> LocalFileReader:
            seen["http_cfg"] = http_cfg
            return LocalFileReader(zip_path)

    mod = types.ModuleType("imgae_dx.streaming.kaggle_client")
    mod.KaggleStreamClient = FakeClient  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "imgae_dx.streaming.kaggle_client", mod)
    with open_archive(spec, cfg) as a:
        assert seen == {**kwargs, "http_cfg": cfg.http}
        assert a.has("Data_Entry_2017.csv")


@pytest.mark.parametrize(
    "spec,match",
    [
        ("kaggle:nih-chest-xrays", "kaggle:OWNER/SLUG"),
        ("kaggle:a/b/c", "kaggle:OWNER/SLUG"),
        ("kaggle-competition:", "kaggle-competition:SLUG"),
        ("kaggle-competition:a/b", "kaggle-competition:SLUG"),
        ("kaggle-competition:a b", "kaggle-competition:SLUG"),
        ("ftp://host/data.zip", "unsupported scheme 'ftp'"),
        ("s3://bucket/data.zip?X-Amz-Signature=secret", "unsupported scheme 's3'"),
        ("", "empty source"),
        ("/definitely/not/here.zip", "no such file or folder"),
    ],
)
def test_bad_specs(spec: str, match: str, cfg: DataConfig) -> None:
    with pytest.raises(SourceError, match=match) as ei:
        open_archive(spec, cfg)
    msg = str(ei.value)
    assert "Allowed:" in msg and "kaggle:OWNER/SLUG" in msg and "secret" not in msg
    assert "kaggle-competition:SLUG (e.g. kaggle-competition:rsna-pneumonia-detection-challenge)" in msg
    assert "\n" not in msg


def test_not_a_zip_file(tmp_path: Path, cfg: DataConfig) -> None:
    p = tmp_path / "notes.zip"
    p.write_text("just text, not an archive\n" * 100)
    with pytest.raises(SourceError, match="not a zip archive"):
        open_archive(str(p), cfg)


def test_home_expansion(monkeypatch, zip_path: Path, tmp_path: Path, cfg: DataConfig) -> None:
    monkeypatch.setenv("HOME", str(zip_path.parent))
    with open_archive("~/" + zip_path.name, cfg) as a:
        assert a.has("test_list.txt")


def test_default_config(zip_path: Path) -> None:
    with open_archive(str(zip_path)) as a:  # DataConfig() defaults; cache under the test HOME
        assert len(a.index) > 0
