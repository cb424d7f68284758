"""Figures of the report: what a reader compares across panels must share its scale."""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes

from imgae_dx.visualization.plots import plot_examples


def test_example_heat_maps_share_one_colour_scale(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    img = rng.random((32, 32))
    loud = np.zeros((32, 32))
    loud[8:16, 8:16] = 1.0  # a lesion the model cannot reconstruct
    quiet = rng.random((32, 32)) * 0.05  # a normal image: small errors everywhere
    heat_calls: list[tuple[float, float, float]] = []
    real_imshow = Axes.imshow

    def recording_imshow(self, data, *args, **kw):
        if kw.get("cmap") == "inferno":
            heat_calls.append((kw["vmin"], kw["vmax"], float(np.max(data))))
        return real_imshow(self, data, *args, **kw)

    monkeypatch.setattr(Axes, "imshow", recording_imshow)
    items = [{"image": img, "reconstruction": img, "anomaly_map": m, "title": t, "boxes": []}
             for m, t in ((loud, "most anomalous"), (quiet, "least anomalous"))]
    out = plot_examples("unet", items, tmp_path / "examples_unet.png")
    assert out is not None and out.stat().st_size > 0
    assert len(heat_calls) == 2
    (lo1, hi1, _), (lo2, hi2, quiet_max) = heat_calls
    assert (lo1, hi1) == (lo2, hi2)  # one scale: not each map stretched to its own maximum
    assert quiet_max < 0.1 * hi1  # so the quiet map stays at the cool end of it
