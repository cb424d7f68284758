"""An extracted folder behind the archive interface (kagglehub layout)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from imgae_dx.errors import ArchiveError, SourceError
from imgae_dx.streaming.fetcher import Prefetcher, coalesce
from imgae_dx.streaming.folder_source import FolderReader, open_folder
from imgae_dx.streaming.sources import open_archive


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    rng = random.Random(0)
    root = tmp_path / "nih"
    want: dict[str, bytes] = {}
    for name in ("Data_Entry_2017.csv", "BBox_List_2017.csv", "test_list.txt", "train_val_list.txt"):
        data = rng.randbytes(rng.randrange(10, 300))
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        want[name] = data
    for k in range(12):  # kaggle layout: images_001/images/*.png
        data = rng.randbytes(rng.randrange(1, 5000))
        p = root / "images_001" / "images" / f"{k:08d}_000.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        want[f"images_001/images/{k:08d}_000.png"] = data
    for k in range(7):  # flattened: images_002/*.png
        data = rng.randbytes(rng.randrange(1, 5000))
        p = root / "images_002" / f"{100 + k:08d}_000.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        want[f"images_002/images/{100 + k:08d}_000.png"] = data
    (root / "images_001" / "images" / "empty.png").write_bytes(b"")
    want["images_001/images/empty.png"] = b""
    (root / ".hidden").write_bytes(b"x")
    (root / ".cache").mkdir()
    (root / ".cache" / "junk").write_bytes(b"x")
    return root, want


def test_folder_names_and_members(folder) -> None:
    root, want = folder
    with open_archive(str(root)) as a:
        assert isinstance(a.reader, FolderReader)
        assert a.identity == f"folder:{root}"
        assert sorted(a.index.names()) == sorted(want)
        assert a.index.crc_known is False
        assert set(a.index.method.tolist()) == {0}
        for name, data in want.items():
            assert a.read_member(name) == data
        assert len(a.index.names_with_prefix("images_002/images/")) == 7


def test_folder_coalesced_prefetch(folder) -> None:
    root, want = folder
    reader, idx = open_folder(root)
    assert reader.size == sum(30 + len(n.encode()) + len(d) for n, d in want.items())
    reqs = coalesce(idx, np.arange(len(idx)), 8000, 1024)
    assert len(reqs) < len(idx)
    got = {}
    for q, buf in Prefetcher(reader, reqs, in_flight=3):
        for m in q.members:
            got[idx.name(m)] = idx.extract(m, buf, q.start)
    assert got == want
    # random virtual ranges spanning several files and headers are exact, too
    virtual = b"".join(reader.read(s, e - s) for s, e in [(0, reader.size)])
    rng = random.Random(1)
    for _ in range(50):
        a = rng.randrange(reader.size)
        n = rng.randrange(0, reader.size - a + 1)
        assert reader.read(a, n) == virtual[a : a + n]


def test_folder_skips_crc_explicitly(folder) -> None:
    """Folders have no CRCs: crc_known=False is what turns the check off, nothing else."""
    root, want = folder
    reader, idx = open_folder(root)
    i = idx.find("test_list.txt")
    s, e = idx.span(i)
    buf = reader.read(s, e - s)
    assert idx.extract(i, buf, s) == want["test_list.txt"]
    idx.crc_known = True  # as if the zero CRC column were real
    with pytest.raises(ArchiveError, match="CRC-32 mismatch"):
        idx.extract(i, buf, s)


def test_file_shrunk_after_listing(folder) -> None:
    root, want = folder
    reader, idx = open_folder(root)
    (root / "images_001" / "images" / "00000003_000.png").write_bytes(b"")
    i = idx.find("images_001/images/00000003_000.png")
    s, e = idx.span(i)
    with pytest.raises(SourceError, match="shorter than when the folder was listed"):
        reader.read(s, e - s)


def test_duplicate_layouts_and_empty(tmp_path: Path) -> None:
    root = tmp_path / "dup"
    (root / "images_001" / "images").mkdir(parents=True)
    (root / "images_001" / "images" / "a.png").write_bytes(b"1")
    (root / "images_001" / "a.png").write_bytes(b"2")
    with pytest.raises(SourceError, match="both under"):
        open_folder(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="holds no files"):
        open_folder(tmp_path / "empty")
