"""Exceptions users see. The CLI prints these as one clear message (no traceback) and exits 2."""

from __future__ import annotations


class UserError(Exception):
    """Base of every error caused by input, environment or the remote service, not a bug."""


class SourceError(UserError):
    """A data source cannot be opened or read (names the source, never a secret)."""


class ArchiveError(UserError):
    """The archive is malformed, truncated or a member fails its CRC."""


class CredentialsError(UserError):
    """Kaggle credentials are missing or invalid."""


class DatasetChangedError(SourceError):
    """The remote archive changed version (ETag) in the middle of a run."""


class MetadataError(UserError):
    """NIH metadata files are missing or malformed."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt, refused (unsafe payload) or of another run."""


class RunFolderError(UserError):
    """The run folder is unwritable or holds a different run."""


class StepMemoryError(UserError):
    """A train or validation step ran out of GPU or host memory at the configured sizes."""
