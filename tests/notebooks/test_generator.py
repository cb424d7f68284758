"""StreamingNotebookGenerator: structure, the parameters cell, determinism, errors, the CLI."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import nbformat
import pytest

from imgae_dx import __version__
from imgae_dx.cli import main
from imgae_dx.errors import UserError
from imgae_dx.notebooks import DEFAULT_PARAMETERS, StreamingNotebookGenerator, templates_dir
from imgae_dx.notebooks.generator import NotebookTemplateError, parse_template

SECTIONS = ["intro", "setup", "streaming", "training", "evaluation", "visualization"]


def _param_cell(nb) -> nbformat.NotebookNode:
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1
    return cells[0]


def _params(nb) -> dict:
    """Execute nothing: read the parameter cell's assignments as literals."""
    out = {}
    for node in ast.parse(_param_cell(nb).source).body:
        assert isinstance(node, ast.Assign), ast.dump(node)
        out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


def test_structure_five_parts_in_order_and_valid():
    nb = StreamingNotebookGenerator().build()
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.metadata["imgae_dx"]["version"] == __version__
    order = list(dict.fromkeys(c.metadata["imgae_dx"]["section"] for c in nb.cells))
    assert order == SECTIONS
    # each of the five parts opens with a numbered markdown heading
    headings = [c.source.splitlines()[0] for c in nb.cells if c.cell_type == "markdown"]
    for n, title in enumerate(["Setup", "Streaming demo", "Training", "Evaluation", "Visualisation"], 1):
        assert f"## {n}. {title}" in headings
    # the parameter cell is the first code cell (papermill injects its overrides after it)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata["tags"]
    # every code cell is valid Python (magics are not used)
    for c in code:
        ast.parse(c.source)
    ids = [c.id for c in nb.cells]
    assert len(set(ids)) == len(ids)


def test_notebook_uses_the_real_apis():
    src = "\n".join(c.source for c in StreamingNotebookGenerator().build().cells if c.cell_type == "code")
    for needle in (
        "ColabStreamingSetup",
        "setup_kaggle_auth",
        "write_sample_archive",
        "StreamingNIHDataset",
        "tqdm",
        "StreamingTrainer",
        "train_progressive_stages",
        "evaluate_run",
        "plot_roc_pr",
        "CloudEvaluator",
        "reconstruction",
        "write_report",
    ):
        assert needle in src, needle


def test_parameter_cell_defaults_select_sample():
    params = _params(StreamingNotebookGenerator().build())
    assert list(params) == [p.name for p in DEFAULT_PARAMETERS]
    assert params["SOURCE"] == "sample"
    assert params["IMAGE_SIZE"] % 32 == 0
    assert set(params["MODELS"]) <= {"unet", "ra", "ae"}
    for name in ("STAGES", "EPOCHS_PER_STAGE", "TINY_MODELS", "SAMPLE_IMAGES_PER_STAGE"):
        assert name in params


def test_parameter_overrides_are_rendered_as_literals():
    gen = StreamingNotebookGenerator(
        {"SOURCE": "kaggle:nih-chest-xrays/data", "IMAGE_SIZE": 128, "EPOCHS_PER_STAGE": 10,
         "STAGES": ["images_001", "images_002"], "TINY_MODELS": False, "BATCH_SIZE": 64, "RUN_DIR": "runs/x 'quoted'"}
    )
    params = _params(gen.build())
    assert params["SOURCE"] == "kaggle:nih-chest-xrays/data"
    assert params["IMAGE_SIZE"] == 128
    assert params["EPOCHS_PER_STAGE"] == 10
    assert params["STAGES"] == ["images_001", "images_002"]
    assert params["TINY_MODELS"] is False
    assert params["BATCH_SIZE"] == 64
    assert params["RUN_DIR"] == "runs/x 'quoted'"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"SORCE": "sample"}, "unknown notebook parameter"),
        ({"IMAGE_SIZE": 100}, "multiple of 32"),
        ({"IMAGE_SIZE": "128"}, "IMAGE_SIZE must be like"),
        ({"MODELS": ["vae"]}, "MODELS must list"),
        ({"EPOCHS_PER_STAGE": True}, "EPOCHS_PER_STAGE must be like"),
        ({"SOURCE": object()}, "SOURCE must be like"),
        ({"SOURCE": None}, "SOURCE must be like"),
        ({"BATCH_SIZE": "8"}, "BATCH_SIZE must be like"),
        ({"BATCH_SIZE": 0}, "positive integer"),
        ({"TINY_MODELS": 1}, "TINY_MODELS must be like"),
    ],
)
def test_bad_parameters_raise_clear_errors(overrides, message):
    with pytest.raises(NotebookTemplateError, match=message):
        StreamingNotebookGenerator(overrides)


def test_deterministic_and_write(tmp_path: Path):
    a = StreamingNotebookGenerator().write(tmp_path / "a" / "nb.ipynb")
    b = StreamingNotebookGenerator().write(tmp_path / "b.ipynb")
    assert a.read_bytes() == b.read_bytes()
    nb = nbformat.read(a, as_version=4)
    nbformat.validate(nb)
    assert not list(a.parent.glob(".nb.ipynb.*")), "temporary file left behind"


def test_templates_are_packaged_and_parse():
    files = sorted(templates_dir().glob("*.py.tmpl"))
    assert [StreamingNotebookGenerator.section_name(f) for f in files] == SECTIONS
    for f in files:
        assert parse_template(f.read_text(), f.name)
    # the repository's notebooks/templates points at the packaged templates
    repo_link = Path(__file__).resolve().parents[2] / "notebooks" / "templates"
    if repo_link.exists():
        assert repo_link.resolve() == templates_dir().resolve()


def test_parse_template_cells_and_errors():
    cells = parse_template('# %% [markdown]\n# # Title\n#\n# text\n\n# %% tags=["a", "b"]\nx = 1\n\n')
    assert [(c.kind, c.source, c.tags) for c in cells] == [
        ("markdown", "# Title\n\ntext", ()),
        ("code", "x = 1", ("a", "b")),
    ]
    with pytest.raises(NotebookTemplateError, match="before the first"):
        parse_template("x = 1\n# %%\ny = 2\n")
    with pytest.raises(NotebookTemplateError, match="does not start with"):
        parse_template("# %% [markdown]\nplain text\n")
    with pytest.raises(NotebookTemplateError, match="cell header"):
        parse_template("# %% bogus\nx = 1\n")
    with pytest.raises(NotebookTemplateError, match="empty"):
        parse_template("# %%\n\n# %%\nx = 1\n")


def test_custom_templates_need_one_parameter_cell(tmp_path: Path):
    (tmp_path / "01_only.py.tmpl").write_text("# %%\nx = 1\n")
    with pytest.raises(NotebookTemplateError, match="exactly one cell tagged 'parameters'"):
        StreamingNotebookGenerator(templates=tmp_path).build()
    (tmp_path / "00_p.py.tmpl").write_text('# %% tags=["parameters"]\n{{ parameters }}\n')
    (tmp_path / "02_bad.py.tmpl").write_text("# %%\nprint('{{ nope }}')\n")
    with pytest.raises(NotebookTemplateError, match="unknown placeholder"):
        StreamingNotebookGenerator(templates=tmp_path).build()
    (tmp_path / "02_bad.py.tmpl").unlink()
    nb = StreamingNotebookGenerator(templates=tmp_path).build()
    assert [c.metadata["imgae_dx"]["section"] for c in nb.cells] == ["p", "only"]
    with pytest.raises(NotebookTemplateError, match="missing"):
        StreamingNotebookGenerator(templates=tmp_path / "nowhere").build()


def test_cli_default_path_and_out(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["notebook"]) == 0
    default = tmp_path / "notebooks" / "generated" / "streaming_research.ipynb"
    assert default.is_file()
    assert str(Path("notebooks/generated/streaming_research.ipynb")) in capsys.readouterr().out
    assert main(["notebook", "--out", str(tmp_path / "deep" / "x.ipynb")]) == 0
    assert json.loads((tmp_path / "deep" / "x.ipynb").read_text())["nbformat"] == 4


def test_cli_unwritable_out_is_a_user_error(tmp_path: Path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["notebook", "--out", str(blocker / "nb.ipynb")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write the notebook") and "--out" in err
    assert issubclass(NotebookTemplateError, UserError)
