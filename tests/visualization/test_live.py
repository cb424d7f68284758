"""The live plot: a PNG redrawn at most every N seconds."""

from __future__ import annotations

import time

from imgae_dx.run.records import TrainRecord, ValRecord
from imgae_dx.visualization.live import LivePlot


def _rec(step, model="unet", stage="images_001"):
    return TrainRecord(step=step, stage=stage, stage_index=1, epoch=0, model=model, loss=1.0 / step,
                       lr=1e-3, images_per_s=50.0 + step, rss_mb=300.0, elapsed_s=step, images_seen=step)


def _val(step, val_loss, model="unet", stage="images_001"):
    return ValRecord(step=step, stage=stage, stage_index=1, epoch=0, model=model, val_loss=val_loss,
                     val_images=8, selection_loss=val_loss, selection_images=8, selection_stages=1,
                     best_loss=val_loss, improved=True, val_s=0.1, rss_mb=300.0, elapsed_s=step)


def test_redraw_throttled_and_png_written(tmp_path):
    path = tmp_path / "plots" / "live.png"
    lp = LivePlot(path, every_s=3600, inline=False)
    assert lp.update(_rec(1)) is True  # first update draws
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for s in range(2, 30):
        assert lp.update(_rec(s)) is False
        lp.update(_rec(s, model="ra"))
    lp.update(_val(30, 0.2, stage="images_002"))
    assert lp.draws == 1
    assert lp.stage_starts == [(1, "images_001"), (30, "images_002")]
    assert lp.val["unet"] == [(30, 0.2)]
    mtime = path.stat().st_mtime_ns
    time.sleep(0.01)
    lp.close()
    assert lp.draws == 2 and path.stat().st_mtime_ns >= mtime
    assert [p.name for p in path.parent.iterdir()] == ["live.png"]


def test_zero_interval_redraws_every_update(tmp_path):
    lp = LivePlot(tmp_path / "live.png", every_s=1e-9, inline=False)
    for s in range(1, 4):
        lp.update(_rec(s))
        time.sleep(0.001)
    assert lp.draws == 3


def test_thinning_bounds_series(tmp_path):
    lp = LivePlot(tmp_path / "live.png", every_s=3600, inline=False, max_points=100)
    for s in range(1, 1000):
        lp.add(_rec(s))
    assert len(lp.loss["unet"]) <= 100
    assert lp.loss["unet"][-1][0] == 999
