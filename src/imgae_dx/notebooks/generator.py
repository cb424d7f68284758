"""Render the research notebook from the templates shipped in ``imgae_dx/notebooks/templates/``.

Templates are plain text in the "percent" cell format (as jupytext writes it), one file per part
of the notebook, read in file-name order::

    # %% [markdown]
    # ## 1. Setup
    # Text of a markdown cell, each line prefixed by "# ".

    # %%
    print("a code cell")

    # %% tags=["parameters"]
    {{ parameters }}

The cell tagged ``parameters`` (papermill's convention) is generated from
:data:`DEFAULT_PARAMETERS` plus the overrides given to :class:`StreamingNotebookGenerator`, so a
user (or papermill, or a test) changes the source, image size, stages, epochs and model widths in
one place. The output is deterministic: the same parameters give byte-identical notebooks.
The generator never reads credentials; the notebook asks for them at run time.
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from imgae_dx import __version__
from imgae_dx.config import MODEL_NAMES
from imgae_dx.data.datasets import DATASET_NAMES
from imgae_dx.errors import UserError
from imgae_dx.utils.atomic import atomic_write_text

DEFAULT_OUTPUT = Path("notebooks") / "generated" / "streaming_research.ipynb"
PARAMETERS_PLACEHOLDER = "{{ parameters }}"
VERSION_PLACEHOLDER = "{{ version }}"
SAMPLE_SOURCE = "sample"


@dataclass(frozen=True)
class NotebookParameter:
    """One variable of the notebook's parameter cell: ``NAME = default  # help``."""

    name: str
    default: Any
    help: str


DEFAULT_PARAMETERS: tuple[NotebookParameter, ...] = (
    NotebookParameter(
        "SOURCE", SAMPLE_SOURCE,
        '"sample" (synthetic NIH-layout archive, offline) or "kaggle:nih-chest-xrays/data"; '
        "also an https:// archive URL, a local data.zip or an extracted folder",
    ),
    NotebookParameter(
        "DATASET", None,
        'None (NIH when the source holds its metadata, else detected), "nih", "zhanglab", "rsna" or "folder"; '
        'with SOURCE="sample" the layout of the synthetic archive (None: nih)',
    ),
    NotebookParameter("SAMPLE_DIR", "sample_data", 'where SOURCE="sample" writes data.zip'),
    NotebookParameter("SAMPLE_IMAGES_PER_STAGE", 120, "sample archive: images per images_NNN stage "
                      "(zhanglab, rsna, folder: SAMPLE_IMAGES_PER_STAGE × SAMPLE_STAGES images)"),
    NotebookParameter("SAMPLE_STAGES", 2, "sample archive: number of stages"),
    NotebookParameter("SAMPLE_IMAGE_PX", 256, "sample archive: stored image size (the real data: 1024)"),
    NotebookParameter("STAGES", "all", '"all" or a list such as ["images_001", "images_002"] '
                      '(other datasets: ["part_001", …])'),
    NotebookParameter("MODELS", ["unet", "ra"], "any of unet, ra, ae (trained from one stream)"),
    NotebookParameter("IMAGE_SIZE", 64, "model resolution in pixels, divisible by 32 (128 on Kaggle)"),
    NotebookParameter("EPOCHS_PER_STAGE", 1, "epochs over each stage's train split"),
    NotebookParameter("BATCH_SIZE", None, "images per batch; None: what setup_gpu_optimization plans (16 on CPU)"),
    NotebookParameter("TINY_MODELS", None, "narrow models for CPU / sample runs; None: tiny when SOURCE is sample"),
    NotebookParameter("DEVICE", "auto", "auto | cpu | cuda"),
    NotebookParameter("RUN_DIR", None, "run folder; None: runs/notebook, or Google Drive on Colab"),
    NotebookParameter("SEED", 0, "seed of splits, order and weights"),
    NotebookParameter("DEMO_IMAGES", 16, "images shown by the streaming demo"),
    NotebookParameter("BOOTSTRAP", 200, "bootstrap resamples for the 95% intervals"),
    NotebookParameter("PIP_SPEC", "imgae-dx", "what to pip-install when imgae_dx is missing (Colab)"),
)


class NotebookTemplateError(UserError):
    """A notebook template is malformed or a parameter value cannot be rendered."""


@dataclass(frozen=True)
class _TemplateCell:
    kind: str  # "code" | "markdown"
    source: str
    tags: tuple[str, ...]


_HEADER = re.compile(r"^# %%(?P<rest>.*)$")


def templates_dir() -> Path:
    """Folder of the packaged templates (inside the installed package)."""
    return Path(str(resources.files("imgae_dx") / "notebooks" / "templates"))


def _parse_header(rest: str, where: str) -> tuple[str, tuple[str, ...]]:
    rest = rest.strip()
    kind = "code"
    if rest.startswith("[markdown]") or rest.startswith("[md]"):
        kind = "markdown"
        rest = rest.split("]", 1)[1].strip()
    tags: tuple[str, ...] = ()
    if rest:
        m = re.fullmatch(r"tags\s*=\s*(\[.*\])", rest)
        if not m:
            raise NotebookTemplateError(
                f"{where}: cannot read cell header '# %% {rest}'; "
                'allowed: "# %%", "# %% [markdown]", \'# %% tags=["name"]\''
            )
        try:
            value = json.loads(m.group(1))
        except json.JSONDecodeError as e:
            raise NotebookTemplateError(f"{where}: tags must be a JSON list of strings ({e})") from None
        if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
            raise NotebookTemplateError(f"{where}: tags must be a JSON list of strings")
        tags = tuple(value)
    return kind, tags


def parse_template(text: str, name: str = "<template>") -> list[_TemplateCell]:
    """Split percent-format text into cells (markdown lines lose their ``# `` prefix)."""
    cells: list[_TemplateCell] = []
    header: tuple[str, tuple[str, ...]] | None = None
    body: list[str] = []

    def flush() -> None:
        if header is None:
            if any(line.strip() for line in body):
                raise NotebookTemplateError(f"{name}: text before the first '# %%' cell marker")
            return
        kind, tags = header
        lines = list(body)
        while lines and not lines[-1].strip():
            lines.pop()
        while lines and not lines[0].strip():
            lines.pop(0)
        if kind == "markdown":
            out = []
            for i, line in enumerate(lines):
                if line == "#":
                    out.append("")
                elif line.startswith("# "):
                    out.append(line[2:])
                else:
                    raise NotebookTemplateError(
                        f"{name}: markdown line {i + 1} of a cell does not start with '# ': {line!r}"
                    )
            lines = out
        if not lines:
            raise NotebookTemplateError(f"{name}: empty {kind} cell")
        cells.append(_TemplateCell(kind, "\n".join(lines), tags))

    for lineno, line in enumerate(text.splitlines(), 1):
        m = _HEADER.match(line)
        if m:
            flush()
            header = _parse_header(m.group("rest"), f"{name}:{lineno}")
            body = []
        else:
            body.append(line)
    flush()
    return cells


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # double quotes, as people write them
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return repr(value)


def _render_value(name: str, value: Any) -> str:
    text = _literal(value)
    try:
        back = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        back = object()
    if back != value:
        raise NotebookTemplateError(
            f"notebook parameter {name}={value!r} is not a plain literal "
            "(use str, int, float, bool, None, or lists of them)"
        )
    return text


_OPTIONAL_TYPES: dict[str, type] = {"BATCH_SIZE": int, "TINY_MODELS": bool, "RUN_DIR": str, "DATASET": str}


def _check_value(param: NotebookParameter, value: Any) -> None:
    default = param.default
    if value is None:
        ok = default is None
    elif default is None:  # optional parameters: None means "choose automatically"
        want = _OPTIONAL_TYPES.get(param.name)
        ok = want is None or (isinstance(value, want) and not (want is int and isinstance(value, bool)))
    elif isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif param.name == "STAGES":
        ok = isinstance(value, str | list)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise NotebookTemplateError(
            f"notebook parameter {param.name} must be like {default!r} "
            f"({type(default).__name__}), got {value!r}"
        )
    if param.name == "BATCH_SIZE" and value is not None and value < 1:
        raise NotebookTemplateError(f"BATCH_SIZE must be a positive integer or None, got {value}")
    if param.name == "IMAGE_SIZE" and (value < 32 or value % 32):
        raise NotebookTemplateError(f"IMAGE_SIZE must be a multiple of 32 (e.g. 64, 128), got {value}")
    if param.name == "DATASET" and value is not None and value not in DATASET_NAMES:
        raise NotebookTemplateError(f"DATASET must be None or one of {', '.join(DATASET_NAMES)}; got {value!r}")
    if param.name == "MODELS":
        bad = [m for m in value if m not in MODEL_NAMES]
        if bad or not value:
            raise NotebookTemplateError(f"MODELS must list some of {', '.join(MODEL_NAMES)}; got {value!r}")


class StreamingNotebookGenerator:
    """Build the five-part research notebook (setup, streaming demo, training, evaluation,
    visualisation) from templates, with a papermill-style ``parameters`` cell.

    Args:
        parameters: overrides of :data:`DEFAULT_PARAMETERS` by name, e.g.
            ``{"SOURCE": "kaggle:nih-chest-xrays/data", "IMAGE_SIZE": 128, "EPOCHS_PER_STAGE": 10}``.
            Unknown names and wrong types raise :class:`NotebookTemplateError`.
        templates: folder of ``*.py.tmpl`` templates; default: the packaged ones.
    """

    def __init__(
        self,
        parameters: Mapping[str, Any] | None = None,
        templates: str | os.PathLike[str] | None = None,
    ) -> None:
        self.templates = Path(templates) if templates is not None else templates_dir()
        known = {p.name: p for p in DEFAULT_PARAMETERS}
        given = dict(parameters or {})
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise NotebookTemplateError(
                f"unknown notebook parameter(s) {', '.join(unknown)}; known: {', '.join(known)}"
            )
        for name, value in given.items():
            _check_value(known[name], value)
        self.parameters: dict[str, Any] = {p.name: given.get(p.name, p.default) for p in DEFAULT_PARAMETERS}

    # ------------------------------------------------------------------------------ templates
    def template_files(self) -> list[Path]:
        """The template files, in notebook order (sorted by name)."""
        if not self.templates.is_dir():
            raise NotebookTemplateError(
                f"notebook templates folder {self.templates} is missing; reinstall imgae-dx "
                "(the templates ship inside the package under imgae_dx/notebooks/templates)"
            )
        files = sorted(self.templates.glob("*.py.tmpl"))
        if not files:
            raise NotebookTemplateError(f"no *.py.tmpl notebook templates in {self.templates}")
        return files

    @staticmethod
    def section_name(path: Path) -> str:
        """``03_training.py.tmpl`` → ``training``."""
        stem = path.name.removesuffix(".py.tmpl")
        return stem.split("_", 1)[1] if "_" in stem and stem.split("_", 1)[0].isdigit() else stem

    def parameters_source(self) -> str:
        """Source of the ``parameters`` cell: one ``NAME = value  # help`` line per parameter."""
        lines = ["# Parameters (papermill: tag 'parameters'). Change them here, then run all cells."]
        for p in DEFAULT_PARAMETERS:
            lines.append(f"{p.name} = {_render_value(p.name, self.parameters[p.name])}  # {p.help}")
        return "\n".join(lines)

    # ---------------------------------------------------------------------------------- build
    def build(self) -> Any:
        """The notebook as an ``nbformat`` v4 node (validated)."""
        nbformat = _nbformat()
        nb = nbformat.v4.new_notebook()
        nb.metadata = {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
            "accelerator": "GPU",
            "colab": {"provenance": [], "toc_visible": True},
            "imgae_dx": {"version": __version__, "generator": "StreamingNotebookGenerator"},
        }
        n_param_cells = 0
        for path in self.template_files():
            section = self.section_name(path)
            for i, tc in enumerate(parse_template(path.read_text(encoding="utf-8"), path.name)):
                source = tc.source.replace(VERSION_PLACEHOLDER, __version__)
                if "parameters" in tc.tags:
                    if source.strip() != PARAMETERS_PLACEHOLDER:
                        raise NotebookTemplateError(
                            f"{path.name}: the parameters cell must contain only {PARAMETERS_PLACEHOLDER}"
                        )
                    source = self.parameters_source()
                    n_param_cells += 1
                if "{{" in source:
                    raise NotebookTemplateError(
                        f"{path.name}: unknown placeholder in cell {i + 1}: "
                        f"{source[source.index('{{'):][:40]!r}"
                    )
                meta: dict[str, Any] = {"imgae_dx": {"section": section}}
                if tc.tags:
                    meta["tags"] = list(tc.tags)
                cell_id = f"{section}-{i:02d}"
                if tc.kind == "markdown":
                    cell = nbformat.v4.new_markdown_cell(source, metadata=meta, id=cell_id)
                else:
                    cell = nbformat.v4.new_code_cell(source, metadata=meta, id=cell_id)
                nb.cells.append(cell)
        if n_param_cells != 1:
            raise NotebookTemplateError(
                f"the templates must hold exactly one cell tagged 'parameters', found {n_param_cells}"
            )
        nbformat.validate(nb)
        return nb

    def to_json(self) -> str:
        """The notebook as JSON text (deterministic)."""
        return _nbformat().writes(self.build()) + "\n"

    def write(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write the notebook atomically; default ``notebooks/generated/streaming_research.ipynb``.

        Returns the path written. Raises :class:`UserError` when the folder cannot be written.
        """
        out = Path(path) if path is not None else DEFAULT_OUTPUT
        text = self.to_json()
        try:
            atomic_write_text(out, text)
        except OSError as e:
            raise UserError(
                f"cannot write the notebook to {out}: {e.strerror or e}; choose another --out PATH"
            ) from None
        return out


def _nbformat() -> Any:
    try:
        import nbformat
    except ImportError:
        raise UserError(
            "generating notebooks needs nbformat: pip install 'imgae-dx[notebooks]' (or nbformat)"
        ) from None
    return nbformat
