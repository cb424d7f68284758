"""The generated research notebook really runs: nbclient executes every cell in a fresh kernel of
this interpreter on a small sample archive (the parameter cell selects ``SOURCE = "sample"``) and
it must finish without an error, with its plots shown inline and saved, and the report written.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import nbformat
import pytest

from imgae_dx.notebooks import StreamingNotebookGenerator

pytestmark = pytest.mark.slow

USER = "imgaedx-leak-canary"
FAKE_KEY = "c0ffee00deadbeef5ec2e7c0ffee0003"

PARAMS = {
    "SOURCE": "sample",
    "SAMPLE_IMAGES_PER_STAGE": 60,
    "SAMPLE_STAGES": 2,
    "SAMPLE_IMAGE_PX": 256,
    "MODELS": ["unet", "ra"],
    "IMAGE_SIZE": 32,
    "EPOCHS_PER_STAGE": 1,
    "BATCH_SIZE": 8,
    "DEVICE": "cpu",
    "SEED": 0,
    "DEMO_IMAGES": 8,
    "BOOTSTRAP": 20,
}


def _kernel_for_this_interpreter(root: Path) -> str:
    """A kernelspec that runs ipykernel with ``sys.executable`` (this venv), found via JUPYTER_PATH."""
    name = "imgae-dx-test"
    spec = root / "kernels" / name
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "imgae-dx test kernel",
        "language": "python",
    }))
    return name


def _images(cells) -> int:
    return sum(
        1 for c in cells if c.cell_type == "code"
        for o in c.get("outputs", []) if "image/png" in o.get("data", {})
    )


def _execute(tmp_path: Path, monkeypatch, params: dict) -> tuple[nbformat.NotebookNode, Path]:
    """Generate the notebook with ``params`` and run every cell in a fresh kernel; return it."""
    pytest.importorskip("ipykernel")
    from nbclient import NotebookClient

    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel must use its inline backend
    kernel = _kernel_for_this_interpreter(tmp_path / "jupyter")
    path = StreamingNotebookGenerator(params).write(tmp_path / "streaming_research.ipynb")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=900, kernel_name=kernel, allow_errors=False,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    executed = tmp_path / "executed.ipynb"
    nbformat.write(nb, executed)

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), "a code cell did not run"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    blob = executed.read_bytes()  # credentials present in the environment never reach the notebook
    assert FAKE_KEY.encode() not in blob
    assert base64.b64encode(FAKE_KEY.encode()) not in blob
    assert base64.b64encode(f"{USER}:{FAKE_KEY}".encode()) not in blob
    return nb, executed


def _sections(nb) -> dict[str, list]:
    by_section: dict[str, list] = {}
    for c in nb.cells:
        by_section.setdefault(c.metadata["imgae_dx"]["section"], []).append(c)
    return by_section


def _outputs_text(cells) -> str:
    return json.dumps([c.get("outputs", []) for c in cells])


def test_generated_notebook_executes_on_sample_data(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", USER)  # present, never to be echoed
    monkeypatch.setenv("KAGGLE_KEY", FAKE_KEY)
    run_dir = tmp_path / "run"
    params = dict(PARAMS, SAMPLE_DIR=str(tmp_path / "sample"), RUN_DIR=str(run_dir))
    nb, _ = _execute(tmp_path, monkeypatch, params)
    by_section = _sections(nb)

    # plots shown inline: streamed image grid, training loss, ROC curves, reconstructions
    assert _images(by_section["streaming"]) >= 1
    assert _images(by_section["training"]) >= 1
    assert _images(by_section["visualization"]) >= 2
    # the streaming demo showed a tqdm progress bar
    text = _outputs_text(by_section["streaming"])
    assert "streaming images_001" in text and "8/8" in text

    # plots saved and the run folder complete
    plots = run_dir / "notebook_plots"
    for name in ("streamed_images.png", "training_loss.png", "roc.png", "reconstructions.png"):
        f = plots / name
        assert f.is_file() and f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert (tmp_path / "sample" / "data.zip").is_file()
    assert {p.parent.name for p in run_dir.glob("checkpoints/*/*.pt")} == {"unet", "ra"}
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert set(metrics["models"]) == {"unet", "ra"}
    for m in metrics["models"].values():
        assert 0.0 <= m["auroc"] <= 1.0
    report = run_dir / "report.html"
    assert report.is_file()
    assert report.resolve().as_uri() in _outputs_text(by_section["visualization"])


@pytest.mark.network
def test_generated_notebook_executes_against_kaggle(tmp_path: Path, small_archive: Path, monkeypatch):
    """SOURCE = "kaggle:…": credentials from the environment, the real SDK against the loopback
    Kaggle emulator, the archive streamed from its signed-URL storage server."""
    from imgae_dx.testing.kaggle_emulator import KaggleEmulator

    for k, v in KaggleEmulator.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("KAGGLE_USERNAME", USER)
    monkeypatch.setenv("KAGGLE_KEY", FAKE_KEY)
    run_dir = tmp_path / "run"
    params = dict(PARAMS, SOURCE="kaggle:nih-chest-xrays/data", STAGES=["images_001"], MODELS=["unet"],
                  TINY_MODELS=True, RUN_DIR=str(run_dir), SAMPLE_DIR=str(tmp_path / "unused"))
    with KaggleEmulator() as kaggle:
        kaggle.add_user(USER, FAKE_KEY)
        kaggle.add_dataset("nih-chest-xrays/data", small_archive)
        nb, _ = _execute(tmp_path, monkeypatch, params)
        assert kaggle.calls["DownloadDataset"] >= 1 and kaggle.last_auth == f"basic:{USER}"
        assert kaggle.auth_failures == 0
    assert not (tmp_path / "unused").exists(), "the sample archive was generated for a Kaggle source"
    by_section = _sections(nb)
    setup = _outputs_text(by_section["setup"])
    assert "Kaggle credentials" in setup and "KAGGLE_USERNAME" in setup
    assert "kaggle:nih-chest-xrays/data" in _outputs_text(by_section["streaming"])
    assert _images(by_section["streaming"]) >= 1 and _images(by_section["visualization"]) >= 2
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert set(metrics["models"]) == {"unet"}
    assert (run_dir / "report.html").is_file()
