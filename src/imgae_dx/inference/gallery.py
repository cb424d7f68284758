"""``OUT/index.html``: the gallery of one ``predict`` run, most anomalous first.

One HTML file with its style inline and no script; it loads nothing from the network. The images
are the overlay PNGs beside it (``overlays/…``, relative links), so the ``--out`` folder is moved
or archived as a whole. Images are sorted by their highest percentile among the models (ties: by
score); a file scored with a warning (a DICOM of another modality or body part) carries it on
its card; files that could not be scored are listed after them with the reason. Paths arrive as
display text (:func:`imgae_dx.inference.job.display_path`) and are HTML-escaped.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from imgae_dx.inference.predictor import PredictionResult
from imgae_dx.utils.atomic import atomic_write_text

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1240px;margin:0 auto;padding:20px 26px 50px;background:#fff}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #dde}
table{border-collapse:collapse;font-size:.9em;margin:.4em 0}
th,td{border:1px solid #d6d9e0;padding:3px 8px;text-align:right}th{background:#eef1f6}
td:first-child,th:first-child{text-align:left}
.card{border:1px solid #dde;border-radius:6px;padding:10px 12px;margin:14px 0}
.card.flag{border-color:#d33;box-shadow:0 0 0 1px #d33 inset}
.card img{max-width:100%;height:auto;display:block;margin:6px 0}
.path{font-family:ui-monospace,monospace;font-size:.85em;word-break:break-all}
.badge{background:#d33;color:#fff;border-radius:3px;padding:1px 6px;font-size:.8em}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:8px 12px;margin:1em 0}
.warn{background:#fff3e0;border-left:4px solid #e07b00;padding:4px 10px;margin:4px 0;font-size:.9em}
.wbadge{background:#e07b00;color:#fff;border-radius:3px;padding:1px 6px;font-size:.8em}
.muted{color:#667}
"""


@dataclass
class ImageOutcome:
    """One input file's line in the gallery: its results (one per model) and its overlay."""

    index: int
    path: str
    results: list[PredictionResult]
    overlay: str | None = None

    @property
    def error(self) -> str | None:
        return next((r.error for r in self.results if r.error), None)

    @property
    def warning(self) -> str | None:
        return next((r.warning for r in self.results if r.warning), None)

    @property
    def flagged(self) -> bool:
        return any(r.flagged for r in self.results)

    def sort_key(self) -> tuple[float, float]:
        ok = [r for r in self.results if r.score is not None]
        return (max(r.percentile or 0.0 for r in ok), max(r.score or 0.0 for r in ok)) if ok else (-1.0, 0.0)


def _e(v: object) -> str:
    return html.escape(str(v), quote=True)


def write_gallery(path: Path, outcomes: Sequence[ImageOutcome], *, thresholds: Mapping[str, float],
                  calibration_sizes: Mapping[str, int], specificity: float, origin: str) -> Path:
    """Write the gallery (see the module doc); returns its path."""
    scored = sorted((o for o in outcomes if o.error is None), key=lambda o: o.sort_key(), reverse=True)
    failed = [o for o in outcomes if o.error is not None]
    models = list(thresholds)
    n_flag = {m: sum(1 for o in scored for r in o.results if r.model == m and r.flagged) for m in models}
    head = "".join(
        f"<tr><td>{_e(m)}</td><td>{thresholds[m]:.6g}</td><td>{calibration_sizes[m]:,}</td>"
        f"<td>{n_flag[m]:,} of {len(scored):,}</td></tr>" for m in models)
    parts = [
        f"<h1>ImgAE-Dx predictions</h1><p class=muted>{len(outcomes):,} files · {len(scored):,} scored · "
        f"{len(failed):,} failed · {sum(1 for o in scored if o.warning):,} with a warning · models from <span class=path>{_e(origin)}</span> · written "
        f"{_e(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>",
        '<div class="note">Research use only: ImgAE-Dx is not a medical device. A flag means the '
        "image's anomaly score is above the given share of the model's scores on normal validation "
        "images; it is not a diagnosis.</div>",
        f"<h2>Operating point: target specificity {specificity:.0%}</h2>"
        "<table><thead><tr><th>model</th><th>threshold (score)</th><th>validation normals</th>"
        f"<th>flagged</th></tr></thead><tbody>{head}</tbody></table>",
        "<h2>Images, most anomalous first</h2>",
    ]
    for o in scored:
        rows = "".join(
            f"<tr><td>{_e(r.model)}</td><td>{r.score:.6g}</td><td>{r.percentile:.1f}</td>"
            f"<td>{'<span class=badge>flagged</span>' if r.flagged else 'no'}</td></tr>"
            for r in o.results if r.score is not None)
        img = (f'<img alt="{_e(Path(o.path).name)}" loading="lazy" src="{_e(o.overlay)}">'
               if o.overlay else "")
        warn = (f"<div class=warn><span class=wbadge>warning</span> {_e(o.warning)}</div>"
                if o.warning else "")
        parts.append(
            f'<div class="card{" flag" if o.flagged else ""}"><div class=path>{_e(o.path)}</div>{warn}{img}'
            "<table><thead><tr><th>model</th><th>score</th><th>percentile of normals</th><th>flagged</th>"
            f"</tr></thead><tbody>{rows}</tbody></table></div>")
    if failed:
        parts.append("<h2>Files that could not be scored</h2><table><thead><tr><th>file</th><th>error</th>"
                     "</tr></thead><tbody>"
                     + "".join(f"<tr><td class=path>{_e(o.path)}</td><td style='text-align:left'>"
                               f"{_e(o.error)}</td></tr>" for o in failed)
                     + "</tbody></table>")
    doc = ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
           "<meta name=viewport content='width=device-width,initial-scale=1'><link rel=icon href='data:,'>"
           f"<title>ImgAE-Dx predictions</title><style>{_CSS}</style></head><body><main>"
           + "\n".join(parts) + "</main></body></html>")
    return atomic_write_text(path, doc)
