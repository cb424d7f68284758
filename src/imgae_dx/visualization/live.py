"""Live training plot: ``RUN_DIR/plots/live.png`` redrawn every N seconds.

Three panels: training loss per model (validation loss as markers; stage boundaries as dashed
lines), streaming speed in images/s, and process memory (RSS, MB). Drawn with matplotlib's Agg
backend (no display needed) and written atomically. Inside a Jupyter/Colab notebook the same
figure is also shown inline and updated in place through ``IPython.display``.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from imgae_dx.run.records import Record, TrainRecord
from imgae_dx.utils.atomic import atomic_open
from imgae_dx.visualization.plots import colour


def in_notebook() -> bool:
    """True inside a Jupyter/Colab kernel (IPython with a kernel app)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


class LivePlot:
    """Accumulates metric records and redraws the figure at most every ``every_s`` seconds.

    Args:
        path: PNG file to (re)write, usually ``RUN_DIR/plots/live.png``.
        every_s: minimum seconds between redraws (:meth:`update` is cheap in between).
        inline: show/update the figure in a notebook; ``None`` = auto-detect.
        max_points: per series, older points are thinned to keep redraws fast.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        every_s: float = 30.0,
        inline: bool | None = None,
        max_points: int = 5000,
    ):
        self.path = Path(path)
        self.every_s = float(every_s)
        self.inline = in_notebook() if inline is None else inline
        self.max_points = max_points
        self.loss: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.val: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.speed: list[tuple[int, float]] = []
        self.rss: list[tuple[int, float]] = []
        self.stage_starts: list[tuple[int, str]] = []
        self._last_draw = -math.inf
        self._display = None
        self.draws = 0

    # ------------------------------------------------------------------ data
    def add(self, record: Record) -> None:
        """Take one metrics record (a :class:`TrainRecord` or :class:`ValRecord`)."""
        step, stage, model = record.step, record.stage, record.model
        if not self.stage_starts or self.stage_starts[-1][1] != stage:
            self.stage_starts.append((step, stage))
        if isinstance(record, TrainRecord):
            if _num(record.loss):
                self._append(self.loss[model], step, record.loss)
            if _num(record.images_per_s) and (not self.speed or self.speed[-1][0] != step):
                self._append(self.speed, step, record.images_per_s)
        elif _num(record.val_loss):
            self._append(self.val[model], step, record.val_loss)
        if _num(record.rss_mb) and (not self.rss or self.rss[-1][0] != step):
            self._append(self.rss, step, record.rss_mb)

    def _append(self, series: list[tuple[int, float]], step: int, value: float) -> None:
        series.append((step, float(value)))
        if len(series) > self.max_points:
            del series[: len(series) // 2 : 2]  # thin the oldest half

    def update(self, record: Record | None = None, force: bool = False) -> bool:
        """Add ``record`` and redraw if ``every_s`` has passed (or ``force``). True if drawn."""
        if record is not None:
            self.add(record)
        now = time.monotonic()
        if not force and now - self._last_draw < self.every_s:
            return False
        self._last_draw = now
        self.draw()
        return True

    # ------------------------------------------------------------------ drawing
    def figure(self):
        """Build the matplotlib figure (Agg canvas) from the data so far."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(12, 3.6), dpi=80)  # fixed margins: constrained layout costs ~10×
        FigureCanvasAgg(fig)
        ax_loss, ax_speed, ax_rss = fig.subplots(1, 3)
        fig.subplots_adjust(left=0.065, right=0.99, bottom=0.14, top=0.9, wspace=0.25)
        for i, (model, pts) in enumerate(sorted(self.loss.items())):
            xs, ys = zip(*pts, strict=True)
            color = colour(model, i)  # the report's colours
            ax_loss.plot(xs, ys, color=color, lw=1, label=f"{model} train")
            if self.val.get(model):
                vx, vy = zip(*self.val[model], strict=True)
                ax_loss.plot(vx, vy, "o--", color=color, ms=4, lw=0.8, label=f"{model} val")
        if any(v > 0 for pts in self.loss.values() for _, v in pts):
            ax_loss.set_yscale("log")
        ax_loss.set_title("loss per model")
        ax_loss.set_xlabel("step")
        if self.loss:
            ax_loss.legend(fontsize=7, loc="upper right")
        for ax, series, title in (
            (ax_speed, self.speed, "streaming speed (images/s)"),
            (ax_rss, self.rss, "memory (RSS, MB)"),
        ):
            if series:
                xs, ys = zip(*series, strict=True)
                ax.plot(xs, ys, color="C7", lw=1)
                ax.set_ylim(bottom=0)
            ax.set_title(title)
            ax.set_xlabel("step")
        for ax in (ax_loss, ax_speed, ax_rss):
            for step, _name in self.stage_starts:
                ax.axvline(step, color="0.6", ls=":", lw=0.8)
            ax.grid(alpha=0.3)
        for step, name in self.stage_starts:
            ax_loss.annotate(name, (step, 1), xycoords=("data", "axes fraction"), fontsize=6,
                             rotation=90, va="top", ha="right", color="0.4")
        return fig

    def draw(self) -> Path:
        """Write the PNG atomically (and refresh the inline figure in a notebook)."""
        fig = self.figure()
        with atomic_open(self.path, fsync=False) as f:
            fig.savefig(f, format="png")
        self.draws += 1
        if self.inline:
            self._show_inline()
        return self.path

    def _show_inline(self) -> None:
        try:
            from IPython.display import Image, display
        except ImportError:
            return
        img = Image(filename=str(self.path))
        if self._display is None:
            self._display = display(img, display_id=True)
        else:
            self._display.update(img)

    def close(self) -> None:
        """Final redraw (if there is anything to draw)."""
        if self.loss or self.speed or self.rss:
            self.draw()


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
