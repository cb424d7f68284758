"""The packages and modules of ``imgae_dx`` import each other without cycles (docs/architecture.md,
"Imports go one way").

Two graphs:

* **packages** (``training`` → ``models``): every import in ``src/imgae_dx`` counts — module-level
  and inside functions — except those under ``if TYPE_CHECKING:`` (never executed). The seed's
  facade ``imgae_dx.streaming.__getattr__`` re-exports ``StreamingTrainer`` by name (a string,
  imported on first use): a contract, not an import.
* **modules** (``imgae_dx.inference.loading`` → ``imgae_dx.run.loader``), so that a circle inside
  one package fails too. ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else
  to ``a.b`` (its ``__init__``). Module-level imports (class bodies included: they run at import)
  must form no circle at all. Counting every import — inside functions and under
  ``if TYPE_CHECKING:`` too, the design's dependencies — adds no circle either, except the known
  ones listed in :data:`KNOWN_FUNCTION_LEVEL_CIRCLES`; there an import of one's own ancestor package
  (``from imgae_dx import __version__`` in a function) is no edge, since Python has run that
  package before the function can.
"""

from __future__ import annotations

import ast
from pathlib import Path

import imgae_dx

ROOT = Path(imgae_dx.__file__).parent

#: function-level circles that exist today (each a set of modules); a new one fails the test, and
#: one that is gone must be removed from here.
#: ``data.decode`` imports the DICOM readers inside ``decode_image`` (pydicom only for DICOM
#: members) while ``data.dicom`` takes ``ImageReadError``/``sniff_format`` from ``data.decode``.
KNOWN_FUNCTION_LEVEL_CIRCLES: list[frozenset[str]] = [
    frozenset({"imgae_dx.data.decode", "imgae_dx.data.dicom", "imgae_dx.data.dicom_frames"}),
]


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST, *, module_level: bool = False,
                  typing: bool = False) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of ``tree``: those under ``if TYPE_CHECKING:`` only with ``typing``,
    those inside functions only without ``module_level``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if module_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if not typing and isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _base(node: ast.ImportFrom, package: tuple[str, ...]) -> str:
    """The absolute module a ``from … import`` names (relative ones resolved against ``package``,
    the importing module's package)."""
    if node.level:
        base = package[: len(package) - node.level + 1]
        return ".".join(base + ((node.module,) if node.module else ()))
    return node.module or ""


def _imports(tree: ast.AST, parts: tuple[str, ...]) -> list[str]:
    """Absolute module names imported anywhere in ``tree`` outside ``if TYPE_CHECKING:``
    (``parts``: the importing module's dotted name, split)."""
    found: list[str] = []
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            found.extend(a.name for a in node.names)
        else:
            found.append(_base(node, parts[:-1]))
    return found


def _modules() -> dict[str, tuple[Path, tuple[str, ...]]]:
    """Dotted module name → (file, its package as parts); a package is named by its ``__init__``."""
    out = {}
    for f in sorted(ROOT.rglob("*.py")):
        parts = ("imgae_dx", *f.relative_to(ROOT).with_suffix("").parts)
        package = parts[:-1]
        name = ".".join(package) if parts[-1] == "__init__" else ".".join(parts)
        out[name] = (f, package)
    return out


def module_graph(*, every_import: bool = False) -> dict[str, set[str]]:
    """{module: the ``imgae_dx`` modules it imports}: module-level imports only; with
    ``every_import`` also those inside functions and under ``if TYPE_CHECKING:`` (then without
    edges to one's own ancestor packages)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, (f, package) in modules.items():
        targets: set[str] = set()
        tree = ast.parse(f.read_text(encoding="utf-8"))
        for node in _import_nodes(tree, module_level=not every_import, typing=every_import):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name in modules)
                continue
            base = _base(node, package)
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in modules:
                    targets.add(sub)
                elif base in modules:
                    targets.add(base)
        if every_import:
            targets = {t for t in targets if not name.startswith(t + ".")}
        graph[name] = targets - {name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one node (Tarjan): every import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def package_graph() -> dict[str, set[str]]:
    """{subpackage: subpackages it imports}, e.g. ``{"training": {"data", "models", ...}}``."""
    graph: dict[str, set[str]] = {}
    for f in sorted(ROOT.rglob("*.py")):
        parts = ("imgae_dx", *f.relative_to(ROOT).with_suffix("").parts)
        if len(parts) < 3:  # top-level modules (cli entry, errors, config) are not packages
            continue
        pkg = parts[1]
        for name in _imports(ast.parse(f.read_text(encoding="utf-8")), parts):
            p = name.split(".")
            if p[0] == "imgae_dx" and len(p) > 1 and p[1] != pkg and (ROOT / p[1]).is_dir():
                graph.setdefault(pkg, set()).add(p[1])
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def dfs(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := dfs(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := dfs(n)):
            return c
    return None


def test_no_import_cycle_between_packages():
    graph = package_graph()
    assert graph["training"] >= {"models", "data"}  # the walk sees real imports
    cycle = _cycle(graph)
    assert cycle is None, "import cycle between packages: " + " -> ".join(cycle or [])


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_lower_layers_do_not_reach_up():
    graph = package_graph()
    for low in ("models", "data", "streaming", "run", "utils"):
        assert not graph.get(low, set()) & {"training", "evaluation", "inference", "cli"}, low


def test_evaluation_imports_none_of_its_readers():
    """``eval/metrics.json``'s types live in ``evaluation``; the report, ``predict``/``export`` and
    the CLI read them, so ``evaluation`` may import none of those (nor the trainer)."""
    graph = package_graph()
    assert not graph.get("evaluation", set()) & {"visualization", "inference", "training", "cli"}


def test_no_import_cycle_between_modules_at_module_level():
    graph = module_graph()
    # the walk sees real module-level imports, inside packages and across them
    assert "imgae_dx.run.loader" in graph["imgae_dx.inference.loading"]
    assert "imgae_dx.inference.bundle_format" in graph["imgae_dx.inference.loading"]
    cycle = _cycle(graph)
    assert cycle is None, "import cycle between modules: " + " -> ".join(cycle or [])


def test_imports_inside_functions_and_for_typing_add_no_new_circle():
    graph = module_graph(every_import=True)
    assert "imgae_dx.inference" in graph["imgae_dx"]  # imgae_dx.load imports it inside the function
    found = set(circles(graph))
    new = [sorted(c) for c in found if c not in KNOWN_FUNCTION_LEVEL_CIRCLES]
    assert not new, f"import circles through imports inside functions: {new}"
    gone = [sorted(c) for c in KNOWN_FUNCTION_LEVEL_CIRCLES if c not in found]
    assert not gone, f"no longer circles: remove them from KNOWN_FUNCTION_LEVEL_CIRCLES: {gone}"


def test_circle_finders_find_circles_inside_a_package():
    graph = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}}
    assert _cycle(graph) == ["p.a", "p.b", "p.c", "p.a"]
    assert circles(graph) == [frozenset({"p.a", "p.b", "p.c"})]
    assert circles({"p.a": {"p.b"}, "p.b": set()}) == []


def test_module_graph_reads_relative_imports_and_skips_type_checking(tmp_path, monkeypatch):
    pkg = tmp_path / "imgae_dx"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import a\n")
    (pkg / "sub" / "a.py").write_text("from .b import thing\n")
    (pkg / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from imgae_dx.sub.a import x\n"
        "def f():\n    from imgae_dx.sub import a\n    import imgae_dx\n")
    monkeypatch.setitem(globals(), "ROOT", pkg)
    assert module_graph() == {"imgae_dx": set(), "imgae_dx.sub": {"imgae_dx.sub.a"},
                              "imgae_dx.sub.a": {"imgae_dx.sub.b"}, "imgae_dx.sub.b": set()}
    inner = module_graph(every_import=True)
    assert inner["imgae_dx.sub.b"] == {"imgae_dx.sub.a"}  # the function's and the typing import
    assert circles(inner) == [frozenset({"imgae_dx.sub.a", "imgae_dx.sub.b"})]
