"""The research notebook: ``StreamingNotebookGenerator`` renders the packaged templates.

``imgae-dx notebook [--out PATH]`` writes ``notebooks/generated/streaming_research.ipynb``.
"""

from __future__ import annotations

from imgae_dx.notebooks.generator import (
    DEFAULT_PARAMETERS,
    NotebookParameter,
    StreamingNotebookGenerator,
    templates_dir,
)

__all__ = [
    "DEFAULT_PARAMETERS",
    "NotebookParameter",
    "StreamingNotebookGenerator",
    "templates_dir",
]
