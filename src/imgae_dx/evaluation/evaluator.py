"""Streaming evaluation of a run's models on the test split: scores, metrics, W&B.

``evaluate_run(run_dir, source=None, stages=None)`` (or :class:`CloudEvaluator`) does:

1. loads the run's models with the run loader (:class:`imgae_dx.run.loader.RunFolder`:
   ``RUN_DIR/config.yaml`` and each model's ``checkpoints/MODEL/best.pt``, else ``last.pt``, read
   with ``torch.load(weights_only=True)``): the checkpoint chosen on *normal validation* loss
   during training — nothing here looks at test labels to choose anything;
2. opens the run's dataset (``data.dataset``: NIH, ZhangLab, folder, …) with the run's protocol
   and checks that the archive still gives the split the run trained on (``RUN_DIR/split.csv``,
   :mod:`imgae_dx.run.splits`; a changed archive is refused), then streams the ``test`` split
   (held-out patients, the run's view cohort) of the chosen stages through every model with the
   same bounded pipeline as training (:class:`~imgae_dx.data.dataset.StreamingDataset`, image
   cache off: one pass);
3. appends one row per image to ``eval/scores.csv`` (``image, patient, view, stage, findings,
   label`` and one score column per model) and, for images with ground-truth boxes (NIH's
   ``BBox_List_2017.csv``), one row per (model, box) to ``eval/localisation.csv``; after each
   batch the stream position is saved in ``eval/state.json``, so an interrupted evaluation
   resumes where it stopped;
4. re-reads the few most and least anomalous test images per model (by name, one range read each)
   for the report's example grid (``eval/examples/MODEL.npz``) — anomaly maps are never kept for
   the whole test set;
5. writes ``eval/metrics.json``, an :class:`~imgae_dx.evaluation.results.Evaluation`
   (:func:`imgae_dx.evaluation.summary.summarise_scores` plus the checkpoint, dataset, protocol,
   source and cohort it describes, whether the archive is a synthetic sample (its marker
   member), and per model the operating point: sensitivity and specificity on the test split at
   the threshold calibrated on the validation normals, :func:`run_operating_point`) and, when
   the run logged to W&B, logs the comparison table and curves to the same W&B run (id from the
   checkpoint; :mod:`imgae_dx.evaluation.wandb_log`).

The steps share one resumable state (stream position, open CSV writers, loaded models); the pure
parts live next door (``score_files``, ``results``, ``summary``, ``localisation``,
``operating_point``, ``wandb_log``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgae_dx.config import Config
from imgae_dx.errors import UserError
from imgae_dx.evaluation.localisation import box_localisation
from imgae_dx.evaluation.operating_point import run_operating_point
from imgae_dx.evaluation.results import (
    Evaluation,
    StreamFacts,
    TableRow,
    json_safe,
    write_evaluation,
)
from imgae_dx.evaluation.score_files import (
    LOC_FIELDS,
    LOC_VALUES,
    SCORE_FIELDS,
    ScoreTable,
    open_rows,
    read_localisation,
    read_scores,
    save_examples,
    scored_images,
)
from imgae_dx.evaluation.scoring import apply_overlay, scoring_of
from imgae_dx.evaluation.summary import summarise_scores
from imgae_dx.evaluation.wandb_log import log_evaluation
from imgae_dx.run.checkpoint import CheckpointSummary
from imgae_dx.run.loader import RunFolder
from imgae_dx.utils.atomic import atomic_write_text
from imgae_dx.utils.device import resolve_device

log = logging.getLogger(__name__)


@dataclass
class PassFacts:
    """What one pass over the test split saw (:meth:`CloudEvaluator.score`): the stages, the
    archive's identity, the dataset, its synthetic marker, the view cohort scored and the stream's
    counters."""

    stages: list[str]
    archive: str
    dataset: str
    synthetic: bool = False
    view: str | None = None
    images: int = 0
    skipped: int = 0
    bytes_fetched: int = 0
    requests: int = 0
    seconds: float = 0.0
    peak_rss_mb: float = 0.0

    def add_stream_stats(self, stats: Mapping[str, Any]) -> None:
        """Add one stage's :meth:`StreamingDataset.stats` counters."""
        for k in ("images", "skipped", "bytes_fetched", "requests"):
            setattr(self, k, getattr(self, k) + int(stats.get(k, 0)))


def _fmt(v: float) -> str:
    return f"{float(v):.9g}"


def _parse_stages(stages: str | Sequence[str] | None) -> str | list[str] | None:
    if stages is None:
        return None
    if isinstance(stages, str):
        s = stages.strip()
        return "all" if s == "all" else [p.strip() for p in s.split(",") if p.strip()]
    return list(stages)


class CloudEvaluator:
    """Evaluate the models of one run folder on the test split (see the module doc).

    Args:
        run_dir: the ``--out`` folder of ``imgae-dx train``.
        source: archive to stream (default: the run's ``source``).
        stages: ``"all"``, ``"images_001,images_002"`` or a list (default: the run's stages).
        dataset: the run's dataset (default: its ``config.yaml``'s); naming another is refused.
        device: ``auto`` | ``cpu`` | ``cuda`` (default: the run's ``training.device``).
        batch_size: images per forward pass (default: the run's batch size).
        progress: show tqdm bars.
        on_batch: called after each scored batch with the number of images scored so far (tests
            use it to interrupt an evaluation).
        scoring: a scoring overlay (:mod:`.scoring`: ``model.*.anomaly.*``,
            ``model.ra.inference_samples``) applied to the trained checkpoints.
        name: the evaluation's name: results go to ``RUN_DIR/eval-NAME`` (default ``eval``).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        source: str | None = None,
        stages: str | Sequence[str] | None = None,
        *,
        device: str | None = None,
        batch_size: int | None = None,
        progress: bool | None = None,
        on_batch: Callable[[int], None] | None = None,
        scoring: Mapping[str, Any] | None = None,
        name: str | None = None,
        dataset: str | None = None,
    ) -> None:
        self.run_folder = RunFolder(run_dir)
        self.run_dir = self.run_folder.path
        self.cfg = self.run_folder.config
        run_dataset = self.cfg.data.dataset
        if dataset is not None and run_dataset is not None and dataset != run_dataset:
            raise UserError(f"{self.run_dir} trained on the {run_dataset} dataset, not {dataset}; "
                            f"evaluate it as {run_dataset} (drop --dataset)")
        if dataset is not None and run_dataset is None:
            self.cfg = self.cfg.model_copy(update={"data": self.cfg.data.model_copy(update={"dataset": dataset})})
        self.overlay = dict(scoring or {})
        self.score_cfg = apply_overlay(self.cfg, self.overlay) if self.overlay else self.cfg
        self.scoring = scoring_of(self.score_cfg, list(self.cfg.models))
        self.source = source or self.cfg.source
        self.stages_arg = _parse_stages(stages) or self.cfg.stages
        self.device = resolve_device(device or self.cfg.training.device)
        self.batch_size = int(batch_size or self.cfg.training.batch_size)
        self.progress = self.cfg.logging.progress if progress is None else progress
        self.on_batch = on_batch
        if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise UserError(f"evaluation name {name!r}: use letters, digits, '.', '_' or '-'")
        self.name = name
        self.eval_dir = self.run_dir / (f"eval-{name}" if name else "eval")
        self.models: dict[str, Any] = {}
        self.checkpoints: dict[str, CheckpointSummary] = {}
        self._file_stamps: dict[str, str] = {}  # size:mtime of each checkpoint file (resume identity)
        self.wandb_run_id: str | None = None  # the training run's W&B id (from its checkpoints)
        self.examples: dict[str, list[str]] = {}  # model → the example images written
        self.wandb_logged = False
        self.image_size = int(self.cfg.data.image_size)

    # ------------------------------------------------------------------ models
    def load_models(self) -> None:
        """Load each model of the run (:meth:`RunFolder.load_models`: ``best.pt``, else
        ``last.pt``), with the scoring overlay's settings when there is one."""
        adjust = self._with_overlay if self.overlay else None
        for m in self.run_folder.load_models(device=self.device, adjust=adjust):
            self.models[m.name] = m.model
            self.checkpoints[m.name] = m.checkpoint
            self._file_stamps[m.name] = m.file_stamp
            self.wandb_run_id = self.wandb_run_id or m.wandb_run_id

    def _with_overlay(self, cfg: Config, checkpoint: Path) -> Config:
        """A checkpoint's configuration with the overlay's scoring settings."""
        return apply_overlay(cfg, self.overlay, f"scoring overlay for {checkpoint}")

    # ------------------------------------------------------------------ state
    def _identity(self, stages: list[str], archive_identity: str) -> dict[str, Any]:
        return {
            "source": archive_identity,
            "dataset": self._index.name,
            "stages": stages,
            "view": self.cfg.data.view,
            "image_size": self.image_size,
            "seed": self.cfg.seed,
            "models": {n: {"file": c.file, "step": c.step, "saved_at": c.saved_at,
                           "file_stamp": self._file_stamps[n]}
                       for n, c in self.checkpoints.items()},
            "scoring": self.scoring,
        }

    def _load_state(self, identity: dict[str, Any]) -> dict[str, Any]:
        """The saved progress if it belongs to this very evaluation, else a fresh start."""
        p = self.eval_dir / "state.json"
        fresh = {"identity": identity, "done_stages": [], "current": None}
        try:
            st = json.loads(p.read_text())
        except FileNotFoundError:
            st = None
        except (OSError, json.JSONDecodeError):
            st = None
            log.warning("eval/state.json is unreadable; evaluating from the start")
        scores = self.eval_dir / "scores.csv"
        if st is not None and st.get("identity") == json.loads(json.dumps(identity)) and scores.is_file():
            return st
        if scores.exists():
            log.info("previous evaluation in %s is for other checkpoints/source/stages; starting afresh",
                     self.eval_dir)
        for f in ("scores.csv", "localisation.csv", "state.json", "metrics.json"):
            (self.eval_dir / f).unlink(missing_ok=True)
        return fresh

    def _save_state(self, st: dict[str, Any]) -> None:
        atomic_write_text(self.eval_dir / "state.json", json.dumps(json_safe(st)))

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def _predict(self, x: torch.Tensor) -> dict[str, Any]:
        return {n: m.predict(x) for n, m in self.models.items()}

    def score(self) -> PassFacts:
        """Stream the test split and write ``scores.csv`` / ``localisation.csv`` (resumable)."""
        from tqdm.auto import tqdm

        from imgae_dx.data.dataset import StreamingDataset, pipeline_budget
        from imgae_dx.data.datasets import open_dataset
        from imgae_dx.data.memory import MemoryManager
        from imgae_dx.streaming.sources import open_archive

        data_cfg = self.cfg.data.model_copy(update={"cache": "off"})
        pipeline_budget(data_cfg)
        memory = MemoryManager(data_cfg.memory_budget_mb)
        t0 = time.perf_counter()
        archive = open_archive(self.source, data_cfg)
        try:
            index = open_dataset(archive, data_cfg, self.cfg.seed)
            stages = index.resolve_stages(self.stages_arg)
            self._archive, self._index = archive, index
            self._check_split(index, stages)
            identity = self._identity(stages, archive.identity)
            st = self._load_state(identity)
            self.eval_dir.mkdir(parents=True, exist_ok=True)
            fields = list(SCORE_FIELDS) + list(self.models)
            scored = scored_images(self.eval_dir / "scores.csv")
            fs, ws = open_rows(self.eval_dir / "scores.csv", fields, self.eval_dir)
            fl, wl = open_rows(self.eval_dir / "localisation.csv", LOC_FIELDS, self.eval_dir)
            facts = PassFacts(stages=stages, archive=archive.identity, dataset=index.name,
                              synthetic=index.synthetic, view=index.cohort(self.cfg.data.view))
            scale = self.image_size / index.box_frame
            top = self.cfg.evaluation.top_percent_localisation
            limit = self.cfg.evaluation.max_images
            try:
                for stage in stages:
                    if stage in st["done_stages"]:
                        continue
                    ds = StreamingDataset(
                        archive, index, stage, "test", data_cfg, seed=self.cfg.seed,
                        batch_size=self.batch_size, cache=None, memory=memory, drop_last=False,
                    )
                    cur = st.get("current")
                    if cur and cur.get("stage") == stage and cur.get("dataset"):
                        ds.load_state_dict(cur["dataset"])
                    bar = tqdm(total=len(ds), initial=ds.position, desc=f"evaluate {stage}", unit="img",
                               disable=not self.progress, leave=False)
                    try:
                        for batch in ds.batches():
                            recs = [index.record(int(m)) for m in batch.members.tolist()]
                            keep = [i for i, r in enumerate(recs) if str(r.image) not in scored]
                            if keep:
                                x = batch.images[keep].to(self.device)
                                preds = self._predict(x)
                                self._write_localisation(wl, [recs[i] for i in keep], preds, scale, top)
                                fl.flush()
                                for j, i in enumerate(keep):
                                    r = recs[i]
                                    ws.writerow([r.image, r.patient, r.view, stage,
                                                 "|".join(r.findings) or "No Finding", int(r.label)]
                                                + [_fmt(preds[n].score[j]) for n in self.models])
                                    scored.add(str(r.image))
                                fs.flush()
                                os.fsync(fs.fileno())
                            st["current"] = {"stage": stage, "dataset": ds.state_dict()}
                            self._save_state(st)
                            bar.update(len(batch))
                            if self.on_batch is not None:
                                self.on_batch(len(scored))
                            if limit is not None and len(scored) >= limit:
                                break
                    finally:
                        bar.close()
                        facts.add_stream_stats(ds.stats())
                        ds.close()
                    st["done_stages"].append(stage)
                    st["current"] = None
                    self._save_state(st)
                    if limit is not None and len(scored) >= limit:
                        break
            finally:
                fs.close()
                fl.close()
            facts.seconds = round(time.perf_counter() - t0, 2)
            facts.peak_rss_mb = round(memory.peak_rss / 2**20, 1)
            return facts
        except BaseException:
            archive.close()
            raise

    def _check_split(self, index: Any, stages: list[str]) -> None:
        """The archive must give the evaluated stages the split the run trained on (``split.csv``).

        Raises:
            UserError: it gives another (images added, removed, relabelled, or moved to another split).
        """
        from imgae_dx.run.splits import SPLIT_FILE, SplitTable, read_split_table, split_differences

        saved = read_split_table(self.run_dir)
        if saved is None:
            log.info("%s has no %s (a run from before split files): the split is not checked",
                     self.run_dir, SPLIT_FILE)
            return
        diffs = split_differences(saved, SplitTable.from_index(index), stages)
        if diffs:
            raise UserError(
                f"{self.source} gives stages {','.join(stages)} another split than {self.run_dir} trained "
                f"on ({'; '.join(diffs)}): the archive changed; evaluate with the source the run trained "
                f"on (see {self.run_dir / SPLIT_FILE})")

    def _write_localisation(self, w: Any, recs: list[Any], preds: dict[str, Any], scale: float,
                            top: float) -> None:
        for j, r in enumerate(recs):
            boxes = list(getattr(r, "boxes", None) or [])
            if not boxes:
                continue
            for name, p in preds.items():
                amap = p.anomaly_map[j, 0].float().cpu().numpy()
                for b, (finding, x, y, bw, bh) in enumerate(boxes):
                    loc = box_localisation(amap, (x, y, bw, bh), scale=scale, top_percent=top)
                    w.writerow([r.image, name, b, finding, _fmt(x), _fmt(y), _fmt(bw), _fmt(bh)]
                               + [_fmt(loc[k]) for k in LOC_VALUES])

    # ------------------------------------------------------------------ examples
    def write_examples(self, table: ScoreTable) -> dict[str, list[str]]:
        """Re-read the most and least anomalous test images per model and save them for the report."""
        from imgae_dx.data.decode import decode_image

        k = self.cfg.evaluation.examples
        out: dict[str, list[str]] = {}
        if k <= 0 or not table.rows:
            return out
        n_most = (k + 1) // 2
        n_least = k // 2
        rows = table.rows
        scale = self.image_size / self._index.box_frame
        for name in self.models:
            s = table.scores[name]
            order = np.argsort(-s, kind="mergesort")
            picks = [("most", int(i)) for i in order[:n_most]]
            picks += [("least", int(i)) for i in order[::-1][:n_least] if int(i) not in {p for _, p in picks}]
            items = []
            for rank_kind, i in picks:
                r = rows[i]
                member = self._index.member_of(r["image"])
                if member is None:
                    log.warning("example %s is not in %s any more; skipped", r["image"], self._archive.identity)
                    continue
                try:
                    img = decode_image(self._archive.read_member_id(member), self.image_size,
                                       resize=self.cfg.data.resize, png_decoder=self.cfg.data.png_decoder)
                except UserError as e:
                    log.warning("example %s could not be re-read: %s", r["image"], e)
                    continue
                x = torch.from_numpy(img.astype(np.float32) / 255.0)[None, None].to(self.device)
                p = self.models[name].predict(x)
                rec = self._index.record(member)
                boxes = [(f, bx * scale, by * scale, bw * scale, bh * scale)
                         for f, bx, by, bw, bh in (getattr(rec, "boxes", None) or [])]
                lab = "abnormal: " + r["findings"] if int(r["label"]) else "normal"
                items.append({
                    "image_id": r["image"],
                    "title": f"{rank_kind} anomalous\n{r['image']}\n{lab[:40]}\nscore {s[i]:.4g}",
                    "image": img, "reconstruction": p.reconstruction[0, 0].float().cpu().numpy(),
                    "anomaly_map": p.anomaly_map[0, 0].float().cpu().numpy(), "boxes": boxes,
                })
            if items:
                save_examples(self.eval_dir / "examples" / f"{name}.npz", items)
                out[name] = [it["image_id"] for it in items]
        return out

    # ------------------------------------------------------------------ metrics
    def compute_metrics(self, facts: PassFacts | None = None) -> Evaluation:
        """Write ``eval/metrics.json`` from ``scores.csv`` and ``localisation.csv``, then the
        example images; returns what was written. ``facts``: what :meth:`score` saw (None: the
        stages, source and dataset of the run's configuration)."""
        from imgae_dx.data.datasets.registry import spec

        table = read_scores(self.eval_dir / "scores.csv", self.models)
        if not table.rows:
            raise UserError(
                f"the test split of stages {', '.join(facts.stages if facts else []) or '?'} holds no "
                f"{self.cfg.data.view} images in {self.source}; choose other --stages or data.view"
            )
        loc = read_localisation(self.eval_dir / "localisation.csv", self.models,
                                {r["image"] for r in table.rows})
        ev = self.cfg.evaluation
        summary = summarise_scores(
            table.labels, table.scores, patients=table.patients, views=table.views,
            findings=table.findings, localisation=loc, n_bootstrap=ev.bootstrap, seed=self.cfg.seed,
        )
        models = {n: replace(summary.models[n], checkpoint=self.checkpoints[n],
                             operating_point=run_operating_point(
                                 self.run_dir, n, table.labels, table.scores[n], self.checkpoints[n].step,
                                 self.scoring[n]))
                  for n in self.models}
        stages_seen = sorted(set(table.stages))
        counts = replace(
            summary.counts,
            by_stage={s: table.stages.count(s) for s in stages_seen},
            bbox_images=len({r["image"] for rows in loc.values() for r in rows}),
            bbox_boxes=max((len(v) for v in loc.values()), default=0),
            skipped_undecodable=facts.skipped if facts else None,
        )
        dataset = spec(facts.dataset if facts else self.cfg.data.dataset or "nih")
        stream = (StreamFacts(images=facts.images, bytes_fetched=facts.bytes_fetched, requests=facts.requests,
                              seconds=facts.seconds, peak_rss_mb=facts.peak_rss_mb)
                  if facts else StreamFacts())
        result = Evaluation(
            models=models, comparisons=summary.comparisons, counts=counts, bootstrap=summary.bootstrap,
            dataset=dataset.name, dataset_title=dataset.title, protocol=dataset.protocol, split="test",
            view=facts.view if facts and facts.view else self.cfg.data.view,
            stages=facts.stages if facts else stages_seen,
            source=facts.archive if facts else self.source, image_size=self.image_size,
            top_percent_localisation=ev.top_percent_localisation,
            synthetic_data=bool(facts and facts.synthetic),
            threshold_policy="no threshold is tuned on the test split; F1-max is an oracle summary",
            checkpoint_policy=("best.pt = the epoch-end checkpoint with the lowest loss on the "
                               "normal validation images of every stage trained so far"),
            evaluation=self.name or "default", scoring=self.scoring, stream=stream,
            table=[TableRow(stage=self.checkpoints[n].stage, model=n, auroc=m.auroc, auroc_ci=m.auroc_ci,
                            loss=self.checkpoints[n].val_loss) for n, m in models.items()],
            written_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        write_evaluation(self.eval_dir, result)
        self.examples = self.write_examples(table)
        return result

    # ------------------------------------------------------------------ all
    def run(self) -> Evaluation:
        """Load models, score (resuming), compute and write metrics, log to W&B. Returns the
        evaluation written (``examples`` and ``wandb_logged`` say what else was done)."""
        self.load_models()
        facts = self.score()
        try:
            result = self.compute_metrics(facts)
        finally:
            self._archive.close()
        self.wandb_logged = log_evaluation(result, self.cfg.logging, self.run_dir, self.eval_dir,
                                           self.wandb_run_id)
        return result


def evaluate_run(
    run_dir: str | os.PathLike[str],
    source: str | None = None,
    stages: str | Sequence[str] | None = None,
    **kwargs: Any,
) -> Evaluation:
    """Evaluate a run folder (see :class:`CloudEvaluator`); returns what ``eval/metrics.json`` holds."""
    return CloudEvaluator(run_dir, source, stages, **kwargs).run()
