"""split.csv: one writer, one typed reader, and the check that the archive still gives the split."""

from __future__ import annotations

import pytest

from imgae_dx.config import DataConfig
from imgae_dx.data.datasets import open_dataset
from imgae_dx.errors import RunFolderError
from imgae_dx.run.splits import (
    SPLIT_FIELDS,
    SplitTable,
    read_split_table,
    split_differences,
    write_split_table,
)
from imgae_dx.streaming.sources import open_archive


@pytest.fixture(scope="module")
def table(small_archive) -> SplitTable:
    cfg = DataConfig(view="PA")
    with open_archive(str(small_archive), cfg) as a:
        ix = open_dataset(a, cfg, 3, quiet=True)
        t = SplitTable.from_index(ix)
        assert len(t) == len(ix)
        assert t.counts()["train"] == len(ix.split("all", "train"))
        assert t.counts()["test"] == len(ix.split("all", "test"))
        assert t.counts()["unused"] > 0  # AP images and abnormal training images
    return t


def test_roundtrip(tmp_path, table):
    path = write_split_table(tmp_path, table)
    assert path.read_text().splitlines()[0] == ",".join(SPLIT_FIELDS)
    back = read_split_table(tmp_path)
    assert back == table
    assert split_differences(back, table) == []
    assert read_split_table(tmp_path / "nowhere") is None


def test_differences_name_what_changed(table):
    other = SplitTable(**{k: list(v) for k, v in vars(table).items()})
    i = other.split.index("train")
    other.split[i] = "test"
    gone = other.image.pop(-1)
    for col in ("split", "label", "patient", "view", "findings", "stage"):
        getattr(other, col).pop(-1)
    diffs = split_differences(table, other)
    assert diffs[0].startswith(f"1 images of the run's split are missing now (e.g. {gone}")
    assert diffs[1] == f"{table.image[i]}: split 'train' → 'test'"
    # restricted to stages: a change elsewhere does not count
    stage = table.stage[i]
    others = [s for s in set(table.stage) if s != stage and s != table.stage[-1]]
    assert split_differences(table, other, others) == []


@pytest.mark.parametrize("text, message", [
    ("a,b\n", "not a split file"),
    (",".join(SPLIT_FIELDS) + "\nx.png,holdout,0,1,PA,,images_001\n", "malformed row"),
])
def test_a_file_that_is_not_a_split_table_is_refused(tmp_path, text, message):
    (tmp_path / "split.csv").write_text(text)
    with pytest.raises(RunFolderError, match=message):
        read_split_table(tmp_path)
