"""Shared settings of the trainer tests: tiny models, 64 px, CPU, frequent checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from imgae_dx.config import nest_dotted

TINY: dict[str, Any] = {
    "data.image_size": 64,
    "data.view": "all",
    "data.val_fraction": 0.4,
    "data.decode_workers": 1,
    "data.requests_in_flight": 2,
    "data.max_request_mb": 2,
    "data.shuffle_buffer": 16,
    "model.unet.depth": 3,
    "model.unet.base_channels": 8,
    "model.unet.groups": 4,
    "model.ra.channels": [4, 8, 8, 16, 16],
    "model.ra.zdim": 8,
    "model.ae.channels": [8, 16, 16, 16],
    "model.ae.latent_dim": 8,
    "training.batch_size": 4,
    "training.epochs_per_stage": 1,
    "training.device": "cpu",
    "training.log_every_steps": 1,
    "training.checkpoint_every_steps": 2,
    "training.live_plot_every_s": 5,
    "training.memory_check_every_steps": 2,
    "training.warmup_steps": 2,
    "logging.progress": False,
    "seed": 7,
}

TINY_FLAGS: list[str] = [
    "--image-size", "64", "--batch-size", "4", "--epochs-per-stage", "1", "--device", "cpu",
]


def tiny_yaml(path: Path, **extra: Any) -> Path:
    """A user config file with the TINY settings that have no flag."""
    import yaml

    flagged = {"data.image_size", "training.batch_size", "training.epochs_per_stage", "training.device"}
    nested = nest_dotted({k: v for k, v in {**TINY, **extra}.items() if k not in flagged})
    path.write_text(yaml.safe_dump(nested))
    return path


def tiny_config(source: Path | str, out: Path | str, **over: Any):
    from imgae_dx.config import load_config

    return load_config(overrides={**TINY, "source": str(source), "out": str(out), **over})



def weights(run_dir: Path, model: str, name: str = "last.pt") -> dict[str, torch.Tensor]:
    ck = torch.load(Path(run_dir) / "checkpoints" / model / name, weights_only=True)
    return ck["model"]


def folder_snapshot(root: Path) -> dict[str, bytes]:
    root = Path(root)
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_cli(archive: Path | str, out: Path | str, tmp: Path, *extra: str) -> int:
    """``imgae-dx train`` in-process with the TINY settings (config file + flags)."""
    from imgae_dx.cli import main

    cfg_file = tiny_yaml(Path(tmp) / "tiny.yaml")
    return main(["train", "--config", str(cfg_file), "--source", str(archive), "--out", str(out),
                 *TINY_FLAGS, *extra])
