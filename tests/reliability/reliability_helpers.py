"""Shared settings of the reliability suite: tiny models at 64 px, CPU, fast HTTP retries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from imgae_dx.config import nest_dotted
from imgae_dx.run.checkpoint import state_dict_digest

#: Settings of every training run in this suite (dotted overrides of the packaged defaults).
TINY: dict[str, Any] = {
    "data.image_size": 64,
    "data.view": "all",
    "data.decode_workers": 1,
    "data.requests_in_flight": 2,
    "data.max_request_mb": 0.25,
    "data.shuffle_buffer": 8,
    "data.memory_budget_mb": 64,
    "model.unet.depth": 3,
    "model.unet.base_channels": 8,
    "model.unet.groups": 4,
    "model.ra.channels": [8, 8, 16, 16, 16],
    "model.ra.zdim": 8,
    "model.ae.channels": [8, 16, 16, 16],
    "model.ae.latent_dim": 8,
    "training.batch_size": 2,
    "training.epochs_per_stage": 1,
    "training.device": "cpu",
    "training.log_every_steps": 1,
    "training.checkpoint_every_steps": 2,
    "training.live_plot_every_s": 30.0,
    "training.memory_check_every_steps": 5,
    "logging.progress": False,
    "seed": 11,
}

#: Fast HTTP settings: enough retries for 50 % faults, tiny backoff so tests stay quick.
FAST_HTTP: dict[str, Any] = {
    "data.http.timeout_s": 2.0,
    "data.http.retries": 25,
    "data.http.backoff_s": 0.002,
    "data.http.backoff_max_s": 0.02,
}


def tiny_config(source: str | Path, out: Path, **over: Any):
    """A validated :class:`~imgae_dx.config.Config` for a tiny run of ``source`` into ``out``."""
    from imgae_dx.config import load_config

    base = {**TINY, "source": str(source), "out": str(out),
            "data.index_cache_dir": str(Path(out).parent / "index_cache")}
    return load_config(overrides={**base, **over})


def tiny_yaml(path: Path, **over: Any) -> Path:
    """The TINY settings (plus ``over``) as a user config file for the command line."""
    import yaml

    nested = nest_dotted({**TINY, **over})
    path.write_text(yaml.safe_dump(nested))
    return path


def final_weights(run_dir: Path, models: tuple[str, ...]) -> dict[str, str]:
    """Digest of every model's weights in ``last.pt``."""
    out = {}
    for m in models:
        ck = torch.load(Path(run_dir) / "checkpoints" / m / "last.pt", weights_only=True)
        out[m] = state_dict_digest(ck["model"])
    return out


class Seen:
    """``on_batch`` recorder: the ordered image ids per (stage, epoch) a trainer trained on."""

    def __init__(self) -> None:
        self.ids: list[tuple[str, int, str]] = []
        self.hooks: list[Any] = []

    def __call__(self, stage: str, epoch: int, batch: Any) -> None:
        self.ids += [(stage, epoch, i) for i in batch.image_ids]
        for h in self.hooks:
            h(stage, epoch, batch, len(self.ids))
