"""Score images with loaded models: batched, decoding in threads, on the models' device.

``Predictor(models, specificity=0.95)``; ``predictor.predict(items)`` → ``list[PredictionResult]``,
one per (item, model), items in the given order and models in load order. Items are file paths
(PNG, JPEG, DICOM; :mod:`imgae_dx.inference.images`) or image arrays. A file that cannot be read
gives results with ``error`` set (one per model) and the others are still scored.
:meth:`Predictor.iter_predict` yields the same results item by item, without keeping them all
(what ``imgae-dx predict`` uses over thousands of files).

Decoding runs in a thread pool (OpenCV and zlib release the GIL) up to ``batch_size + workers``
items ahead of the model, so the next batch decodes while the current one is scored. On the CPU,
torch's intra-op threads are lowered to the cores the decode threads leave (at least one) while
scoring, and restored afterwards: both pools spinning on the same cores halves the throughput.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imgae_dx.inference.errors import ImageReadError
from imgae_dx.inference.images import (
    MAX_SIDE,
    decode_image,
    prepare_array,
    read_bytes,
    to_model_size,
    to_unit,
)
from imgae_dx.inference.loading import LoadedModel
from imgae_dx.run.calibration import DEFAULT_SPECIFICITY, check_specificity

Item = str | os.PathLike | np.ndarray


@dataclass
class PredictionResult:
    """One model's verdict on one image.

    Attributes:
        source: the path as given, or ``array[i]`` for the i-th in-memory image.
        model: ``unet`` | ``ra`` | ``ae``.
        score: image anomaly score (None on error); higher = more anomalous.
        percentile: 100 × share of the model's normal validation scores ≤ score.
        flagged: score above the threshold of the target specificity.
        threshold: that threshold (the ``specificity``-quantile of the normal scores).
        anomaly_map: H×W float32 at model resolution (None on error or when not kept).
        reconstruction: H×W float32 in [0, 1] at model resolution (idem).
        image: the uint8 H×W model input (idem).
        error: why the image could not be scored (None when it was).
        warning: why the score may not mean much though it was computed (a DICOM of another
            modality or body part); None when there is nothing to say.
    """

    source: str
    model: str
    score: float | None = None
    percentile: float | None = None
    flagged: bool | None = None
    threshold: float | None = None
    anomaly_map: np.ndarray | None = None
    reconstruction: np.ndarray | None = None
    image: np.ndarray | None = None
    error: str | None = None
    warning: str | None = None


@dataclass
class _Prepared:
    """One item's model inputs by (image size, resize rule), and its warnings."""

    inputs: dict[tuple[int, str], np.ndarray]
    warning: str | None = None


class Predictor:
    """Loaded models + their calibration; see the module doc.

    Args:
        models: from :func:`imgae_dx.inference.loading.load_models`.
        specificity: target specificity of ``flagged`` (0 < s < 1).
        batch_size: images per forward pass.
        workers: decode threads (default: CPU count, at most 8).
        max_side: refuse images with a larger side (before decoding where the format allows).
    """

    def __init__(self, models: Sequence[LoadedModel], *, specificity: float = DEFAULT_SPECIFICITY,
                 batch_size: int = 16, workers: int | None = None, max_side: int = MAX_SIDE) -> None:
        if not models:
            raise ValueError("Predictor needs at least one model")
        self.models = list(models)
        self.specificity = check_specificity(specificity)
        self.batch_size = max(1, int(batch_size))
        self.workers = max(1, int(workers or min(8, os.cpu_count() or 1)))
        self.max_side = int(max_side)
        self.inputs = sorted({(m.image_size, m.resize) for m in self.models})
        self.thresholds = {m.name: m.calibration.threshold(self.specificity) for m in self.models}

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def __repr__(self) -> str:
        parts = ", ".join(f"{m.name}@{m.image_size}px (calibrated on {m.calibration.n})" for m in self.models)
        return f"Predictor({parts}; specificity {self.specificity:g})"

    # ------------------------------------------------------------------ preprocessing
    def _prepare(self, item: Item) -> _Prepared:
        """Item → its model inputs (uint8 size×size per model input) (raises ImageReadError)."""
        if isinstance(item, np.ndarray):
            return _Prepared({(s, r): prepare_array(item, s, max_side=self.max_side, resize=r)
                              for s, r in self.inputs})
        img = decode_image(read_bytes(item), name=str(item), max_side=self.max_side)
        return _Prepared({(s, r): to_model_size(img.gray, s, r) for s, r in self.inputs},
                         "; ".join(img.warnings) or None)

    def _safe_prepare(self, item: Item) -> _Prepared | str:
        try:
            return self._prepare(item)
        except ImageReadError as e:
            return str(e)
        except Exception as e:  # a decoder bug must not stop the other files
            return f"unexpected {type(e).__name__} while reading: {str(e)[:200]}"

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def _score(self, sources: list[str], prepared: list[_Prepared], keep: bool
               ) -> list[list[PredictionResult]]:
        out: list[list[PredictionResult]] = [[] for _ in sources]
        for m in self.models:
            u8 = np.stack([p.inputs[(m.image_size, m.resize)] for p in prepared])
            device = m.model.device
            x = torch.from_numpy(to_unit(u8))[:, None].to(device)
            pred = m.model.predict(x)
            scores = pred.score.float().cpu().numpy().astype(np.float64)
            maps = pred.anomaly_map[:, 0].float().cpu().numpy() if keep else None
            recs = pred.reconstruction[:, 0].float().cpu().numpy() if keep else None
            thr = self.thresholds[m.name]
            for j, s in enumerate(scores):
                r = PredictionResult(sources[j], m.name, threshold=thr, warning=prepared[j].warning)
                if not math.isfinite(s):
                    r.error = f"{m.name} produced a non-finite score ({s})"
                else:
                    r.score = float(s)
                    r.percentile = float(m.calibration.percentile(s))
                    r.flagged = bool(s > thr)
                if keep:
                    r.anomaly_map, r.reconstruction, r.image = maps[j], recs[j], u8[j]
                out[j].append(r)
        return out

    def iter_predict(self, items: Iterable[Item], *, keep: bool = True,
                     on_item: Callable[[], None] | None = None
                     ) -> Iterator[tuple[int, list[PredictionResult]]]:
        """Yield ``(item index, [one result per model])`` in item order.

        Args:
            keep: attach the map, reconstruction and input to each result.
            on_item: called once per item when it has been scored (progress bars).
        """
        threads = torch.get_num_threads()
        if any(m.model.device.type == "cpu" for m in self.models):
            # the decode threads keep the cores busy: torch's own intra-op threads would only
            # contend with them (2 decode + 2 torch threads on 2 cores: half the throughput)
            torch.set_num_threads(max(1, (os.cpu_count() or 1) - self.workers))
        try:
            yield from self._pipeline(items, keep, on_item)
        finally:
            torch.set_num_threads(threads)

    def _pipeline(self, items: Iterable[Item], keep: bool, on_item: Callable[[], None] | None
                  ) -> Iterator[tuple[int, list[PredictionResult]]]:
        pending: deque[tuple[int, str, Future]] = deque()
        ahead = self.batch_size + self.workers
        with ThreadPoolExecutor(self.workers, thread_name_prefix="imgae-decode") as pool:
            it = iter(enumerate(items))
            exhausted = False
            batch: list[tuple[int, str, _Prepared | str]] = []
            n_ok = 0
            while True:
                while not exhausted and len(pending) < ahead:
                    try:
                        i, item = next(it)
                    except StopIteration:
                        exhausted = True
                        break
                    src = f"array[{i}]" if isinstance(item, np.ndarray) else str(item)
                    pending.append((i, src, pool.submit(self._safe_prepare, item)))
                if not pending:
                    break
                i, src, fut = pending.popleft()
                got = fut.result()
                batch.append((i, src, got))
                n_ok += not isinstance(got, str)
                if n_ok == self.batch_size:
                    yield from self._flush(batch, keep, on_item)
                    batch, n_ok = [], 0
            if batch:
                yield from self._flush(batch, keep, on_item)

    def _flush(self, batch: list[tuple[int, str, _Prepared | str]], keep: bool,
               on_item: Callable[[], None] | None) -> Iterator[tuple[int, list[PredictionResult]]]:
        ok = [b for b in batch if not isinstance(b[2], str)]
        scored = iter(self._score([b[1] for b in ok], [b[2] for b in ok], keep) if ok else [])  # type: ignore[misc]
        for i, src, got in batch:
            if isinstance(got, str):
                res = [PredictionResult(src, m.name, error=got) for m in self.models]
            else:
                res = next(scored)
            if on_item:
                on_item()
            yield i, res

    def predict(self, images_or_paths: Item | Iterable[Item], *, keep: bool = True
                ) -> list[PredictionResult]:
        """Score images (paths or arrays; one or many) → one result per (image, model).

        Results of failed reads carry ``error``; nothing is raised for a bad file.
        """
        if isinstance(images_or_paths, (str, os.PathLike, np.ndarray)):
            images_or_paths = [images_or_paths]  # type: ignore[list-item]
        got = self.iter_predict(list(images_or_paths), keep=keep)  # type: ignore[arg-type]
        return [r for _, res in got for r in res]


def load(path: str | os.PathLike[str] | Path, *, model_name: str = "all", device: str = "auto",
         specificity: float = DEFAULT_SPECIFICITY, batch_size: int = 16,
         notify: Callable[[str], None] | None = None, progress: bool = False) -> Predictor:
    """A :class:`Predictor` for a run folder or a bundle (see :mod:`imgae_dx.inference.loading`).

    Args:
        model_name: ``unet`` | ``ra`` | ``ae`` | ``all``.
        device: ``auto`` (CUDA when present) | ``cpu`` | ``cuda``.
        notify: receives one-line notices (a calibration being computed); default: stderr.
    """
    import sys

    from imgae_dx.inference.loading import load_models

    say = notify or (lambda msg: print(msg, file=sys.stderr))
    models = load_models(path, model_name, device=device, notify=say, progress=progress)
    return Predictor(models, specificity=specificity, batch_size=batch_size)

