"""No secret leaks: a run started with Kaggle credentials present leaves no trace of the key in
its run folder, logs (stdout/stderr), checkpoints (read as bytes), caches, or generated notebooks.

Two recognisable fake keys are planted: one in ``KAGGLE_KEY`` (with ``KAGGLE_USERNAME``) and one in
a ``kaggle.json`` in ``KAGGLE_CONFIG_DIR``. Each is searched raw and in the encodings a careless
implementation would write (base64 of the key and of ``user:key`` as in a Basic auth header).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

USER = "imgaedx-leak-canary"
KEY_ENV = "c0ffee00deadbeef5ec2e7c0ffee0001"
KEY_FILE = "5ec2e75ec2e7feedfacec0ffee000002"
SIGNED = re.compile(rb"[?&]sig=[0-9A-Za-z_-]{16,}")

TINY = """\
models: [unet, ra, ae]
data:
  decode_workers: 1
  requests_in_flight: 2
model:
  unet: {base_channels: 8, depth: 3}
  ra: {channels: [8, 16, 16, 32, 32], zdim: 16}
  ae: {channels: [8, 16, 32, 32]}
training:
  checkpoint_every_steps: 1
  log_every_steps: 1
evaluation:
  bootstrap: 20
"""


def _needles() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for label, key in (("env key", KEY_ENV), ("kaggle.json key", KEY_FILE)):
        out[label] = key.encode()
        out[f"{label} base64"] = base64.b64encode(key.encode())
        out[f"{label} basic-auth"] = base64.b64encode(f"{USER}:{key}".encode())
        out[f"{label} utf-16"] = key.encode("utf-16-le")
    return out


def _scan_bytes(data: bytes, where: str) -> list[str]:
    hits = [f"{label} in {where}" for label, needle in _needles().items() if needle in data]
    if SIGNED.search(data):  # a signed storage URL is a bearer credential too
        hits.append(f"signed URL in {where}")
    return hits


def _scan_tree(root: Path, skip: set[Path] = frozenset()) -> tuple[list[str], int]:
    hits: list[str] = []
    n = 0
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink() and p.resolve() not in skip:
            n += 1
            hits += _scan_bytes(p.read_bytes(), str(p))
            if zipfile.is_zipfile(p):  # .pt checkpoints, .npz caches: also their inflated members
                with zipfile.ZipFile(p) as z:
                    for member in z.namelist():
                        hits += _scan_bytes(z.read(member), f"{p}!{member}")
    return hits, n


def _cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "imgae_dx", *args], cwd=cwd, env=env,
                          capture_output=True, timeout=540)


@pytest.fixture
def credentials(tmp_path: Path, monkeypatch) -> Path:
    cfg_dir = tmp_path / "kaggle-config"
    cfg_dir.mkdir(mode=0o700)
    kaggle_json = cfg_dir / "kaggle.json"
    kaggle_json.write_text(json.dumps({"username": USER, "key": KEY_FILE}))
    kaggle_json.chmod(0o600)
    monkeypatch.setenv("KAGGLE_USERNAME", USER)
    monkeypatch.setenv("KAGGLE_KEY", KEY_ENV)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(cfg_dir))
    return kaggle_json


def test_scanner_finds_a_planted_key(tmp_path: Path):
    """The scan itself works (a test that could never fail would prove nothing)."""
    (tmp_path / "a.bin").write_bytes(b"\x00pickle" + KEY_ENV.encode() + b"\x00")
    (tmp_path / "b.txt").write_text("Authorization: Basic " +
                                    base64.b64encode(f"{USER}:{KEY_FILE}".encode()).decode())
    (tmp_path / "c.log").write_text("GET http://127.0.0.1:5/a.zip?expires=1&sig=0123456789abcdef0123")
    with zipfile.ZipFile(tmp_path / "d.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("state.npy", b"x" * 100 + KEY_FILE.encode() * 3)
    hits, n = _scan_tree(tmp_path)
    assert n == 4
    assert any(h.endswith("d.npz!state.npy") for h in hits)
    assert any("signed URL in" in h and h.endswith("c.log") for h in hits)
    assert any("env key in" in h for h in hits)
    assert any("kaggle.json key basic-auth" in h for h in hits)


def _train_evaluate_scan(tmp_path: Path, source: str, credentials: Path) -> list[str]:
    """Train (3 tiny models and the PCA baseline, 1 stage), evaluate, generate the notebook; return the
    secret hits."""
    env = dict(os.environ)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    run = tmp_path / "run"
    logs: list[tuple[str, bytes]] = []

    train = _cli(["train", "--config", str(cfg), "--source", source,
                  "--stages", "images_001", "--epochs-per-stage", "1", "--model", "all",
                  "--image-size", "32", "--batch-size", "8", "--device", "cpu", "--out", str(run)],
                 cwd=tmp_path, env=env)
    logs += [("train stdout", train.stdout), ("train stderr", train.stderr)]
    assert train.returncode == 0, train.stderr.decode(errors="replace")[-3000:]

    evaluate = _cli(["evaluate", "--run", str(run), "--stages", "images_001"], cwd=tmp_path, env=env)
    logs += [("evaluate stdout", evaluate.stdout), ("evaluate stderr", evaluate.stderr)]
    assert evaluate.returncode == 0, evaluate.stderr.decode(errors="replace")[-3000:]

    nb = _cli(["notebook", "--out", str(tmp_path / "generated" / "streaming_research.ipynb")],
              cwd=tmp_path, env=env)
    logs += [("notebook stdout", nb.stdout), ("notebook stderr", nb.stderr)]
    assert nb.returncode == 0, nb.stderr.decode(errors="replace")

    # what the run must have produced, so the scan below covers real artefacts
    checkpoints = sorted(run.glob("checkpoints/*/*.pt"))
    assert {p.parent.name for p in checkpoints} == {"unet", "ra", "ae", "pca"}, checkpoints
    assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()
    assert (run / "eval" / "metrics.json").is_file() and (run / "report.html").is_file()

    hits: list[str] = []
    for where, data in logs:
        hits += _scan_bytes(data, where)
    scanned = 0
    # the run folder, the generated notebook, and HOME (index cache, ~/.cache, ~/.config)
    for root in (run, tmp_path / "generated", Path(os.environ["HOME"])):
        h, n = _scan_tree(root, skip={credentials.resolve()})
        hits += h
        scanned += n
    assert scanned >= len(checkpoints) + 5
    return hits


def test_local_run_with_credentials_present_leaves_no_secret(
    tmp_path: Path, small_archive: Path, credentials: Path
):
    hits = _train_evaluate_scan(tmp_path, str(small_archive), credentials)
    assert not hits, "secret found:\n" + "\n".join(hits)


@pytest.mark.network
def test_kaggle_run_uses_the_key_and_leaves_no_secret(
    tmp_path: Path, small_archive: Path, credentials: Path, monkeypatch
):
    """Streams from the loopback Kaggle emulator through the real SDK: the key is really sent
    (Basic auth) and the signed storage URL really used — neither may end up on disk or in logs."""
    from imgae_dx.testing.kaggle_emulator import KaggleEmulator

    for k, v in KaggleEmulator.env().items():
        monkeypatch.setenv(k, v)
    with KaggleEmulator() as kaggle:
        kaggle.add_user(USER, KEY_ENV)  # the environment's key wins over kaggle.json, as officially
        kaggle.add_dataset("nih-chest-xrays/data", small_archive)
        hits = _train_evaluate_scan(tmp_path, "kaggle:nih-chest-xrays/data", credentials)
        assert kaggle.calls["DownloadDataset"] >= 1 and kaggle.redirects >= 1, kaggle.calls
        assert kaggle.last_auth == f"basic:{USER}" and kaggle.auth_failures == 0
    assert not hits, "secret found:\n" + "\n".join(hits)
