"""ColabStreamingSetup with a stand-in ``google.colab`` module (no test needs Colab)."""

from __future__ import annotations

import json
import os
import stat
import sys
import types
from pathlib import Path

import pytest

from imgae_dx.errors import CredentialsError
from imgae_dx.streaming.colab_setup import ColabStreamingSetup, GPUPlan, plan_batch_size

KEY = "5ecret5ecret5ecret5ecret5ecret00"


class FakeColab:
    """Builds google, google.colab, .userdata, .files, .drive stand-ins and records calls."""

    def __init__(self, secrets: dict[str, str] | None = None, upload: dict[str, bytes] | None = None,
                 drive_root: Path | None = None, mount_error: Exception | None = None) -> None:
        self.secrets = secrets or {}
        self.upload_result = upload or {}
        self.uploads = 0
        self.mounts: list[str] = []
        self.drive_root = drive_root
        self.mount_error = mount_error

    def install(self, monkeypatch) -> None:
        colab = types.ModuleType("google.colab")
        userdata = types.ModuleType("google.colab.userdata")
        files = types.ModuleType("google.colab.files")
        drive = types.ModuleType("google.colab.drive")

        class SecretNotFoundError(Exception):
            pass

        def get(name: str) -> str:
            if name not in self.secrets:
                raise SecretNotFoundError(name)
            return self.secrets[name]

        def upload() -> dict[str, bytes]:
            self.uploads += 1
            for name, content in self.upload_result.items():  # Colab also saves to the cwd
                Path(name).write_bytes(content)
            return dict(self.upload_result)

        def mount(path: str) -> None:
            if self.mount_error is not None:
                raise self.mount_error
            self.mounts.append(path)
            (Path(path) / "MyDrive").mkdir(parents=True, exist_ok=True)

        userdata.get = get
        files.upload = upload
        drive.mount = mount
        colab.userdata, colab.files, colab.drive = userdata, files, drive
        google = sys.modules.get("google") or types.ModuleType("google")
        monkeypatch.setitem(sys.modules, "google", google)
        monkeypatch.setitem(sys.modules, "google.colab", colab)
        monkeypatch.setitem(sys.modules, "google.colab.userdata", userdata)
        monkeypatch.setitem(sys.modules, "google.colab.files", files)
        monkeypatch.setitem(sys.modules, "google.colab.drive", drive)


@pytest.fixture(autouse=True)
def _restore_kaggle_env(monkeypatch):
    """setup_kaggle_auth() exports Colab secrets to os.environ: undo that after each test."""
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)


@pytest.fixture
def lines():
    return []


def setup(lines, tmp_path, **kw) -> ColabStreamingSetup:
    return ColabStreamingSetup(echo=lines.append, drive_mount=tmp_path / "content" / "drive",
                               local_runs=tmp_path / "runs", **kw)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# -------------------------------------------------------------------------------- outside
def test_outside_colab_every_method_explains_and_falls_back(tmp_path, lines, monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", None)  # make sure it is not importable
    s = setup(lines, tmp_path)
    assert not s.is_colab()
    assert s.setup_kaggle_auth() is None
    assert "not running in Colab" in lines[-1] and "setup-kaggle" in lines[-1]
    path = s.setup_drive_integration()
    assert path == (tmp_path / "runs").absolute() and path.is_dir()
    assert "not running in Colab" in lines[-1] and str(path) in lines[-1]
    plan = s.setup_gpu_optimization()
    assert isinstance(plan, GPUPlan) and len(lines) == 3


def test_outside_colab_reports_local_credentials(tmp_path, lines, monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", None)
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", KEY)
    creds = setup(lines, tmp_path).setup_kaggle_auth()
    assert creds.username == "alice" and "KAGGLE_USERNAME" in lines[-1] and KEY not in lines[-1]


# ------------------------------------------------------------------------------- in Colab
def test_colab_secrets_key(tmp_path, lines, monkeypatch):
    FakeColab(secrets={"KAGGLE_USERNAME": "alice", "KAGGLE_KEY": KEY}).install(monkeypatch)
    s = setup(lines, tmp_path)
    assert s.is_colab()
    creds = s.setup_kaggle_auth()
    assert (creds.kind, creds.username, creds.secret.reveal()) == ("key", "alice", KEY)
    assert os.environ["KAGGLE_USERNAME"] == "alice" and os.environ["KAGGLE_KEY"] == KEY
    assert "Colab secrets" in lines[-1] and KEY not in "".join(lines)


def test_exported_secrets_do_not_leak_into_later_tests():
    assert "KAGGLE_KEY" not in os.environ and "KAGGLE_API_TOKEN" not in os.environ


def test_colab_secret_token_wins(tmp_path, lines, monkeypatch):
    FakeColab(secrets={"KAGGLE_API_TOKEN": "KGAT_abc", "KAGGLE_USERNAME": "a", "KAGGLE_KEY": KEY}).install(monkeypatch)
    creds = setup(lines, tmp_path).setup_kaggle_auth()
    assert creds.kind == "token" and os.environ["KAGGLE_API_TOKEN"] == "KGAT_abc"
    assert "KGAT_abc" not in "".join(lines)


def test_colab_invalid_secret_is_a_clear_error(tmp_path, lines, monkeypatch):
    FakeColab(secrets={"KAGGLE_USERNAME": "alice", "KAGGLE_KEY": "has space"}).install(monkeypatch)
    with pytest.raises(CredentialsError, match="Colab secrets") as e:
        setup(lines, tmp_path).setup_kaggle_auth()
    assert "has space" not in str(e.value)


def test_colab_uses_existing_environment_before_asking(tmp_path, lines, monkeypatch):
    fake = FakeColab()
    fake.install(monkeypatch)
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_env")
    creds = setup(lines, tmp_path).setup_kaggle_auth()
    assert creds.kind == "token" and fake.uploads == 0


def test_colab_upload_installs_with_0600(tmp_path, lines, monkeypatch):
    monkeypatch.chdir(tmp_path)
    content = json.dumps({"username": "alice", "key": KEY}).encode()
    fake = FakeColab(upload={"kaggle.json": content})
    fake.install(monkeypatch)
    creds = setup(lines, tmp_path).setup_kaggle_auth()
    dest = Path(os.environ["HOME"]) / ".kaggle" / "kaggle.json"
    assert fake.uploads == 1 and creds.path == dest and creds.username == "alice"
    assert _mode(dest) == 0o600 and _mode(dest.parent) == 0o700  # not decimal 600 (== 0o1130)
    assert not (tmp_path / "kaggle.json").exists()  # the upload's stray copy is removed
    assert KEY not in "".join(lines)


def test_colab_upload_invalid_or_empty(tmp_path, lines, monkeypatch):
    monkeypatch.chdir(tmp_path)
    FakeColab(upload={"kaggle.json": b'{"username": "alice"}'}).install(monkeypatch)
    with pytest.raises(CredentialsError, match="lacks the field"):
        setup(lines, tmp_path).setup_kaggle_auth()
    assert not (Path(os.environ["HOME"]) / ".kaggle" / "kaggle.json").exists()
    FakeColab(upload={}).install(monkeypatch)
    with pytest.raises(CredentialsError, match="no file uploaded"):
        setup(lines, tmp_path).setup_kaggle_auth()


def test_colab_drive_mount_and_checkpoint_dir(tmp_path, lines, monkeypatch):
    fake = FakeColab()
    fake.install(monkeypatch)
    s = setup(lines, tmp_path)
    path = s.setup_drive_integration()
    root = tmp_path / "content" / "drive"
    assert fake.mounts == [str(root)]
    assert path == root / "MyDrive" / "ImgAE-Dx-Checkpoints" and path.is_dir()
    assert s.setup_drive_integration() == path and fake.mounts == [str(root)]  # mounted once


def test_colab_drive_mount_failure_falls_back(tmp_path, lines, monkeypatch):
    FakeColab(mount_error=RuntimeError("user declined")).install(monkeypatch)
    path = setup(lines, tmp_path).setup_drive_integration()
    assert path == (tmp_path / "runs").absolute() and "lost when the runtime disconnects" in lines[-1]


def test_default_drive_path_is_the_documented_one():
    s = ColabStreamingSetup()
    assert str(s.drive_mount / "MyDrive" / "ImgAE-Dx-Checkpoints") == "/content/drive/MyDrive/ImgAE-Dx-Checkpoints"


# ------------------------------------------------------------------------------------ GPU
def test_gpu_plan_cpu(tmp_path, lines, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    plan = setup(lines, tmp_path).setup_gpu_optimization()
    assert (plan.device, plan.precision, plan.amp, plan.batch_size) == ("cpu", "fp32", "off", 16)
    assert plan.config_overrides() == {"training.device": "cpu", "training.amp": "off", "training.batch_size": 16}
    assert "no CUDA GPU" in lines[-1]


@pytest.mark.parametrize(("name", "gib", "cc", "precision", "bs"), [
    ("Tesla V100-SXM2-16GB", 15.8, (7, 0), "fp16", 32),
    ("Tesla T4", 15.0, (7, 5), "fp16", 32),
    ("NVIDIA A100-SXM4-40GB", 39.4, (8, 0), "bf16", 128),
    ("NVIDIA H100 80GB HBM3", 79.2, (9, 0), "bf16", 256),
])
def test_gpu_plan_by_card(tmp_path, lines, monkeypatch, name, gib, cc, precision, bs):
    import torch

    props = types.SimpleNamespace(name=name, total_memory=int(gib * 1024**3), major=cc[0], minor=cc[1])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    # torch says True on a T4 too (it counts emulation): the plan must not rely on it
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    plan = setup(lines, tmp_path).setup_gpu_optimization()
    assert (plan.device, plan.precision, plan.amp, plan.batch_size) == ("cuda", precision, precision, bs)
    assert name in lines[-1] and precision in lines[-1]


def test_batch_size_scales_with_resolution_precision_and_model():
    assert plan_batch_size(15.0, 256, "fp16") == plan_batch_size(15.0, 128, "fp16") // 4
    assert plan_batch_size(15.0, 128, "fp32") == plan_batch_size(15.0, 128, "fp16") // 2
    assert plan_batch_size(15.0, 128, "fp16", ("unet",)) == 64  # U-Net alone needs less than RA
    assert plan_batch_size(15.0, 128, "fp16", ("ae",)) == 256
    assert plan_batch_size(2.0, 1024, "fp16") == 4  # floor
    assert plan_batch_size(None, 128, "fp32") == 16
    with pytest.raises(ValueError, match="unknown model"):
        plan_batch_size(15.0, 128, "fp16", ("vit",))


def test_setup_one_cell(tmp_path, lines, monkeypatch):
    FakeColab(secrets={"KAGGLE_USERNAME": "alice", "KAGGLE_KEY": KEY}).install(monkeypatch)
    env = setup(lines, tmp_path).setup()
    assert env.in_colab and env.credentials.username == "alice"
    assert env.checkpoint_dir.name == "ImgAE-Dx-Checkpoints" and len(lines) == 3
