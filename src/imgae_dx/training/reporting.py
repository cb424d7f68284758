"""What a training run tells its user (rank 0 only): metrics rows, the live plot, log lines.

:class:`Reporter` turns the loop's means and the validation sums into typed records
(:mod:`imgae_dx.run.records`), hands them to the :class:`~imgae_dx.training.loggers.MetricsLogger`
(``metrics.jsonl`` + TensorBoard/W&B) and the live plot, updates the progress bar's postfix and
logs one line per validated epoch. On other ranks every method is a no-op.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from imgae_dx.config import LoggingConfig
from imgae_dx.run.records import TrainRecord, ValRecord, read_records
from imgae_dx.training.loggers import MetricsLogger
from imgae_dx.training.loop import ValSums

log = logging.getLogger(__name__)


def rss_mb() -> float:
    """Resident memory of this process in MB (NaN where /proc is restricted)."""
    from imgae_dx.data.memory import rss_bytes

    try:
        return rss_bytes() / 2**20
    except Exception:  # restricted /proc: the log shows NaN rather than stopping training
        return float("nan")


def cache_hit_rate(ds: Any) -> float | None:
    """Share of a dataset's images read from its decoded-image cache this epoch."""
    st = ds.stats()
    hits, misses = st.get("cache_hits", 0), st.get("cache_misses", 0)
    return hits / (hits + misses) if hits + misses else None


def pooled_loss(per_stage: Mapping[str, ValSums]) -> float:
    """Mean loss over the images of every stage (NaN when there are none)."""
    n = sum(v.images for v in per_stage.values())
    return sum(v.sums.get("loss", 0.0) for v in per_stage.values()) / n if n else math.nan


class Reporter:
    """Rank 0's metrics writer, live plot and log lines (``enabled=False`` elsewhere).

    Args:
        run_dir: the run folder; ``enabled``: this process reports (rank 0).
        logging_cfg: the ``logging`` settings (logger kind, W&B project and entity).
        config: the run's configuration (W&B's run config); ``wandb_run_id``: continue this run.
        live_every_s: seconds between live-plot redraws.
        replay: add the records already in ``metrics.jsonl`` to the live plot (a resumed run).
        n_stages, epochs: for the log lines and bars (epochs: per stage).
        bars: draw a progress bar per epoch.
    """

    def __init__(self, run_dir: Path, logging_cfg: LoggingConfig, *, enabled: bool, config: dict[str, Any],
                 wandb_run_id: str | None, live_every_s: float, replay: bool, n_stages: int,
                 epochs: dict[str, int], bars: bool = False) -> None:
        self.enabled, self.bars = enabled, bars
        self.n_stages, self.epochs = n_stages, epochs
        self.t_start = time.monotonic()
        self.logger: MetricsLogger | None = None
        self.live: Any = None
        if not enabled:
            return
        self.logger = MetricsLogger(run_dir, kind=logging_cfg.logger, wandb_project=logging_cfg.wandb_project,
                                    wandb_entity=logging_cfg.wandb_entity, config=config,
                                    wandb_run_id=wandb_run_id)
        from imgae_dx.visualization.live import LivePlot

        self.live = LivePlot(run_dir / "plots" / "live.png", live_every_s)
        for rec in read_records(run_dir / "metrics.jsonl") if replay else []:
            self.live.add(rec)

    @property
    def wandb_run_id(self) -> str | None:
        return self.logger.wandb_run_id if self.logger else None

    def elapsed(self) -> float:
        return round(time.monotonic() - self.t_start, 2)

    def epoch_bar(self, stage: str, stage_index: int, epoch: int, total: int, initial: int) -> Any:
        """A tqdm bar over one epoch's ``total`` batches (``initial`` done), or None."""
        if not (self.enabled and self.bars):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, leave=False, dynamic_ncols=True,
                    desc=f"{stage} [{stage_index}/{self.n_stages}] epoch {epoch + 1}/{self.epochs[stage]}")

    def train(self, *, step: int, stage: str, stage_index: int, epoch: int,
              means: dict[str, dict[str, float]], ips: float, lrs: dict[str, float], images_seen: int,
              precision: str, ds: Any, bar: Any) -> None:
        """One :class:`TrainRecord` per model (means of the steps since the last call)."""
        if not self.enabled:
            return
        rss, hit = rss_mb(), cache_hit_rate(ds)
        for name, m in means.items():
            rec = TrainRecord(
                step=step, stage=stage, stage_index=stage_index, epoch=epoch, model=name,
                loss=m.get("loss", math.nan), lr=lrs[name], images_per_s=round(ips, 2),
                rss_mb=round(rss, 1), elapsed_s=self.elapsed(), images_seen=images_seen,
                cache_hit_rate=hit, loss_scale=m.get("loss_scale"), precision=precision,
                terms={k: v for k, v in m.items() if k not in ("loss", "loss_scale")})
            self.logger.log(rec)
            self.live.update(rec)
        if bar is not None:
            bar.set_postfix(loss=",".join(f"{n}={m.get('loss', math.nan):.4g}" for n, m in means.items()),
                            img_s=f"{ips:.0f}", rss=f"{rss:.0f}MB", hit=f"{hit:.0%}" if hit is not None else "-")

    def val(self, *, step: int, stage: str, stage_index: int, epoch: int,
            sums: dict[str, dict[str, ValSums]], selection: dict[str, float],
            best: dict[str, float | None], improved: list[str], val_s: float) -> None:
        """One :class:`ValRecord` per model, and the epoch's log line."""
        if not self.enabled:
            return
        texts = []
        for name, per in sums.items():
            own = per[stage]
            rec = ValRecord(
                step=step, stage=stage, stage_index=stage_index, epoch=epoch, model=name,
                val_loss=own.mean(), val_images=own.images, selection_loss=selection[name],
                selection_images=sum(v.images for v in per.values()), selection_stages=stage_index,
                best_loss=best[name], improved=name in improved, val_s=round(val_s, 3),
                rss_mb=round(rss_mb(), 1), elapsed_s=self.elapsed(),
                terms={k: own.mean(k) for k in own.sums if k != "loss"})
            self.logger.log(rec)
            self.live.update(rec)
            texts.append(f"{name} {rec.val_loss:.5f}")
        if sums and not next(iter(sums.values()))[stage].images:
            log.warning("stage %s has no validation images; best.pt is chosen on earlier stages' only", stage)
        log.info("%s [%d/%d] epoch %d/%d done (%.0f s): val loss %s", stage, stage_index, self.n_stages,
                 epoch + 1, self.epochs.get(stage, 0), self.elapsed(), ", ".join(texts))

    def close(self) -> None:
        if self.live is not None:
            self.live.close()
            self.live = None
        if self.logger is not None:
            self.logger.close()
            self.logger = None
