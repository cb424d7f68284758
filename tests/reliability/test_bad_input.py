"""Bad input, end to end: each gets a specific error or a counted skip, and nothing else is lost.

Archives are rewritten copies of the session's ``small_archive`` with a few members replaced, so
the rest of the data is known and can be checked to arrive intact.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
import torch

from imgae_dx.cli import main
from imgae_dx.config import DataConfig
from imgae_dx.data.dataset import StreamingNIHDataset
from imgae_dx.data.datasets.nih import NIHIndex
from imgae_dx.errors import ArchiveError, CheckpointError, MetadataError
from imgae_dx.run.checkpoint import FORMAT, read_checkpoint
from imgae_dx.streaming.sources import open_archive

STAGE = "images_001"


def _cfg(tmp: Path) -> DataConfig:
    return DataConfig(image_size=64, view="all", decode_workers=2, requests_in_flight=2,
                      max_request_mb=0.1, shuffle_buffer=8, memory_budget_mb=64,
                      index_cache_dir=str(tmp / "idx"))


def _rewrite(src: Path, dst: Path, replace: dict[str, bytes | None] | None = None,
             extra: dict[str, bytes] | None = None) -> Path:
    """Copy of ``src`` with members replaced (``None`` = dropped) and ``extra`` members added.
    zipfile computes the CRCs: the archive layer is sound, only the payloads are bad."""
    replace = replace or {}
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w") as zo:
        for info in zi.infolist():
            if info.filename in replace:
                data = replace[info.filename]
                if data is None:
                    continue
            else:
                data = zi.read(info)
            zo.writestr(info, data, compress_type=info.compress_type)
        for name, data in (extra or {}).items():
            zi_info = zipfile.ZipInfo(name)
            zo.writestr(zi_info, data)
    return dst


def _stage_images(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as z:
        return sorted(n for n in z.namelist() if n.startswith(f"{STAGE}/images/") and n.endswith(".png"))


def _stream(path: Path, tmp: Path) -> tuple[list[str], dict]:
    """Every image of the stage, in the dataset's order, by member name; and the counters."""
    cfg = _cfg(tmp)
    archive = open_archive(str(path), cfg)
    try:
        nih = NIHIndex.from_archive(archive)
        members = archive.index.names_with_prefix(f"{STAGE}/images/")
        ds = StreamingNIHDataset(archive, nih, STAGE, "train", cfg, seed=5, batch_size=4,
                                 drop_last=False, members=members)
        names = []
        for b in ds.batches():
            assert b.images.dtype == torch.float32 and b.images.shape[1:] == (1, 64, 64)
            assert float(b.images.min()) >= 0 and float(b.images.max()) <= 1
            names += [archive.index.name(int(m)) for m in b.members]
        return names, ds.stats()
    finally:
        archive.close()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 100_000) -> bytes:
    """A ~100-byte PNG declaring side×side 8-bit gray pixels (10 GB decoded): a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def clean_stream(small_archive, tmp_path_factory):
    return _stream(Path(small_archive), tmp_path_factory.mktemp("clean"))


# ------------------------------------------------------------------------------ images
def test_undecodable_images_are_skipped_counted_and_nothing_else_lost(small_archive, clean_stream, tmp_path):
    names = _stage_images(small_archive)
    good_png = zipfile.ZipFile(small_archive).read(names[0])
    corrupt = bytearray(good_png)
    for k in range(len(corrupt) // 2, len(corrupt) // 2 + 64):  # garbage inside the IDAT stream
        corrupt[k] ^= 0x5A
    bad = {
        names[1]: good_png[: len(good_png) // 3],  # truncated
        names[4]: bytes(corrupt),  # corrupt pixel data
        names[7]: bomb_png(),  # decompression bomb
        names[9]: b"GIF89a" + b"\0" * 100,  # not a PNG
        names[12]: b"",  # empty
    }
    path = _rewrite(Path(small_archive), tmp_path / "bad.zip", bad)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    got, stats = _stream(path, tmp_path)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    clean, _ = clean_stream
    assert stats["skipped"] == len(bad)
    assert not set(got) & set(bad)  # never yielded
    assert set(got) == set(names) - set(bad)  # every good image arrives …
    assert len(got) == len(clean)  # … and the count stays what the plan promised (stand-ins)
    assert grown_mb < 300  # the bomb was refused from its header, never inflated


def test_unsafe_member_names_are_excluded_and_never_read(small_archive, clean_stream, tmp_path):
    payload = zipfile.ZipFile(small_archive).read(_stage_images(small_archive)[0])
    evil = {
        "../evil.png": payload,
        "/abs/images_001/images/99999999_000.png": payload,
        f"{STAGE}/images/../../../etc/x.png": payload,
        f"{STAGE}/images/..\\..\\y.png": payload,
        "C:/windows/z.png": payload,
    }
    path = _rewrite(Path(small_archive), tmp_path / "evil.zip", extra=evil)
    with open_archive(str(path), _cfg(tmp_path)) as archive:
        assert archive.index.excluded["unsafe"] == len(evil)
        for name in evil:
            with pytest.raises(ArchiveError):
                if archive.index.find(name) >= 0:  # must not be found; looking it up may raise
                    raise AssertionError(f"unsafe member {name!r} is in the index")
                raise ArchiveError("excluded")
        assert NIHIndex.from_archive(archive).stages() == ["images_001", "images_002", "images_003"]
    got, stats = _stream(path, tmp_path)
    assert got == clean_stream[0] and stats["skipped"] == 0


def _patch_sizes(path: Path, name: str, *, size_delta: int = 0, comp_delta: int = 0) -> None:
    """Change the sizes a member declares, in its central-directory entry and its local header."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name)
        cd_start = z.start_dir
    raw = bytearray(path.read_bytes())
    pos = cd_start
    while raw[pos:pos + 4] == b"PK\x01\x02":
        n, m, k = struct.unpack("<HHH", raw[pos + 28:pos + 34])
        if raw[pos + 46:pos + 46 + n].decode() == name:
            comp, size = struct.unpack("<II", raw[pos + 20:pos + 28])
            raw[pos + 20:pos + 28] = struct.pack("<II", comp + comp_delta, size + size_delta)
            lh = info.header_offset
            raw[lh + 18:lh + 26] = struct.pack("<II", comp + comp_delta, size + size_delta)
            break
        pos += 46 + n + m + k
    else:
        raise AssertionError(f"{name} not in the central directory")
    path.write_bytes(bytes(raw))


def test_members_whose_declared_size_disagrees_with_their_data(small_archive, clean_stream, tmp_path):
    names = _stage_images(small_archive)
    path = _rewrite(Path(small_archive), tmp_path / "sizes.zip")
    _patch_sizes(path, names[2], size_delta=+17)  # says it inflates to more than it does
    _patch_sizes(path, names[5], comp_delta=-5)  # says it is shorter: the stream is cut
    _patch_sizes(path, names[8], size_delta=-1)  # says it inflates to less than it does
    # says it is longer than its deflate stream: the stream ends itself, and what it inflates to is
    # checked against the declared size and CRC-32 — accepted, with exactly the right bytes
    _patch_sizes(path, names[11], comp_delta=+300)
    with open_archive(str(path), _cfg(tmp_path)) as archive:
        for bad in (names[2], names[5], names[8]):
            with pytest.raises(ArchiveError, match=bad.split("/")[-1]):
                archive.read_member(bad)
        assert archive.read_member(names[11]) == zipfile.ZipFile(small_archive).read(names[11])
    got, stats = _stream(path, tmp_path)
    assert stats["skipped"] == 3
    assert set(got) == set(names) - {names[2], names[5], names[8]}
    assert len(got) == len(clean_stream[0])


# ------------------------------------------------------------------------------ metadata
def test_malformed_csv_rows_are_counted_and_their_images_left_out(small_archive, tmp_path):
    with zipfile.ZipFile(small_archive) as z:
        lines = z.read("Data_Entry_2017.csv").decode().splitlines()
    header, rows = lines[0], lines[1:]
    victims = [r.split(",")[0] for r in rows[:4]]
    broken = [
        rows[0].split(",")[0] + ",No Finding,0",  # too few fields
        ",".join(rows[1].split(",")[:3] + ["patient-x"] + rows[1].split(",")[4:]),  # bad patient id
        rows[2].split(",")[0] + ",,0,1,50,M,PA,1024,1024,0.14,0.14,",  # empty labels
        '"' + rows[3],  # an unterminated quote swallows the row
    ]
    new = "\n".join([header, *broken, *rows[4:], rows[10]]) + "\n"  # + a duplicate row
    path = _rewrite(Path(small_archive), tmp_path / "csv.zip", {"Data_Entry_2017.csv": new.encode()})
    with open_archive(str(path), _cfg(tmp_path)) as archive:
        try:
            nih = NIHIndex.from_archive(archive)
        except MetadataError as e:  # the unterminated quote may eat the file: then say where
            assert "Data_Entry_2017.csv:" in str(e)
            return
        rep = nih.reports[0]
        assert rep.file == "Data_Entry_2017.csv" and rep.malformed >= 4
        assert all("Data_Entry_2017.csv:" in ex for ex in rep.examples)
        known = {nih.record(int(m)).image for s in nih.stages()
                 for split in ("train", "val", "test") for m in nih.split(s, split, view="all")}
        assert not known & set(victims[:3])
        assert len(known) >= len(rows) - 10  # every well-formed row is still there


def test_garbage_metadata_is_a_clear_error(small_archive, tmp_path, capsys):
    garbage = b"\x00\x01 this is not a csv \xff\xfe" * 20
    path = _rewrite(Path(small_archive), tmp_path / "g.zip", {"Data_Entry_2017.csv": garbage})
    assert main(["stream", "--source", str(path), "--json", "--limit", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Data_Entry_2017.csv" in err and "Traceback" not in err


@pytest.mark.parametrize("missing", ["Data_Entry_2017.csv", "BBox_List_2017.csv", "train_val_list.txt",
                                     "test_list.txt"])
def test_missing_metadata_file_is_named(small_archive, tmp_path, capsys, missing):
    path = _rewrite(Path(small_archive), tmp_path / "m.zip", {missing: None})
    assert main(["stream", "--source", str(path), "--json", "--limit", "4"]) == 2
    err = capsys.readouterr().err
    assert missing in err and "Traceback" not in err


# ------------------------------------------------------------------------------ credentials
@pytest.mark.parametrize("content,needle", [
    ('{"username": "alice", "key": "0123456789abcdef0123', "not valid JSON"),
    ('{"username": "alice"}', "lacks the field(s) key"),
    ('{"username": "alice", "key": 12345}', "field 'key'"),
    ('["alice", "0123456789abcdef0123456789abcdef"]', "JSON object"),
])
def test_bad_kaggle_json_is_a_clear_error_without_the_key(tmp_path, monkeypatch, capsys, content, needle):
    cfg_dir = tmp_path / "kcfg"
    cfg_dir.mkdir()
    (cfg_dir / "kaggle.json").write_text(content)
    (cfg_dir / "kaggle.json").chmod(0o600)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(cfg_dir))
    assert main(["stream", "--source", "kaggle:nih-chest-xrays/data", "--json", "--limit", "4"]) == 2
    cap = capsys.readouterr()
    assert needle in cap.err and str(cfg_dir / "kaggle.json") in cap.err
    assert "0123456789abcdef" not in cap.err + cap.out


@pytest.mark.network
def test_world_readable_kaggle_json_works_with_a_warning(small_archive, tmp_path, monkeypatch, capsys, caplog):
    pytest.importorskip("kagglesdk")
    from imgae_dx.testing.kaggle_emulator import KaggleEmulator

    key = "feedfacefeedface0123456789abcdef"
    cfg_dir = tmp_path / "kcfg"
    cfg_dir.mkdir()
    (cfg_dir / "kaggle.json").write_text(json.dumps({"username": "bob", "key": key}))
    (cfg_dir / "kaggle.json").chmod(0o644)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(cfg_dir))
    for k, v in KaggleEmulator.env().items():
        monkeypatch.setenv(k, v)
    with KaggleEmulator() as kaggle:
        kaggle.add_user("bob", key)
        kaggle.add_dataset("nih-chest-xrays/data", small_archive)
        assert main(["stream", "--source", "kaggle:nih-chest-xrays/data", "--stages", STAGE,
                     "--split", "train", "--image-size", "64", "--json", "--limit", "4"]) == 0
    cap = capsys.readouterr()
    said = cap.err + caplog.text
    assert "chmod 600" in said and "readable by other users" in said
    assert key not in said + cap.out
    assert json.loads(cap.out.strip().splitlines()[-1])["images"]["train"] == 4


# ------------------------------------------------------------------------------ checkpoints
class _Payload:
    """A pickle payload that, if ever unpickled, creates a folder (the canary)."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self):
        return (os.mkdir, (str(self.canary),))


@pytest.fixture(scope="module")
def tiny_run(small_archive, tmp_path_factory) -> Path:
    """A finished one-stage ae run (CLI), evaluated-ready."""
    tmp = tmp_path_factory.mktemp("tiny_run")
    out = tmp / "run"
    cfg = tmp / "tiny.yaml"
    cfg.write_text("data: {view: all, decode_workers: 1, index_cache_dir: %s}\n"
                   "model: {ae: {channels: [8, 16, 16, 16], latent_dim: 8}}\n"
                   "training: {checkpoint_every_steps: 2}\nlogging: {progress: false}\n" % (tmp / "idx"))
    assert main(["train", "--config", str(cfg), "--source", str(small_archive), "--out", str(out),
                 "--model", "ae", "--stages", STAGE, "--image-size", "64", "--batch-size", "2",
                 "--epochs-per-stage", "1", "--device", "cpu"]) == 0
    return out


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the planted payload
def test_checkpoint_with_a_pickle_payload_is_refused_and_never_runs(tiny_run, small_archive, tmp_path, capsys):
    import shutil

    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    canary = tmp_path / "canary_created_by_unpickling"
    evil = {"format": FORMAT, "model_name": "ae", "model": {"weight": torch.zeros(2)},
            "payload": _Payload(canary)}
    for name in ("last.pt", "best.pt", "stage_1.pt"):
        p = run / "checkpoints" / "ae" / name
        torch.save(evil, p)
    raw = tmp_path / "plain.pkl"
    import pickle

    raw.write_bytes(pickle.dumps(_Payload(canary)))
    for p in (run / "checkpoints" / "ae" / "last.pt", raw):
        with pytest.raises(CheckpointError, match="unsafe pickle payload|refused|corrupt"):
            read_checkpoint(p)
    capsys.readouterr()
    assert main(["train", "--source", str(small_archive), "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "unsafe pickle payload" in err and "last.pt" in err and "Traceback" not in err
    assert main(["evaluate", "--run", str(run), "--source", str(small_archive)]) == 2
    err = capsys.readouterr().err
    assert ("unsafe" in err or "refused" in err) and "Traceback" not in err
    assert not canary.exists()


# ------------------------------------------------------------------------------ config
@pytest.mark.parametrize("yaml_text,key", [
    ("data: {image_size: big}", "data.image_size"),
    ("data: {image_size: 100}", "data.image_size"),
    ("training: {batch_size: 2.5}", "training.batch_size"),
    ("training: {batch_size: 0}", "training.batch_size"),
    ("data: {view: LATERAL}", "data.view"),
    ("models: [vgg16]", "models"),
    ("data: {http: {retries: -1}}", "data.http.retries"),
    ("training: {grad_clip: sometimes}", "training.grad_clip"),
    ("data: {memory_budget_mb: lots}", "data.memory_budget_mb"),
    ("seed: [1, 2]", "seed"),
    ("data: 5", "data"),
    ("data: {imagesize: 64}", "data.imagesize"),
    ("training: {device: tpu}", "training.device"),
])
def test_config_values_of_the_wrong_type_are_named(small_archive, tmp_path, capsys, yaml_text, key):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text + "\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--source", str(small_archive), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and key in err and "Traceback" not in err
    assert not out.exists()

