"""Plots: the live training figure (``plots/live.png``), report figures."""

from imgae_dx.visualization.live import LivePlot, in_notebook

__all__ = ["LivePlot", "in_notebook"]
