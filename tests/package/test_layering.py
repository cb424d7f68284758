"""The packages of ``imgae_dx`` import each other without cycles (DESIGN.md, Layout).

Every import in ``src/imgae_dx`` counts — module-level and inside functions — except those under
``if TYPE_CHECKING:`` (never executed). The seed's facade ``imgae_dx.streaming.__getattr__``
re-exports ``StreamingTrainer`` by name (a string, imported on first use): a contract, not an import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import imgae_dx

ROOT = Path(imgae_dx.__file__).parent


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, parts: tuple[str, ...]) -> list[str]:
    """Absolute module names imported anywhere in ``tree`` outside ``if TYPE_CHECKING:``."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = parts[: len(parts) - node.level]
                found.append(".".join(base + ((node.module,) if node.module else ())))
            else:
                found.append(node.module or "")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
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
