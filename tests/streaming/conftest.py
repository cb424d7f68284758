"""Fixtures of the streaming tests: real zip archives (stored + deflate) and a loopback server."""

from __future__ import annotations

import random
import zipfile
from pathlib import Path

import pytest

from imgae_dx.config import HttpConfig


def make_payload(rng: random.Random, n: int) -> bytes:
    """Half random, half repetitive bytes (so deflate actually compresses)."""
    head = rng.randbytes(n // 2)
    return head + bytes([rng.randrange(4)]) * (n - n // 2)


def build_zip(path: Path, members: dict[str, bytes], *, deflate_every: int = 2) -> Path:
    """A zip written by Python's zipfile; every ``deflate_every``-th member deflated."""
    with zipfile.ZipFile(path, "w") as z:
        for k, (name, data) in enumerate(members.items()):
            method = zipfile.ZIP_DEFLATED if deflate_every and k % deflate_every == 0 else zipfile.ZIP_STORED
            z.writestr(name, data, compress_type=method)
    return path


def nih_like_members(n_stages: int = 2, per_stage: int = 30, seed: int = 0, size: int = 6000) -> dict[str, bytes]:
    rng = random.Random(seed)
    out: dict[str, bytes] = {"Data_Entry_2017.csv": b"Image Index,Finding Labels,\n"}
    for s in range(1, n_stages + 1):
        for i in range(per_stage):
            out[f"images_{s:03d}/images/{s:04d}{i:04d}_000.png"] = make_payload(rng, rng.randrange(size // 2, size))
    out["test_list.txt"] = b"a\nb\n"
    return out


@pytest.fixture
def zip_members() -> dict[str, bytes]:
    return nih_like_members()


@pytest.fixture
def zip_path(tmp_path: Path, zip_members: dict[str, bytes]) -> Path:
    return build_zip(tmp_path / "data.zip", zip_members)


@pytest.fixture
def big_zip(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """~1.5 MB archive: larger than the 64 KiB tail, so reads really go to the server."""
    members = nih_like_members(n_stages=2, per_stage=60, seed=1, size=25000)
    return build_zip(tmp_path / "big.zip", members), members


@pytest.fixture
def fast_http() -> HttpConfig:
    """Short timeouts and backoff so fault tests finish in seconds."""
    return HttpConfig(timeout_s=2.0, retries=12, backoff_s=0.005, backoff_max_s=0.05, pool_connections=8)
