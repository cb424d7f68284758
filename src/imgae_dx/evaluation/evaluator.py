"""Streaming evaluation of a run's models on the test split: scores, metrics, W&B.

``evaluate_run(run_dir, source=None, stages=None)`` (or :class:`CloudEvaluator`) does:

1. reads ``RUN_DIR/config.yaml`` and each model's ``checkpoints/MODEL/best.pt`` (fallback
   ``last.pt``; loaded with ``torch.load(weights_only=True)``): the checkpoint chosen on *normal
   validation* loss during training — nothing here looks at test labels to choose anything;
2. streams the ``test`` split (held-out patients, the run's view cohort) of the chosen stages
   through every model with the same bounded pipeline as training
   (:class:`~imgae_dx.data.dataset.StreamingNIHDataset`, image cache off: one pass);
3. appends one row per image to ``eval/scores.csv`` (``image, patient, view, stage, findings,
   label`` and one score column per model) and, for images with ``BBox_List_2017.csv`` rows, one row
   per (model, box) to ``eval/localisation.csv``; after each batch the stream position is saved
   in ``eval/state.json``, so an interrupted evaluation resumes where it stopped;
4. re-reads the few most and least anomalous test images per model (by name, one range read each)
   for the report's example grid (``eval/examples/MODEL.npz``) — anomaly maps are never kept for
   the whole test set;
5. writes ``eval/metrics.json`` (:func:`imgae_dx.evaluation.summary.summarise_scores` plus the
   checkpoint, source and cohort it describes, and per model the ``operating_point``: sensitivity
   and specificity on the test split at the threshold calibrated on the validation normals,
   :func:`run_operating_point`) and, when the run logged to W&B, logs the comparison
   table and curves to the same W&B run (id from the checkpoint).

Just over 500 lines on purpose: the five steps above share one resumable state (stream position,
open CSV writers, loaded models); the pure parts already live next door (``results``, ``summary``,
``localisation``, ``operating_point``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgae_dx.errors import CheckpointError, RunFolderError, UserError
from imgae_dx.evaluation import localisation as L
from imgae_dx.evaluation import metrics as M
from imgae_dx.evaluation import results as R
from imgae_dx.evaluation import summary as S
from imgae_dx.evaluation.operating_point import run_operating_point
from imgae_dx.evaluation.scoring import apply_overlay, scoring_of
from imgae_dx.utils.atomic import atomic_write_text
from imgae_dx.utils.device import resolve_device

log = logging.getLogger(__name__)

BOX_FRAME = 1024.0  # BBox_List_2017.csv coordinates are in the 1024-px frame of the PNGs
#: Data_Entry_2017.csv of the real dataset lists 112,120 images; far fewer means synthetic/sample data
REAL_METADATA_ROWS = 100_000


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
    ) -> None:
        from imgae_dx.config import config_from_yaml_text

        self.run_dir = Path(run_dir)
        cfg_path = self.run_dir / "config.yaml"
        if not cfg_path.is_file():
            raise RunFolderError(
                f"{self.run_dir} has no config.yaml: pass the --out folder of a training run "
                "(`imgae-dx train --out RUN_DIR`)"
            )
        self.cfg = config_from_yaml_text(cfg_path.read_text(), str(cfg_path))
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
        self.checkpoints: dict[str, dict[str, Any]] = {}
        self.image_size = int(self.cfg.data.image_size)

    # ------------------------------------------------------------------ models
    def load_models(self) -> None:
        """Build each model of the run and load its ``best.pt`` (else ``last.pt``)."""
        from imgae_dx.config import config_from_yaml_text
        from imgae_dx.models import load_model
        from imgae_dx.run.checkpoint import checkpoint_file, read_checkpoint

        for name in self.cfg.models:
            path = checkpoint_file(self.run_dir, name)
            ck = read_checkpoint(path, model_name=name, map_location="cpu")
            run_cfg = config_from_yaml_text(ck.config_yaml, f"the configuration saved in {path}")
            size = int(ck.image_size)
            if size != self.image_size:
                raise CheckpointError(
                    f"{path} was trained at {size}px but the run's config.yaml says "
                    f"data.image_size={self.image_size}; the run folder is inconsistent"
                )
            mcfg = getattr(run_cfg.model, name)
            if self.overlay:  # the trained model with the overlay's scoring settings
                mcfg = getattr(apply_overlay(run_cfg, self.overlay, f"scoring overlay for {path}").model, name)
            model = load_model(name, size, mcfg, ck.model, str(path), self.device)
            self.models[name] = model
            self.checkpoints[name] = {
                "file": str(path.relative_to(self.run_dir)),
                "stage": ck.stage,
                "stage_k": ck.stage_k,
                "position": ck.position.__dict__,
                "step": ck.step,
                "images_seen": ck.images_seen,
                "val_loss": ck.val_loss,
                "val_stages": ck.val_stages,
                "saved_at": ck.saved_at,
                "wandb_run_id": ck.wandb_run_id,
                "file_stamp": f"{path.stat().st_size}:{path.stat().st_mtime_ns}",
            }

    # ------------------------------------------------------------------ state
    def _identity(self, stages: list[str], archive_identity: str) -> dict[str, Any]:
        return {
            "source": archive_identity,
            "stages": stages,
            "view": self.cfg.data.view,
            "image_size": self.image_size,
            "seed": self.cfg.seed,
            "models": {n: {k: c[k] for k in ("file", "step", "saved_at", "file_stamp")}
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
        atomic_write_text(self.eval_dir / "state.json", json.dumps(S.json_safe(st)))

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def _predict(self, x: torch.Tensor) -> dict[str, Any]:
        return {n: m.predict(x) for n, m in self.models.items()}

    def score(self) -> dict[str, Any]:
        """Stream the test split and write ``scores.csv`` / ``localisation.csv`` (resumable).

        Returns:
            Facts about the pass: stages, counts, archive identity, dataset stats, timing.
        """
        from tqdm.auto import tqdm

        from imgae_dx.data.dataset import StreamingNIHDataset, pipeline_budget
        from imgae_dx.data.memory import MemoryManager
        from imgae_dx.data.nih_index import NIHIndex
        from imgae_dx.streaming.sources import open_archive

        data_cfg = self.cfg.data.model_copy(update={"cache": "off"})
        pipeline_budget(data_cfg)
        memory = MemoryManager(data_cfg.memory_budget_mb)
        t0 = time.perf_counter()
        archive = open_archive(self.source, data_cfg)
        try:
            index = NIHIndex.from_archive(archive)
            stages = index.resolve_stages(self.stages_arg)
            self._archive, self._index = archive, index
            identity = self._identity(stages, archive.identity)
            st = self._load_state(identity)
            self.eval_dir.mkdir(parents=True, exist_ok=True)
            fields = list(R.SCORE_FIELDS) + list(self.models)
            scored = R.scored_images(self.eval_dir / "scores.csv")
            fs, ws = R.open_rows(self.eval_dir / "scores.csv", fields, self.eval_dir)
            fl, wl = R.open_rows(self.eval_dir / "localisation.csv", R.LOC_FIELDS, self.eval_dir)
            stats: dict[str, Any] = {"images": 0, "skipped": 0, "bytes_fetched": 0, "requests": 0}
            scale = self.image_size / BOX_FRAME
            top = self.cfg.evaluation.top_percent_localisation
            limit = self.cfg.evaluation.max_images
            try:
                for stage in stages:
                    if stage in st["done_stages"]:
                        continue
                    ds = StreamingNIHDataset(
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
                        s = ds.stats()
                        for k in stats:
                            stats[k] += int(s.get(k, 0))
                        ds.close()
                    st["done_stages"].append(stage)
                    st["current"] = None
                    self._save_state(st)
                    if limit is not None and len(scored) >= limit:
                        break
            finally:
                fs.close()
                fl.close()
            stats.update(
                stages=stages, archive=archive.identity, seconds=round(time.perf_counter() - t0, 2),
                metadata_rows=self._metadata_rows(index), peak_rss_mb=round(memory.peak_rss / 2**20, 1),
            )
            return stats
        except BaseException:
            archive.close()
            raise

    @staticmethod
    def _metadata_rows(index: Any) -> int | None:
        """Rows of Data_Entry_2017.csv (112,120 in the real dataset)."""
        table = getattr(index, "table", None)
        return None if table is None else len(table)

    def _member_of(self, image: str) -> int | None:
        """Archive member id of a listed image (by its basename), or None."""
        idx = self._index
        hits = np.flatnonzero(idx.table.image[idx.row] == image)
        return int(idx.member[hits[0]]) if hits.size else None

    def _write_localisation(self, w: Any, recs: list[Any], preds: dict[str, Any], scale: float,
                            top: float) -> None:
        for j, r in enumerate(recs):
            boxes = list(getattr(r, "boxes", None) or [])
            if not boxes:
                continue
            for name, p in preds.items():
                amap = p.anomaly_map[j, 0].float().cpu().numpy()
                for b, (finding, x, y, bw, bh) in enumerate(boxes):
                    loc = L.box_localisation(amap, (x, y, bw, bh), scale=scale, top_percent=top)
                    w.writerow([r.image, name, b, finding, _fmt(x), _fmt(y), _fmt(bw), _fmt(bh)]
                               + [_fmt(loc[k]) for k in R.LOC_VALUES])

    # ------------------------------------------------------------------ examples
    def write_examples(self, table: R.ScoreTable) -> dict[str, list[str]]:
        """Re-read the most and least anomalous test images per model and save them for the report."""
        from imgae_dx.data.decode import decode_image

        k = self.cfg.evaluation.examples
        out: dict[str, list[str]] = {}
        if k <= 0 or not table.rows:
            return out
        n_most = (k + 1) // 2
        n_least = k // 2
        rows = table.rows
        scale = self.image_size / BOX_FRAME
        for name in self.models:
            s = table.scores[name]
            order = np.argsort(-s, kind="mergesort")
            picks = [("most", int(i)) for i in order[:n_most]]
            picks += [("least", int(i)) for i in order[::-1][:n_least] if int(i) not in {p for _, p in picks}]
            items = []
            for rank_kind, i in picks:
                r = rows[i]
                member = self._member_of(r["image"])
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
                R.save_examples(self.eval_dir / "examples" / f"{name}.npz", items)
                out[name] = [it["image_id"] for it in items]
        return out

    # ------------------------------------------------------------------ metrics
    def compute_metrics(self, facts: dict[str, Any] | None = None) -> dict[str, Any]:
        """``eval/metrics.json`` from ``scores.csv`` and ``localisation.csv``."""
        table = R.read_scores(self.eval_dir / "scores.csv", self.models)
        if not table.rows:
            raise UserError(
                f"the test split of stages {', '.join((facts or {}).get('stages', [])) or '?'} holds no "
                f"{self.cfg.data.view} images in {self.source}; choose other --stages or data.view"
            )
        loc = R.read_localisation(self.eval_dir / "localisation.csv", self.models,
                                  {r["image"] for r in table.rows})
        ev = self.cfg.evaluation
        out = S.summarise_scores(
            table.labels, table.scores, patients=table.patients, views=table.views,
            findings=table.findings, localisation=loc, n_bootstrap=ev.bootstrap, seed=self.cfg.seed,
        )
        for n in self.models:
            out["models"][n]["checkpoint"] = {k: v for k, v in self.checkpoints[n].items()
                                              if k not in ("wandb_run_id", "file_stamp")}
            out["models"][n]["operating_point"] = run_operating_point(
                self.run_dir, n, table.labels, table.scores[n], self.checkpoints[n].get("step"),
                self.scoring.get(n))
        stages_seen = sorted(set(table.stages))
        out["counts"]["by_stage"] = {s: table.stages.count(s) for s in stages_seen}
        out["counts"]["bbox_images"] = len({r["image"] for rows in loc.values() for r in rows})
        out["counts"]["bbox_boxes"] = max((len(v) for v in loc.values()), default=0)
        f = facts or {}
        if f:
            out["counts"]["skipped_undecodable"] = f.get("skipped", 0)
        meta_rows = f.get("metadata_rows")
        out.update({
            "split": "test",
            "view": self.cfg.data.view,
            "stages": f.get("stages", stages_seen),
            "source": f.get("archive", self.source),
            "image_size": self.image_size,
            "top_percent_localisation": ev.top_percent_localisation,
            "synthetic_data": bool(meta_rows is not None and meta_rows < REAL_METADATA_ROWS),
            "threshold_policy": "no threshold is tuned on the test split; F1-max is an oracle summary",
            "checkpoint_policy": ("best.pt = the epoch-end checkpoint with the lowest loss on the "
                                  "normal validation images of every stage trained so far"),
            "evaluation": self.name or "default",
            "scoring": self.scoring,
            "stream": {k: f[k] for k in ("images", "bytes_fetched", "requests", "seconds", "peak_rss_mb")
                       if k in f},
            "table": [
                {"stage": self.checkpoints[n].get("stage"), "model": n, "auroc": out["models"][n]["auroc"],
                 "auroc_ci": out["models"][n]["auroc_ci"], "loss": self.checkpoints[n].get("val_loss")}
                for n in self.models
            ],
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })
        atomic_write_text(self.eval_dir / "metrics.json", json.dumps(S.json_safe(out), indent=1))
        out["examples"] = self.write_examples(table)
        return out

    # ------------------------------------------------------------------ W&B
    def log_wandb(self, metrics: dict[str, Any]) -> bool:
        """Log the comparison table and curves to the run's W&B run (if it used ``--logger wandb``).

        Returns:
            True if logged. A failure is a warning: the evaluation is already on disk.
        """
        if self.cfg.logging.logger != "wandb":
            return False
        run_id = next((c.get("wandb_run_id") for c in self.checkpoints.values() if c.get("wandb_run_id")), None)
        try:
            import wandb
        except ImportError:
            log.warning("the run logged to W&B but wandb is not installed (pip install wandb); "
                        "evaluation results are in %s only", self.eval_dir)
            return False
        try:
            run = wandb.init(project=self.cfg.logging.wandb_project, entity=self.cfg.logging.wandb_entity,
                             id=run_id, resume="allow" if run_id else None, dir=str(self.run_dir),
                             job_type="evaluation", reinit=True)
            cols = ["stage", "model", "auroc", "auroc_lo", "auroc_hi", "auprc", "loss"]
            tab = wandb.Table(columns=cols)
            for row in metrics["table"]:
                m = metrics["models"][row["model"]]
                ci = m.get("auroc_ci") or [None, None]
                tab.add_data(row["stage"], row["model"], m.get("auroc"), ci[0], ci[1], m.get("auprc"), row["loss"])
            payload: dict[str, Any] = {"eval/comparison": tab}
            grid = M.ROC_GRID.tolist()
            names = [n for n in metrics["models"] if metrics["models"][n].get("curves")]
            if names:
                payload["eval/roc"] = wandb.plot.line_series(
                    xs=grid, ys=[list(metrics["models"][n]["curves"]["roc_tpr"]) for n in names],
                    keys=names, title="ROC (test)", xname="false positive rate")
                payload["eval/pr"] = wandb.plot.line_series(
                    xs=grid, ys=[list(metrics["models"][n]["curves"]["pr_precision"]) for n in names],
                    keys=names, title="Precision-recall (test)", xname="recall")
            for n, m in metrics["models"].items():
                for k in M.CURVE_METRICS:
                    if m.get(k) is not None and not (isinstance(m[k], float) and math.isnan(m[k])):
                        payload[f"eval/{n}/{k}"] = m[k]
            comp = metrics.get("comparison")
            if comp:
                payload["eval/delong_p"] = comp.get("delong_p")
                payload["eval/bootstrap_p"] = comp.get("bootstrap_p")
            run.log(payload)
            for k, v in payload.items():
                if isinstance(v, (int, float)):
                    run.summary[k] = v
            run.finish()
            return True
        except Exception as e:  # wandb raises its own types for auth / network problems
            log.warning("could not log the evaluation to W&B (%s: %s); results are in %s",
                        type(e).__name__, str(e)[:200], self.eval_dir)
            return False

    # ------------------------------------------------------------------ all
    def run(self) -> dict[str, Any]:
        """Load models, score (resuming), compute and write metrics, log to W&B. Returns the metrics."""
        self.load_models()
        facts = self.score()
        try:
            metrics = self.compute_metrics(facts)
        finally:
            self._archive.close()
        metrics["wandb_logged"] = self.log_wandb(metrics)
        return metrics


def evaluate_run(
    run_dir: str | os.PathLike[str],
    source: str | None = None,
    stages: str | Sequence[str] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Evaluate a run folder (see :class:`CloudEvaluator`); returns the content of ``eval/metrics.json``."""
    return CloudEvaluator(run_dir, source, stages, **kwargs).run()
