"""Atomic writes: the destination is either the old or the new content, never partial."""

from __future__ import annotations

import errno
import stat

import pytest

from imgae_dx.utils.atomic import (
    atomic_open,
    atomic_write_bytes,
    atomic_write_text,
    remove_stale_temps,
)


def test_replace_and_mode(tmp_path):
    p = tmp_path / "sub" / "f.txt"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert stat.S_IMODE(p.stat().st_mode) == 0o644
    atomic_write_bytes(p, b"secret", file_mode=0o600)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert list(tmp_path.joinpath("sub").iterdir()) == [p]


def test_failure_mid_write_keeps_previous_content(tmp_path):
    p = tmp_path / "state.bin"
    atomic_write_bytes(p, b"good")
    with pytest.raises(OSError), atomic_open(p) as f:
        f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert p.read_bytes() == b"good"
    assert [x.name for x in tmp_path.iterdir()] == ["state.bin"]


def test_remove_stale_temps(tmp_path):
    (tmp_path / ".last.pt.abc.tmp").write_bytes(b"x")
    (tmp_path / ".other.abc.tmp").write_bytes(b"x")
    (tmp_path / "last.pt").write_bytes(b"keep")
    assert remove_stale_temps(tmp_path, "last.pt") == 1
    assert remove_stale_temps(tmp_path) == 1
    assert sorted(x.name for x in tmp_path.iterdir()) == ["last.pt"]


def test_bad_mode():
    with pytest.raises(ValueError, match="modes"), atomic_open("x", "a"):
        pass
