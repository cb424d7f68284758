"""``file_sha256``: the SHA-256 of a file's bytes, also across the 1 MiB read chunks."""

from __future__ import annotations

import hashlib

from imgae_dx.utils.hashing import file_sha256


def test_file_sha256_is_the_digest_of_the_bytes(tmp_path):
    data = bytes(range(256)) * 5000  # > 1 MiB: several chunks
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    (tmp_path / "e").write_bytes(b"")
    assert file_sha256(str(tmp_path / "e")) == hashlib.sha256(b"").hexdigest()
