"""``imgae-dx predict``'s work: inputs → ``OUT/predictions.csv``, ``OUT/overlays/*.png``, ``OUT/index.html``.

``predictions.csv`` (the contract): columns exactly :data:`CSV_COLUMNS` — ``path`` (as expanded
from INPUT), ``model``, ``score``, ``percentile`` (0–100, among the model's validation normals),
``flagged`` (``true``/``false`` at the target specificity), ``error`` (empty when scored),
``warning`` (why a score may mean little: a DICOM of another modality or body part; empty when
there is nothing to say). One row per (file, model), files in input order; a file that could not
be read has one row per model with empty score/percentile/flagged and the reason in ``error``.

The CSV is safe to open in a spreadsheet: a cell that starts with ``=``, ``+``, ``-``, ``@``, a
tab or a carriage return gets a ``'`` in front (OWASP's advice against formula injection), so a
file named ``=HYPERLINK(…).dcm`` is shown, not run. File names that are not valid UTF-8 are
kept for reading (Python's surrogate escapes) and shown with U+FFFD replacement characters in the
CSV, the gallery and on stderr (:func:`display_path`).

Only ``OUT`` is written: the CSV and the gallery atomically at the end, one overlay per scored
file (``overlays/NNNNN_<name>.png``), and a marker ``.imgae-dx-predict`` so that a later run into
the same folder may replace its own ``overlays/`` (an ``overlays/`` folder without the marker is
refused, untouched). An earlier ``predictions.csv`` or ``index.html`` in ``OUT`` is refused unless
``overwrite`` is set. ``OUT/overlays`` is never searched for inputs, so ``OUT`` may be an input
folder. (A run folder whose calibration is missing gets it computed and saved there:
:mod:`imgae_dx.inference.loading`.) Failures go to ``err`` (stderr) as ``error: PATH: REASON``
while running.
"""

from __future__ import annotations

import csv
import re
import shutil
import sys
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from imgae_dx.errors import UserError
from imgae_dx.inference.gallery import ImageOutcome, write_gallery
from imgae_dx.inference.inputs import expand_inputs
from imgae_dx.inference.overlay import Panel, encode_png, render
from imgae_dx.inference.predictor import PredictionResult, Predictor
from imgae_dx.utils.atomic import atomic_open

CSV_COLUMNS: tuple[str, ...] = ("path", "model", "score", "percentile", "flagged", "error", "warning")
MARKER = ".imgae-dx-predict"
#: first characters a spreadsheet reads as a formula (OWASP CSV injection)
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
OUTPUTS = ("predictions.csv", "index.html")


def display_path(path: str) -> str:
    """``path`` as text: bytes that are not UTF-8 (surrogate escapes) become U+FFFD."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def csv_cell(value: str) -> str:
    """A CSV cell a spreadsheet shows rather than runs (see the module doc)."""
    return "'" + value if value.startswith(FORMULA_PREFIXES) else value


@dataclass
class PredictSummary:
    """What one ``predict`` run did."""

    out: Path
    files: int = 0
    failed: int = 0
    warned: int = 0
    flagged: dict[str, int] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)

    def lines(self, specificity: float) -> list[str]:
        flags = ", ".join(f"{m} {n} (score > {self.thresholds[m]:.4g})" for m, n in self.flagged.items())
        lines = [f"scored {self.files - self.failed} of {self.files} files; flagged at specificity "
                 f"{specificity:g}: {flags}"]
        if self.warned:
            lines.append(f"{self.warned} scored files carry a warning (outside what the models saw; "
                         "see the warning column)")
        return lines + [f"predictions: {display_path(str(self.out / 'predictions.csv'))}",
                         f"gallery:     {display_path(str(self.out / 'index.html'))}"]


def prepare_out(out: Path, *, overwrite: bool = False) -> Path:
    """Create ``out`` and empty its ``overlays/`` if a previous predict wrote it; returns overlays/.

    Raises:
        UserError: ``out`` holds an earlier run's outputs (and not ``overwrite``), someone else's
            ``overlays/``, or cannot be written.
    """
    overlays = out / "overlays"
    earlier = [n for n in OUTPUTS if (out / n).exists()]
    if earlier and not overwrite:
        raise UserError(f"--out {display_path(str(out))} already holds {' and '.join(earlier)} of an "
                        "earlier predict; pass --overwrite to replace them, or choose another --out "
                        "(nothing was touched)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        if overlays.exists():
            if not (out / MARKER).is_file():
                raise UserError(f"--out {display_path(str(out))} already holds an overlays/ folder that "
                                "imgae-dx predict did not write; choose another --out (nothing was touched)")
            shutil.rmtree(overlays)
        overlays.mkdir()
        (out / MARKER).write_text("output folder of `imgae-dx predict`; a later predict may replace it\n")
    except OSError as e:
        raise UserError(f"--out {display_path(str(out))} is not writable: {e.strerror or e}; "
                        "choose another --out") from None
    return overlays


def _overlay_name(i: int, path: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem)[:60] or "image"
    return f"{i + 1:05d}_{stem}.png"


def _render_write(dest: Path, image: np.ndarray, panels: list[Panel], title: str) -> None:
    dest.write_bytes(encode_png(render(image, panels, title)))


def _row(r: PredictionResult) -> list[str]:
    if r.score is None:
        cells = [display_path(r.source), r.model, "", "", "", r.error or "", r.warning or ""]
    else:
        cells = [display_path(r.source), r.model, f"{r.score:.9g}", f"{r.percentile:.3f}",
                 "true" if r.flagged else "false", "", r.warning or ""]
    return [csv_cell(c) for c in cells]


def predict_to_folder(inputs: Sequence[str], predictor: Predictor, out: str | Path, *,
                      progress: bool = True, err: TextIO | None = None,
                      overwrite: bool = False) -> PredictSummary:
    """Score every file of ``inputs`` and write the outputs (see the module doc).

    Args:
        overwrite: replace an earlier run's ``predictions.csv`` and ``index.html`` in ``out``.

    Raises:
        UserError: ``out`` cannot be used. Per-file problems never raise.
    """
    from tqdm.auto import tqdm

    err = err or sys.stderr
    out = Path(out).expanduser()
    overlays = prepare_out(out, overwrite=overwrite)
    files = expand_inputs(list(inputs), exclude=overlays)
    vmax = {m.name: m.calibration.map_vmax for m in predictor.models}
    summary = PredictSummary(out, files=len(files), flagged=dict.fromkeys(predictor.names, 0),
                             thresholds=dict(predictor.thresholds))
    outcomes: list[ImageOutcome] = []
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress, file=err)

    def say_error(path: str, msg: str) -> None:
        tqdm.write(f"error: {display_path(path)}: {msg}", file=err)

    readable = [k for k, f in enumerate(files) if f.error is None]
    writes: deque[Future] = deque()
    with atomic_open(out / "predictions.csv", "w") as fh, \
            ThreadPoolExecutor(max(1, predictor.workers // 2), thread_name_prefix="imgae-overlay") as pool:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(CSV_COLUMNS)

        def unreadable_before(k: int) -> None:
            while len(outcomes) < k:  # files that were not even read, kept in input order
                f = files[len(outcomes)]
                say_error(f.path, f.error or "")
                res = [PredictionResult(f.path, m, error=f.error) for m in predictor.names]
                outcomes.append(ImageOutcome(len(outcomes), display_path(f.path), res))
                w.writerows(_row(r) for r in res)
                bar.update(1)

        for i, res in predictor.iter_predict([files[k].path for k in readable],
                                             on_item=lambda: bar.update(1)):
            unreadable_before(readable[i])
            w.writerows(_row(r) for r in res)
            o = ImageOutcome(len(outcomes), display_path(files[readable[i]].path), res)
            if o.error is not None:
                say_error(o.path, o.error)
            else:
                name = _overlay_name(readable[i], o.path)
                o.overlay = f"overlays/{name}"
                panels = [Panel(r.model, r.anomaly_map, vmax[r.model], r.score, r.percentile,  # type: ignore[arg-type]
                                bool(r.flagged)) for r in res]
                writes.append(pool.submit(_render_write, overlays / name, res[0].image, panels,
                                          Path(o.path).name))
                for r in res:
                    summary.flagged[r.model] += bool(r.flagged)
                    r.anomaly_map = r.reconstruction = r.image = None  # the panels hold what is drawn
            outcomes.append(o)
            while len(writes) > 2 * predictor.workers:
                writes.popleft().result()
        unreadable_before(len(files))
        while writes:
            writes.popleft().result()
    bar.close()
    summary.failed = sum(1 for o in outcomes if o.error is not None)
    summary.warned = sum(1 for o in outcomes if o.error is None and o.warning is not None)
    write_gallery(out / "index.html", outcomes, thresholds=predictor.thresholds,
                  calibration_sizes={m.name: m.calibration.n for m in predictor.models},
                  specificity=predictor.specificity,
                  origin=display_path(predictor.models[0].origin))
    return summary
