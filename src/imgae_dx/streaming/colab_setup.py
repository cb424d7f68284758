"""One-cell setup for Google Colab: Kaggle credentials, Drive checkpoints, GPU settings.

```python
from imgae_dx.streaming import ColabStreamingSetup
env = ColabStreamingSetup().setup()      # auth + Drive + GPU, one line of output each
```

Every method works outside Colab too: it says in one line what it did instead and falls back to
local paths (``./runs``) and locally installed credentials. ``google.colab`` is imported lazily
(tests inject a stand-in module into ``sys.modules``).
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from imgae_dx.errors import CredentialsError
from imgae_dx.streaming.credentials import (
    KEY_ENV,
    TOKEN_ENV,
    USERNAME_ENV,
    KaggleCredentials,
    find_credentials,
    install_credentials,
)

log = logging.getLogger(__name__)

DRIVE_MOUNT = "/content/drive"
DRIVE_CHECKPOINTS = "MyDrive/ImgAE-Dx-Checkpoints"
LOCAL_RUNS = "runs"

#: Activation memory of one training step per image at 128², fp32, MiB, by model (default
#: configs). Measured on CPU as the peak of live tensors saved for backward during one
#: training step (``torch.autograd.graph.saved_tensors_hooks``, batch 2): U-Net 168,
#: RA 333 (its encoder and decoder steps do not coexist), AE 16. Rounded up. Scales with the
#: pixel count; 16-bit autocast is planned at half. Out of memory anyway → lower
#: ``training.batch_size``.
ACTIVATION_MIB_PER_IMAGE_128: dict[str, float] = {"unet": 170.0, "ra": 335.0, "ae": 16.0}
#: Share of GPU memory planned for activations (the rest: weights, gradients, optimiser state,
#: cuDNN workspaces, allocator fragmentation).
USABLE_FRACTION = 0.6

Precision = Literal["bf16", "fp16", "fp32"]


@dataclass(frozen=True)
class GPUPlan:
    """What :meth:`ColabStreamingSetup.setup_gpu_optimization` chose.

    Attributes:
        device: ``"cuda"`` or ``"cpu"``.
        name: GPU name (``None`` on CPU).
        memory_gb: total GPU memory in GiB (``None`` on CPU).
        precision: autocast dtype: ``bf16`` if the GPU supports it, else ``fp16``; ``fp32`` on CPU.
        amp: the matching ``training.amp`` config value (``bf16`` / ``fp16`` / ``off``).
        batch_size: a batch size that should fit (power of two, 4–256), see :func:`plan_batch_size`.
        image_size: the resolution the batch size was planned for.
    """

    device: Literal["cuda", "cpu"]
    name: str | None
    memory_gb: float | None
    precision: Precision
    amp: Literal["bf16", "fp16", "off"]
    batch_size: int
    image_size: int

    def config_overrides(self) -> dict[str, Any]:
        """Dotted overrides for :func:`imgae_dx.config.load_config`."""
        return {
            "training.device": self.device,
            "training.amp": self.amp,
            "training.batch_size": self.batch_size,
        }


@dataclass(frozen=True)
class ColabEnvironment:
    """Result of :meth:`ColabStreamingSetup.setup` (secret-free)."""

    in_colab: bool
    credentials: KaggleCredentials | None
    checkpoint_dir: Path
    gpu: GPUPlan


def plan_batch_size(
    memory_gb: float | None,
    image_size: int,
    precision: Precision,
    models: tuple[str, ...] = ("unet", "ra"),
) -> int:
    """Largest power-of-two batch (4–256) whose activation memory fits ``memory_gb``.

    Planned for the hungriest of ``models`` (see :data:`ACTIVATION_MIB_PER_IMAGE_128`).
    ``memory_gb=None`` (CPU) gives 16: CPU training is compute-bound, larger batches only add
    latency.
    """
    if memory_gb is None:
        return 16
    unknown = [m for m in models if m not in ACTIVATION_MIB_PER_IMAGE_128]
    if unknown or not models:
        raise ValueError(f"unknown model(s) {unknown or models}; known: {sorted(ACTIVATION_MIB_PER_IMAGE_128)}")
    per_image_mib = max(ACTIVATION_MIB_PER_IMAGE_128[m] for m in models) * (image_size / 128.0) ** 2
    if precision != "fp32":
        per_image_mib /= 2
    fits = int(memory_gb * 1024 * USABLE_FRACTION / per_image_mib)
    bs = 4
    while bs * 2 <= min(fits, 256):
        bs *= 2
    return bs


class ColabStreamingSetup:
    """Colab helpers with local fallbacks.

    Args:
        image_size: model resolution the GPU plan is made for.
        models: the models to be trained (the batch size is planned for the hungriest).
        echo: where the one-line explanations go (default ``print``; notebooks show it).
        drive_mount: where Drive is mounted in Colab.
        local_runs: fallback checkpoint root outside Colab.
        kaggle_dir: where an uploaded kaggle.json is installed (default ``KAGGLE_CONFIG_DIR`` or
            ``~/.kaggle``).
    """

    def __init__(
        self,
        *,
        image_size: int = 128,
        models: tuple[str, ...] = ("unet", "ra"),
        echo: Callable[[str], None] = print,
        drive_mount: str | os.PathLike[str] = DRIVE_MOUNT,
        local_runs: str | os.PathLike[str] = LOCAL_RUNS,
        kaggle_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.image_size = int(image_size)
        self.models = tuple(models)
        self._echo = echo
        self.drive_mount = Path(drive_mount)
        self.local_runs = Path(local_runs)
        self.kaggle_dir = Path(kaggle_dir) if kaggle_dir is not None else None

    # ---------------------------------------------------------------------------- detection
    @staticmethod
    def _colab() -> ModuleType | None:
        try:
            return importlib.import_module("google.colab")
        except ImportError:
            return None

    @classmethod
    def is_colab(cls) -> bool:
        """``True`` when ``google.colab`` is importable (a Colab runtime)."""
        return cls._colab() is not None

    def _say(self, msg: str) -> None:
        log.info("%s", msg)
        self._echo(msg)

    # ---------------------------------------------------------------------------- credentials
    def _colab_secret(self, name: str) -> str | None:
        try:
            userdata = importlib.import_module("google.colab.userdata")
        except ImportError:
            colab = self._colab()
            userdata = getattr(colab, "userdata", None) if colab else None
        if userdata is None:
            return None
        try:
            value = userdata.get(name)
        except Exception as e:  # SecretNotFoundError / NotebookAccessError / TimeoutException
            log.debug("Colab secret %s unavailable: %s", name, type(e).__name__)
            return None
        return value.strip() if isinstance(value, str) and value.strip() else None

    def setup_kaggle_auth(self) -> KaggleCredentials | None:
        """Make Kaggle credentials available and say which source is used.

        In Colab, in order: Colab secrets (``KAGGLE_API_TOKEN``, or ``KAGGLE_USERNAME`` +
        ``KAGGLE_KEY``; exported to this process's environment, where Kaggle's clients read them),
        credentials already present (environment, ``~/.kaggle``), else an upload dialog for
        kaggle.json, installed with mode 0600. Outside Colab: the locally installed credentials.

        Returns:
            The credentials in use, or ``None`` outside Colab when there are none (the message says
            how to add them; streaming the sample dataset needs none).

        Raises:
            CredentialsError: a secret or an uploaded file is invalid, or nothing was uploaded.
        """
        colab = self._colab()
        if colab is None:
            creds = find_credentials()
            if creds is None:
                self._say(
                    "not running in Colab and no Kaggle credentials found: run "
                    "`imgae-dx setup-kaggle --api-key-path kaggle.json` (the sample dataset needs none)"
                )
            else:
                self._say(f"not running in Colab; Kaggle credentials: {creds.describe()}")
            return creds

        token = self._colab_secret(TOKEN_ENV)
        if token:
            creds = KaggleCredentials.from_token(token, source=f"Colab secret {TOKEN_ENV}")
            os.environ[TOKEN_ENV] = creds.secret.reveal()
            self._say(f"Kaggle credentials: access token from Colab secret {TOKEN_ENV}")
            return creds
        user, key = self._colab_secret(USERNAME_ENV), self._colab_secret(KEY_ENV)
        if user and key:
            creds = KaggleCredentials.from_key(user, key, source=f"Colab secrets {USERNAME_ENV}/{KEY_ENV}")
            os.environ[USERNAME_ENV] = creds.username or user
            os.environ[KEY_ENV] = creds.secret.reveal()
            self._say(f"Kaggle credentials: {creds.describe()}")
            return creds

        existing = find_credentials()
        if existing is not None:
            self._say(f"Kaggle credentials: {existing.describe()}")
            return existing

        files = getattr(colab, "files", None)
        if files is None:
            files = importlib.import_module("google.colab.files")
        self._say(
            "no Kaggle credentials in Colab secrets or the environment: upload kaggle.json "
            "(tip: add KAGGLE_USERNAME and KAGGLE_KEY as Colab secrets to skip this)"
        )
        uploaded = files.upload() or {}
        if not uploaded:
            raise CredentialsError(
                "no file uploaded; upload kaggle.json from https://www.kaggle.com/settings → API, "
                "or add KAGGLE_USERNAME and KAGGLE_KEY as Colab secrets (🔑 in the sidebar)"
            )
        name, content = next(iter(uploaded.items()))
        tmpdir = tempfile.mkdtemp(prefix="imgae_dx_kaggle_")
        try:
            os.chmod(tmpdir, 0o700)
            tmp = Path(tmpdir) / (Path(name).name or "kaggle.json")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(content if isinstance(content, bytes) else str(content).encode())
            result = install_credentials(tmp, self.kaggle_dir)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        # Colab's upload also leaves a copy in the working directory: do not leave the key there.
        stray = Path.cwd() / Path(name).name
        try:
            if stray.is_file() and stray.read_bytes() == content:
                stray.unlink()
        except OSError:
            pass
        self._say(result.note)
        return result.active

    # ---------------------------------------------------------------------------------- Drive
    def setup_drive_integration(self) -> Path:
        """Mount Google Drive and return the checkpoint root on it.

        Returns:
            ``/content/drive/MyDrive/ImgAE-Dx-Checkpoints`` in Colab (created), else ``./runs``
            (absolute). If mounting fails in Colab, falls back to ``./runs`` and says that
            checkpoints will not survive a disconnect.
        """
        colab = self._colab()
        if colab is None:
            path = self.local_runs.absolute()
            path.mkdir(parents=True, exist_ok=True)
            self._say(f"not running in Colab: checkpoints go to {path}")
            return path
        target = self.drive_mount / DRIVE_CHECKPOINTS
        if not (self.drive_mount / "MyDrive").is_dir():
            drive = getattr(colab, "drive", None)
            if drive is None:
                drive = importlib.import_module("google.colab.drive")
            try:
                drive.mount(str(self.drive_mount))
            except Exception as e:
                path = self.local_runs.absolute()
                path.mkdir(parents=True, exist_ok=True)
                self._say(
                    f"could not mount Google Drive ({type(e).__name__}: {e}); checkpoints go to {path} "
                    "and are lost when the runtime disconnects"
                )
                return path
        target.mkdir(parents=True, exist_ok=True)
        self._say(f"checkpoints go to Google Drive: {target}")
        return target

    # ------------------------------------------------------------------------------------ GPU
    def setup_gpu_optimization(self) -> GPUPlan:
        """Report the GPU and choose precision and a batch size that fits its memory.

        bf16 where the GPU has native bf16 (compute capability ≥ 8.0: A100, L4, H100), else fp16
        with a GradScaler (T4, V100); on CPU fp32 and a small batch. The batch size is an estimate (see :func:`plan_batch_size`).
        """
        import torch

        if not torch.cuda.is_available():
            plan = GPUPlan("cpu", None, None, "fp32", "off", plan_batch_size(None, self.image_size, "fp32", self.models),
                           self.image_size)
            hint = " (Colab: Runtime → Change runtime type → GPU)" if self.is_colab() else ""
            self._say(f"no CUDA GPU{hint}: training on CPU, fp32, batch size {plan.batch_size}; it will be slow")
            return plan
        from imgae_dx.utils.device import has_native_bf16

        props = torch.cuda.get_device_properties(0)
        mem_gb = props.total_memory / 1024**3
        # not torch.cuda.is_bf16_supported(): it says True on a T4 (sm 7.5), where bf16 is only
        # emulated (no tensor cores); native bf16 starts at compute capability 8.0
        bf16 = has_native_bf16((props.major, props.minor))
        precision: Precision = "bf16" if bf16 else "fp16"
        bs = plan_batch_size(mem_gb, self.image_size, precision, self.models)
        plan = GPUPlan("cuda", props.name, round(mem_gb, 1), precision, precision, bs, self.image_size)
        self._say(
            f"GPU: {props.name} (compute capability {props.major}.{props.minor}), {mem_gb:.1f} GiB; "
            f"precision {precision}{'' if bf16 else ' with a GradScaler (no native bf16)'}; "
            f"batch size {bs} at {self.image_size}² for {'/'.join(self.models)}"
        )
        return plan

    # ------------------------------------------------------------------------------------ all
    def setup(self) -> ColabEnvironment:
        """All three steps; one line of output each."""
        creds = self.setup_kaggle_auth()
        ckpt = self.setup_drive_integration()
        gpu = self.setup_gpu_optimization()
        return ColabEnvironment(self.is_colab(), creds, ckpt, gpu)
