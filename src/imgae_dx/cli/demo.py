"""``imgae-dx demo [--out DIR]``: the whole job on the embedded sample dataset, offline.

Steps (each announced on one line; tqdm bars while they run):

1. **Sample archive.** A synthetic NIH-layout ``data.zip`` (:func:`imgae_dx.testing.sample.
   write_sample_archive`: 3 stages of :data:`SAMPLE` images) is generated once and kept in the
   user cache, ``$XDG_CACHE_HOME/imgae_dx/sample/<key>/data.zip`` (default ``~/.cache/…``), where
   ``<key>`` names the sample's parameters and a digest of the generator's source: a second demo
   (any ``--out``) reuses it, and a changed generator makes a new one. The cache sits next to the
   archive-index cache, outside the run folder, so deleting ``runs/demo`` does not cost a
   regeneration; ``rm -rf ~/.cache/imgae_dx/sample`` frees it (~20 MB).
2. **Streaming.** The archive is served by a loopback HTTP server
   (:class:`imgae_dx.testing.RangeServer`) and the run's ``source`` is its ``http://127.0.0.1``
   URL: the demo reads byte ranges exactly as a run on the real archive does (central directory by
   a suffix range, coalesced range requests, CRC checks, PNG decode, area resize).
3. **Training.** U-Net, RA and the plain AE baseline (``models`` in ``demo.yaml``), stage after
   stage from one stream, with
   :class:`~imgae_dx.training.streaming_trainer.StreamingTrainer` and the packaged configuration
   overlay ``configs/demo.yaml`` (64 px, narrow models; sized for ~10 minutes on 2 CPU cores).
   Checkpoints are chosen on normal validation loss only.
4. **Evaluation** of each model's ``best.pt`` on the held-out test patients
   (:func:`~imgae_dx.evaluation.evaluator.evaluate_run`: AUROC etc. with patient-bootstrap
   intervals, U-Net vs RA DeLong p-value; the AE is reported alongside as the baseline).
5. **Report**: ``DIR/report.html`` (:func:`~imgae_dx.visualization.report.write_report`), then the
   summary table and the report's path are printed.
6. **Predict on image files**: a few held-out test images (normal and abnormal, patients never
   trained on) are copied out of the archive to ``DIR/heldout/`` and scored as a user's own files
   would be (:func:`imgae_dx.inference.job.predict_to_folder`, as ``imgae-dx predict DIR/heldout
   --run DIR --out DIR/predict``); ``report.html`` is rewritten to link the gallery
   ``DIR/predict/index.html``.

The run folder ``DIR`` (default ``runs/demo``) is the usual run folder plus a marker file
``.imgae-dx-demo``; a later demo with the same ``--out`` replaces a folder carrying that marker and
refuses any other non-empty folder. Its ``config.yaml`` names the loopback URL, which is gone after
the demo: re-evaluate with ``imgae-dx evaluate --run DIR --source <cache>/data.zip``.

Hidden options (attributes of ``args`` that the parser does not define; tests and benchmarks
use them to run the same pipeline at a tiny scale): ``images_per_stage``, ``image_px``,
``sample_seed``, ``sample_dir`` (folder holding/receiving ``data.zip``) and ``overrides`` (dotted
configuration overrides applied after ``demo.yaml``).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

DEFAULT_OUT = "runs/demo"
MARKER = ".imgae-dx-demo"


@dataclass(frozen=True)
class SampleSpec:
    """Parameters of the demo's sample archive (see :func:`imgae_dx.testing.sample.write_sample_archive`).

    ``image_px`` is the side of the stored PNGs: 128 px keeps generation and decoding fast while
    leaving the area resize to the model's 64 px a real downsampling step.
    """

    images_per_stage: int = 800
    stages: int = 3
    seed: int = 0
    image_px: int = 128

    def key(self) -> str:
        """Folder name of this sample in the cache: parameters + generator digest."""
        return (f"s{self.stages}x{self.images_per_stage}-px{self.image_px}-seed{self.seed}-"
                f"{_generator_digest()}")


SAMPLE = SampleSpec()


def _generator_digest() -> str:
    """First 10 hex digits of the SHA-1 of the sample generator's source (cache invalidation)."""
    from imgae_dx.testing import sample

    h = hashlib.sha1()
    try:
        for f in sorted(Path(sample.__file__).parent.glob("*.py")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    except OSError:  # zipped install: fall back to the package version
        from imgae_dx import __version__

        h.update(__version__.encode())
    return h.hexdigest()[:10]


def sample_cache_root() -> Path:
    """``$XDG_CACHE_HOME/imgae_dx/sample`` (default ``~/.cache/imgae_dx/sample``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(base).expanduser() / "imgae_dx" / "sample"


def _say(msg: str) -> None:
    """One progress line, safe to print while tqdm bars are drawn."""
    from tqdm.auto import tqdm

    tqdm.write(msg, file=sys.stdout)
    sys.stdout.flush()


def ensure_sample(spec: SampleSpec, folder: Path, *, progress: bool) -> tuple[Path, bool]:
    """The sample archive ``folder/data.zip``, generated if absent. Returns (path, generated)."""
    from imgae_dx.errors import UserError
    from imgae_dx.testing.sample import write_sample_archive

    path = folder / "data.zip"
    if path.is_file():
        return path, False
    try:
        written = write_sample_archive(folder, images_per_stage=spec.images_per_stage,
                                       stages=spec.stages, seed=spec.seed, image_px=spec.image_px,
                                       progress=progress)
    except OSError as e:
        raise UserError(f"cannot write the demo's sample archive {path}: {e.strerror or e}; "
                        "set XDG_CACHE_HOME to a writable folder") from None
    return written, True


def prepare_out(out: Path) -> bool:
    """Make ``out`` ready for a fresh demo run. Returns True when a previous demo run was replaced.

    Raises:
        RunFolderError: ``out`` is a file, or a non-empty folder that is not a demo run.
    """
    from imgae_dx.errors import RunFolderError

    replaced = False
    if out.exists():
        if not out.is_dir():
            raise RunFolderError(f"--out {out} exists and is not a folder; choose another --out")
        if any(out.iterdir()):
            if not (out / MARKER).is_file():
                raise RunFolderError(
                    f"--out {out} is not empty and not a previous demo run (no {MARKER} in it); "
                    "choose another --out or remove the folder (nothing was touched)"
                )
            shutil.rmtree(out)
            replaced = True
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text("run folder of `imgae-dx demo`; a later demo may replace it\n")
    except OSError as e:
        raise RunFolderError(f"--out {out} is not writable: {e.strerror or e}; choose another --out") from None
    return replaced


def build_config(out: Path, source: str, overrides: Mapping[str, Any] | None = None):
    """The demo's validated :class:`~imgae_dx.config.Config`: defaults + ``demo.yaml`` + overrides."""
    from imgae_dx.config import load_config, packaged_config_path

    given = {"source": source, "out": str(out),
             # the loopback URL changes every run: keep its index cache with the run, not in ~/.cache
             "data.index_cache_dir": str(out / "index_cache")}
    given.update(overrides or {})
    return load_config(packaged_config_path("demo.yaml"), given)


class _SayHandler(logging.Handler):
    """The trainer's progress lines (one per finished epoch, …) printed like the demo's own."""

    def emit(self, record: logging.LogRecord) -> None:
        _say("      " + record.getMessage())


HELDOUT_IMAGES = 8


def _heldout_images(archive: Path, dest: Path, view: str, n: int) -> list[Path]:
    """Copy ``n`` test-split PNGs (half normal, half abnormal, of the run's view cohort) out of the
    sample archive into ``dest``; returns their paths."""
    import zipfile

    from imgae_dx.data.datasets.nih import METADATA_NAMES, NIHIndex

    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
        index = NIHIndex.from_files(*(z.read(m) for m in METADATA_NAMES), names)
        test = index.split("all", "test", view=view)  # member ids = positions in names
        picked = [m for label in (0, 1) for m in test[index.labels(test) == label][: n // 2]]
        dest.mkdir(parents=True, exist_ok=True)
        out = []
        for m in picked:
            p = dest / index.record(int(m)).image
            p.write_bytes(z.read(names[int(m)]))
            out.append(p)
    return out


def run_seeds(args: argparse.Namespace, seeds: list[int]) -> int:
    """The demo once per training seed into OUT/seed-S, then the mean ± sd over the seeds."""
    from imgae_dx.visualization.seeds import aggregate, seed_runs, summary_lines, write_seeds_report

    out = Path(getattr(args, "out", None) or DEFAULT_OUT).expanduser()
    prepare_out(out)
    for seed in seeds:
        one = argparse.Namespace(**{**vars(args), "seeds": None, "out": str(out / f"seed-{seed}"),
                                    "overrides": {**(getattr(args, "overrides", None) or {}), "seed": seed}})
        _say(f"===== training seed {seed} =====")
        rc = run(one)
        if rc:
            return rc
    print()
    for line in summary_lines(aggregate(seed_runs(out))):
        print(line)
    print(f"report over seeds: {write_seeds_report(out)}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the demo (see the module doc); returns the exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if getattr(args, "seeds", None):
        from imgae_dx.errors import UserError

        try:
            seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
        except ValueError:
            raise UserError(f"--seeds {args.seeds!r}: give integers separated by commas, e.g. 0,1,2") from None
        return run_seeds(args, seeds)
    t_start = time.monotonic()
    out = Path(getattr(args, "out", None) or DEFAULT_OUT).expanduser()
    spec = replace(
        SAMPLE,
        **{k: int(v) for k, v in (("images_per_stage", getattr(args, "images_per_stage", None)),
                                  ("image_px", getattr(args, "image_px", None)),
                                  ("seed", getattr(args, "sample_seed", None))) if v is not None},
    )
    overrides = dict(getattr(args, "overrides", None) or {})
    sample_dir = getattr(args, "sample_dir", None)
    folder = Path(sample_dir).expanduser() if sample_dir else sample_cache_root() / spec.key()

    # validate the configuration before touching anything
    cfg = build_config(out, "http://127.0.0.1:1/data.zip", overrides)
    progress = cfg.logging.progress
    replaced = prepare_out(out)
    _say(f"ImgAE-Dx demo: {', '.join(cfg.models)} on a synthetic NIH-layout archive "
         f"({spec.stages} stages × {spec.images_per_stage} images), run folder {out}"
         + (" (previous demo run replaced)" if replaced else ""))

    # 1. sample archive
    t = time.monotonic()
    _say(f"[1/6] sample archive: {folder / 'data.zip'}")
    path, generated = ensure_sample(spec, folder, progress=progress)
    size_mb = path.stat().st_size / 1e6
    _say(f"      {'generated' if generated else 'reused'} ({size_mb:.1f} MB"
         + (f", {time.monotonic() - t:.0f} s)" if generated else ")"))

    from imgae_dx.cli.evaluate import summary_lines
    from imgae_dx.evaluation.evaluator import evaluate_run
    from imgae_dx.testing.range_server import RangeServer
    from imgae_dx.training.streaming_trainer import StreamingTrainer
    from imgae_dx.visualization.report import write_report

    server = RangeServer(path).start()
    try:
        # 2. the same range-reading path as the real archive
        cfg.source = server.url
        _say(f"[2/6] streaming it over loopback HTTP (byte ranges): {server.url}")

        # 3. training
        n_stages = spec.stages if cfg.stages == "all" else len(cfg.stages)
        floor = cfg.training.min_images_per_run
        _say(f"[3/6] training {', '.join(cfg.models)}: {n_stages} stages × "
             f"{cfg.training.epochs_per_stage} epochs"
             + (f" (the last stage more, to {floor} images in all)" if floor else "")
             + f", {cfg.data.image_size} px, batch "
             f"{cfg.training.batch_size}, view {cfg.data.view}, device {cfg.training.device}")
        trainer_log = logging.getLogger("imgae_dx.training")
        handler = _SayHandler(logging.INFO)
        trainer_log.addHandler(handler)
        trainer_log.setLevel(logging.INFO)
        trainer_log.propagate = False  # printed once, by _say, not also by the root handler
        try:
            result = StreamingTrainer(cfg, progress=progress).train_progressive_stages()
        finally:
            trainer_log.removeHandler(handler)
            trainer_log.setLevel(logging.NOTSET)
            trainer_log.propagate = True
        if result.interrupted:
            _say(f"stopped by signal {result.signal}: last.pt saved in {out}/checkpoints")
            return result.exit_code
        _say(f"      {result.step} steps, {result.images_seen} images in {result.wall_s:.0f} s; "
             f"best val loss: {result.best_val_text()}")

        # 4. evaluation
        t = time.monotonic()
        _say("[4/6] evaluating best.pt of each model on the held-out test patients")
        metrics = evaluate_run(out, progress=progress)
        _say(f"      done in {time.monotonic() - t:.0f} s")

        # 5. report
        _say("[5/6] writing the report")
        report = write_report(out)

        # 6. predict on held-out image files, as a user would on their own X-rays
        from imgae_dx.inference.job import predict_to_folder
        from imgae_dx.inference.predictor import load

        files = _heldout_images(path, out / "heldout", cfg.data.view, HELDOUT_IMAGES)
        _say(f"[6/6] predict: scoring {len(files)} held-out test images from image files "
             f"(imgae-dx predict {out / 'heldout'} --run {out} --out {out / 'predict'})")
        predictor = load(out, notify=lambda msg: _say("      " + msg), progress=progress)
        predicted = predict_to_folder([str(out / "heldout")], predictor, out / "predict", progress=progress)
        for line in predicted.lines(predictor.specificity):
            _say("      " + line)
        report = write_report(out)  # now with the link to the gallery
        served = server.counts()
    finally:
        server.stop()

    wall = time.monotonic() - t_start
    print()
    for line in summary_lines(metrics):
        print(line)
    best = metrics.best_by_auroc()
    if best is not None:
        name, m = best
        lo, hi = (float("nan") if v is None else v for v in m.auroc_ci)
        print(f"highest test AUROC (descriptive): {name}, {m.auroc:.3f} (95% CI {lo:.3f}–{hi:.3f})")
    print(f"streamed {served['bytes_sent'] / 1e6:.1f} MB in {served['requests']} range requests "
          f"from {path}")
    print(f"wall time: {wall:.0f} s")
    print(f"metrics: {out / 'eval' / 'metrics.json'}")
    print(f"report:  {report}")
    print(f"gallery: {out / 'predict' / 'index.html'}")
    print(f"re-evaluate later: imgae-dx evaluate --run {out} --source {path}")
    return 0
