"""``imgae-dx setup-kaggle`` / ``scripts/setup_kaggle.py`` against the loopback Kaggle emulator."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from imgae_dx.cli import main
from imgae_dx.testing.kaggle_emulator import KaggleEmulator

pytestmark = pytest.mark.network

ROOT = Path(__file__).resolve().parents[2]
USER, KEY = "alice", "feedfacefeedface0123456789abcdef"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    z = tmp_path_factory.mktemp("kaggle") / "data.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("Data_Entry_2017.csv", "Image Index,Finding Labels\n")
        zf.writestr("images_001/images/00000001_000.png", b"\x89PNG" + bytes(5000))
    with KaggleEmulator() as emu:
        emu.add_user(USER, KEY)
        emu.add_dataset("nih-chest-xrays/data", z)
        emu.add_competition("accepted-comp", z, accepted_users={USER})
        emu.add_competition("rules-pending", z, accepted_users=set())
        yield emu


@pytest.fixture
def kaggle(emulator, monkeypatch):
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")
    emulator.reset_counters()
    emulator.clear_faults()
    return emulator


def kaggle_json(tmp_path: Path, key: str = KEY, user: str = USER) -> Path:
    p = tmp_path / "download" / "kaggle.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"username": user, "key": key}))
    p.chmod(0o600)
    return p


def installed() -> Path:
    return Path(os.environ["HOME"]) / ".kaggle" / "kaggle.json"


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def run_cli(capsys, *args: str) -> tuple[int, str]:
    rc = main(["setup-kaggle", *args])
    cap = capsys.readouterr()
    out = cap.out + cap.err
    assert KEY not in out  # never print the key
    return rc, out


def test_install_and_verify(kaggle, tmp_path, capsys):
    rc, out = run_cli(capsys, "--api-key-path", str(kaggle_json(tmp_path)))
    assert rc == 0, out
    assert f"installed {installed()}" in out and "it will be used" in out and "OK: Kaggle accepted" in out
    assert mode(installed()) == 0o600 and mode(installed().parent) == 0o700
    assert json.loads(installed().read_text()) == {"username": USER, "key": KEY}
    assert kaggle.calls["DownloadDataset"] == 1 and kaggle.last_auth == f"basic:{USER}"


def test_no_verify_does_not_contact_kaggle(kaggle, tmp_path, capsys):
    rc, out = run_cli(capsys, "--api-key-path", str(kaggle_json(tmp_path)), "--no-verify")
    assert rc == 0 and "verification skipped" in out and sum(kaggle.calls.values()) == 0
    assert mode(installed()) == 0o600


def test_bad_credentials_leave_the_file_and_say_so(kaggle, tmp_path, capsys):
    wrong = "0000000000000000wrongwrongwrong00"
    rc, out = run_cli(capsys, "--api-key-path", str(kaggle_json(tmp_path, key=wrong)))
    assert rc == 2
    assert "bad credentials" in out and "HTTP 401" in out and "stays installed" in out
    assert wrong not in out and installed().exists()


def test_missing_dataset(kaggle, tmp_path, capsys):
    rc, out = run_cli(capsys, "--api-key-path", str(kaggle_json(tmp_path)), "--dataset", "someone/missing")
    assert rc == 2 and "dataset not found" in out and "HTTP 404" in out and "accepted" in out


def test_competition_verification_checks_the_rules(kaggle, tmp_path, capsys):
    key = str(kaggle_json(tmp_path))
    rc, out = run_cli(capsys, "--api-key-path", key, "--dataset", "kaggle-competition:accepted-comp")
    assert rc == 0 and "competition accepted-comp" in out
    assert "OK: Kaggle accepted the credentials; kaggle-competition:accepted-comp streams" in out
    assert kaggle.calls["DownloadDataFiles"] == 1
    rc, out = run_cli(capsys, "--api-key-path", key, "--dataset", "kaggle-competition:rules-pending")
    assert rc == 2 and "bad credentials" not in out and "stays installed" in out
    assert "rules of Kaggle competition rules-pending are not accepted" in out
    assert "https://www.kaggle.com/competitions/rules-pending/rules" in out and "I Understand and Accept" in out
    rc, out = run_cli(capsys, "--api-key-path", key, "--dataset", "kaggle-competition:gone")
    assert rc == 2 and "competition not found" in out and "HTTP 404" in out
    rc, out = run_cli(capsys, "--api-key-path", key, "--dataset", "kaggle-competition:a/b")
    assert rc == 2 and "kaggle-competition:SLUG" in out


def test_no_network(kaggle, tmp_path, capsys):
    with kaggle.offline():
        rc, out = run_cli(capsys, "--api-key-path", str(kaggle_json(tmp_path)))
    assert rc == 2 and "no network" in out and "stays installed" in out


def test_invalid_file_installs_nothing(kaggle, tmp_path, capsys):
    bad = tmp_path / "kaggle.json"
    bad.write_text('{"username": "alice", "key": ""}')
    rc, out = run_cli(capsys, "--api-key-path", str(bad))
    assert rc == 2 and str(bad) in out and "'key' is empty" in out
    assert not installed().exists()


def test_env_variables_win_and_are_reported(kaggle, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", USER)
    monkeypatch.setenv("KAGGLE_KEY", KEY)
    rc, out = run_cli(capsys, "--api-key-path", str(kaggle_json(tmp_path, user="other")), "--no-verify")
    assert rc == 0 and "takes precedence" in out and "KAGGLE_USERNAME" in out


def test_without_a_file_verifies_what_is_there(kaggle, capsys, monkeypatch):
    rc, out = run_cli(capsys)
    assert rc == 2 and "no Kaggle credentials found" in out and "--api-key-path" in out
    monkeypatch.setenv("KAGGLE_USERNAME", USER)
    monkeypatch.setenv("KAGGLE_KEY", KEY)
    rc, out = run_cli(capsys)
    assert rc == 0 and "environment variables" in out and "OK" in out


def test_bad_dataset_name(kaggle, tmp_path, capsys):
    rc, out = run_cli(capsys, "--api-key-path", str(kaggle_json(tmp_path)), "--dataset", "nope")
    assert rc == 2 and "OWNER/SLUG" in out and not installed().exists()


def test_script_wrapper_subprocess(kaggle, tmp_path):
    env = {**os.environ, "KAGGLE_API_ENVIRONMENT": "TEST"}
    p = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "setup_kaggle.py"), "--api-key-path", str(kaggle_json(tmp_path))],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert "OK: Kaggle accepted" in p.stdout and KEY not in p.stdout + p.stderr
    assert mode(installed()) == 0o600 and mode(installed().parent) == 0o700
