"""The layout stays readable: no import cycles, short functions, modules of one sitting."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "daemon" / "credfresh"
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 500
LONG_FUNCTION_MARK = "# noqa: CFL001"
# Modules allowed past MAX_MODULE_LINES; docs/architecture.md says why for each.
LONG_MODULES: frozenset[str] = frozenset()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(tree: ast.AST, known: dict[str, Path]) -> set[str]:
    """Every credfresh module this one imports, lazily or for types: each is a dependency."""
    found: set[str] = set()
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in known else node.module)
        stack.extend(ast.iter_child_nodes(node))
    return {name for name in found if name in known}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    """No module reaches itself through imports, lazy and type-only ones included."""
    known = _modules()
    graph = {
        name: _imports(ast.parse(path.read_text()), known) - {name} for name, path in known.items()
    }
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle() -> None:
    """The walker is not vacuous: a two-module loop is reported."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_functions_fit_on_a_screen() -> None:
    """A function over 60 lines carries a `# noqa: CFL001` on its def line saying why."""
    long: list[str] = []
    for name, path in _modules().items():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES and LONG_FUNCTION_MARK not in lines[node.lineno - 1]:
                long.append(f"{name}.{node.name} ({length} lines)")
    assert long == []


def test_modules_fit_in_one_sitting() -> None:
    """A module over 500 lines is named in LONG_MODULES, with its reason in the code map."""
    long = [
        f"{name} ({count} lines)"
        for name, path in _modules().items()
        if (count := len(path.read_text().splitlines())) > MAX_MODULE_LINES
        and name not in LONG_MODULES
    ]
    assert long == []


#: What only `credfresh.context` may touch: the process environment, home, user and clocks.
#: (`os.path.expanduser` stays allowed for `~user`, which the password database answers.)
OUTSIDE_WORLD = frozenset(
    {
        "os.environ",
        "os.getenv",
        "os.geteuid",
        "os.path.expandvars",
        "Path.home",
        "datetime.now",
        "datetime.utcnow",
        "time.time",
        "time.monotonic",
    }
)


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def test_only_context_reads_the_outside_world() -> None:
    """Environment, home, euid and clocks are read through `Context`, never directly."""
    found = [
        f"{name}:{node.lineno} {_dotted(node)}"
        for name, path in _modules().items()
        if name != "credfresh.context" and not name.startswith("credfresh.devsts")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and _dotted(node) in OUTSIDE_WORLD
    ]
    assert found == []
