"""``imgae-dx stream``: the data path alone; --json keys and counts match the metadata."""

from __future__ import annotations

import json

import pytest

from imgae_dx.cli import main
from imgae_dx.config import load_config
from imgae_dx.data.nih_index import NIHIndex
from imgae_dx.streaming.sources import open_archive

KEYS = {"images", "skipped", "bytes_fetched", "requests", "images_per_s", "first_batch_s", "peak_rss_mb"}


def _expected(archive_path, stages, splits) -> dict[str, int]:
    cfg = load_config(None, {"source": str(archive_path)})
    with open_archive(str(archive_path), cfg.data) as archive:
        nih = NIHIndex.from_archive(archive)
        return {
            s: sum(len(nih.split(st, s, view=cfg.data.view, val_fraction=cfg.data.val_fraction,
                                 seed=cfg.seed)) for st in nih.resolve_stages(stages))
            for s in splits
        }


def test_stream_json_all_splits(small_archive, capsys):
    rc = main(["stream", "--source", str(small_archive), "--image-size", "64", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == KEYS
    assert out["images"] == _expected(small_archive, "all", ("train", "val", "test"))
    n = sum(out["images"].values())
    assert n > 0 and out["skipped"] == 0
    assert out["requests"] >= 1 and out["bytes_fetched"] > 0
    assert out["images_per_s"] > 0 and 0 < out["first_batch_s"] < 60 and out["peak_rss_mb"] > 0


def test_stream_one_split_one_stage_limit_and_human_summary(small_archive, capsys):
    rc = main(["stream", "--source", str(small_archive), "--stages", "images_001", "--split", "test",
               "--image-size", "64", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["images"]) == {"test"}
    assert out["images"] == _expected(small_archive, ["images_001"], ("test",))
    n = out["images"]["test"]
    assert n >= 3
    main(["stream", "--source", str(small_archive), "--stages", "images_001", "--split", "test",
          "--image-size", "64", "--limit", "3", "--json"])
    assert json.loads(capsys.readouterr().out)["images"]["test"] == 3
    assert main(["stream", "--source", str(small_archive), "--stages", "images_001", "--split",
                 "test", "--image-size", "64"]) == 0
    text = capsys.readouterr().out
    assert f"streamed {n:,} images" in text and "range requests" in text and "images/s" in text


@pytest.mark.parametrize("argv, msg", [
    (["--stages", "images_009"], "images_009"),
    (["--image-size", "100"], "image_size"),
])
def test_stream_user_errors_exit_2(small_archive, capsys, argv, msg):
    rc = main(["stream", "--source", str(small_archive), "--json", *argv])
    assert rc == 2
    assert msg in capsys.readouterr().err


@pytest.mark.network
def test_stream_from_a_kaggle_competition(small_archive, capsys, monkeypatch):
    """``--source kaggle-competition:SLUG`` through the real SDK and the loopback emulator streams
    the same images as the local zip; a competition whose rules are not accepted exits 2 with one
    line naming its rules page."""
    from imgae_dx.testing.kaggle_emulator import KaggleEmulator

    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", "0123456789abcdef0123456789abcdef")
    argv = ["--stages", "images_001", "--image-size", "64", "--json"]
    with KaggleEmulator() as kaggle:
        kaggle.add_user("alice", "0123456789abcdef0123456789abcdef")
        kaggle.add_competition("chest-challenge", small_archive, accepted_users={"alice"})
        kaggle.add_competition("rules-pending", small_archive, accepted_users=set())
        assert main(["stream", "--source", "kaggle-competition:chest-challenge", *argv]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["images"] == _expected(small_archive, ["images_001"], ("train", "val", "test"))
        assert kaggle.calls["DownloadDataFiles"] >= 1 and kaggle.calls["DownloadDataset"] == 0
        assert main(["stream", "--source", "kaggle-competition:rules-pending", *argv]) == 2
        err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not accepted" in err
    assert "https://www.kaggle.com/competitions/rules-pending/rules" in err
