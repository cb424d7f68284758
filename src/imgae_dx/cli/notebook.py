"""``imgae-dx notebook [--out PATH]``: write the research notebook from the packaged templates."""

from __future__ import annotations

import argparse

from imgae_dx.notebooks.generator import DEFAULT_OUTPUT, StreamingNotebookGenerator


def run(args: argparse.Namespace) -> int:
    """Write ``notebooks/generated/streaming_research.ipynb`` (or ``--out PATH``); print the path."""
    out = args.out if getattr(args, "out", None) else DEFAULT_OUTPUT
    path = StreamingNotebookGenerator().write(out)
    print(f"wrote {path}")
    print(
        "open it in Jupyter or upload it to Google Colab; the first code cell holds the parameters "
        '(SOURCE = "sample" runs offline; "kaggle:nih-chest-xrays/data" streams the real dataset)'
    )
    return 0
