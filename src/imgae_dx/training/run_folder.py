"""Run-folder policy: what ``--out`` may hold, what a resume continues, what is written first.

* :func:`check_run_folder` — before anything is written: the folder must be writable; a folder
  holding another run (its ``config.yaml`` differs in a run-defining key) is refused; without
  ``--resume`` a folder that already holds checkpoints is refused (nothing is overwritten); with
  ``--resume`` every model of the run needs its ``last.pt``.
* :func:`check_split` — the run's split (``split.csv``, :mod:`imgae_dx.run.splits`) as the archive
  gives it now; a resumed run whose archive gives another split is refused.
* :func:`prepare_run_folder` — rank 0, once checks passed: creates the folders, removes temporary
  files a killed run left, writes ``config.yaml`` (secret-free) and ``split.csv``, and drops
  ``metrics.jsonl`` rows logged after the checkpoint the run resumes from.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from imgae_dx.config import Config, config_from_yaml_text
from imgae_dx.errors import CheckpointError, RunFolderError, UserError
from imgae_dx.run.identity import config_differences
from imgae_dx.run.records import truncate_after
from imgae_dx.run.splits import (
    SPLIT_FILE,
    SplitTable,
    read_split_table,
    split_differences,
    write_split_table,
)
from imgae_dx.utils.atomic import atomic_write_text, remove_stale_temps

log = logging.getLogger(__name__)


def redact_source(source: str) -> str:
    """Drop user info and query values from an http(s) source (signed URLs carry tokens)."""
    if not source.startswith(("http://", "https://")):
        return source
    parts = urlsplit(source)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    query = "&".join(f"{kv.split('=', 1)[0]}=REDACTED" for kv in parts.query.split("&") if kv)
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def config_dict(cfg: Config) -> dict[str, Any]:
    """The configuration as written to the run folder (JSON types, source redacted)."""
    d = cfg.model_dump(mode="json")
    d["source"] = redact_source(d["source"])
    return d


def config_yaml(cfg_dict: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(cfg_dict, sort_keys=False)


def check_writable(run_dir: Path) -> None:
    """Raise :class:`RunFolderError` unless ``run_dir`` can be created and written."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"--out {run_dir} exists and is not a folder; choose another --out")
    probe = run_dir
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    problem = None
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        problem = "permission denied"
    else:
        try:  # os.access says yes to root everywhere: probe with a temporary file (removed at once)
            with tempfile.TemporaryFile(dir=probe):
                pass
        except OSError as e:
            problem = e.strerror or type(e).__name__
    if problem:
        raise RunFolderError(
            f"--out {run_dir} is not writable ({probe}: {problem}); choose a folder you can write to"
        )


def check_run_folder(run_dir: Path, models: list[str], cfg_dict: dict[str, Any],
                     resume: bool) -> bool:
    """Refuse a folder holding another run. Returns True when there is a run to resume."""
    check_writable(run_dir)
    cfg_file = run_dir / "config.yaml"
    ck_dir = run_dir / "checkpoints"
    existing = sorted(ck_dir.glob("*/*.pt")) if ck_dir.is_dir() else []
    if cfg_file.is_file():
        try:
            old = config_dict(config_from_yaml_text(cfg_file.read_text(), str(cfg_file)))
        except UserError as e:
            raise RunFolderError(
                f"{run_dir} holds a config.yaml this version cannot read ({e}); choose another --out"
            ) from None
        diffs = config_differences(old, cfg_dict)
        if diffs:
            shown = "; ".join(diffs[:8]) + (f"; … ({len(diffs)} in all)" if len(diffs) > 8 else "")
            err = CheckpointError if resume else RunFolderError
            raise err(
                f"{run_dir} holds a different run (its config.yaml differs: {shown}); "
                + ("resume with the run's own settings" if resume else "")
                + " or choose another --out"
            )
    elif existing:
        raise RunFolderError(
            f"{run_dir} holds checkpoints but no config.yaml: not a run of this tool; choose another --out"
        )
    if not resume:
        if existing:
            raise RunFolderError(
                f"{run_dir} already holds a run ({len(existing)} checkpoint files); pass "
                "--resume to continue it or choose another --out (nothing was overwritten)"
            )
        return False
    present = [m for m in models if (ck_dir / m / "last.pt").is_file()]
    if not present:
        if existing:
            raise CheckpointError(
                f"--resume: {run_dir} holds checkpoints but no last.pt for {', '.join(models)}"
            )
        log.info("--resume: %s holds no checkpoint yet; starting a new run", run_dir)
        return False
    missing = sorted(set(models) - set(present))
    if missing:
        raise CheckpointError(
            f"--resume: {run_dir} has last.pt for {', '.join(sorted(present))} but not for "
            f"{', '.join(missing)}; resume with the models of the run (--model)"
        )
    return True


def check_split(run_dir: Path, index: Any, resuming: bool) -> SplitTable:
    """The run's split from ``index`` (its bound protocol); when resuming, it must equal the
    run's ``split.csv`` (a run from before split files has none: nothing to compare).

    Raises:
        CheckpointError: resuming against an archive that gives another split.
    """
    table = SplitTable.from_index(index)
    saved = read_split_table(run_dir) if resuming else None
    if saved is not None:
        diffs = split_differences(saved, table)
        if diffs:
            raise CheckpointError(
                f"--resume: the archive gives another split than the run's {run_dir / SPLIT_FILE} "
                f"({'; '.join(diffs)}); resume with the source the run started on")
    return table


def prepare_run_folder(run_dir: Path, yaml_text: str, resume_step: int | None,
                       split: SplitTable | None = None) -> None:
    """Create the folders, clear stale temporaries, write ``config.yaml`` and ``split`` (a
    resumed run that has one keeps it), trim ``metrics.jsonl`` to ``resume_step`` (everything,
    for a new run)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    for folder in [run_dir, *(run_dir / "checkpoints").iterdir()]:
        if folder.is_dir() and (n := remove_stale_temps(folder)):
            log.info("removed %d temp file(s) a killed run left in %s", n, folder)
    atomic_write_text(run_dir / "config.yaml", yaml_text)
    if split is not None and (resume_step is None or not (run_dir / SPLIT_FILE).is_file()):
        write_split_table(run_dir, split)
    truncate_after(run_dir / "metrics.jsonl", resume_step if resume_step is not None else -1)
