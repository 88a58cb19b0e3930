"""The package's shape, checked from the source (AST), so a regression fails the suite:

- no import cycles among xmr's modules, counting imports inside functions too;
- no function-local ``from xmr ... import`` (a local import is how a cycle hides);
- no module imports another module's ``_private`` names;
- commands (the top-level modules) are thin: the library never imports a command, and commands
  do not import each other (``xmr.cli`` dispatches by name).

``python tests/test_architecture.py`` prints the module graph (one line per module and what it
imports from xmr) and any cycle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "xmr"
COMMANDS = {
    "xmr.cli",
    "xmr.train",
    "xmr.eval",
    "xmr.train_ensemble",
    "xmr.extract",
    "xmr.prepare",
    "xmr.reproduce",
    "xmr.zeroshot",
    "xmr.embed",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The xmr module an imported dotted name lives in (a module, or a name inside one)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str) -> list[tuple[str, str, bool, int]]:
    """(imported module, imported name or '', inside a function?, line) for every xmr import."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, str, bool, int]] = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    target = _resolve(alias.name)
                    if target:
                        found.append((target, "", local, child.lineno))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                for alias in child.names:
                    target = _resolve(f"{base}.{alias.name}") or _resolve(base)
                    if target:
                        name = "" if target == f"{base}.{alias.name}" else alias.name
                        found.append((target, name, local, child.lineno))
            visit(child, inner)

    visit(tree, False)
    return [f for f in found if f[0] != module]


GRAPH = {m: _imports(m) for m in MODULES}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted({t for t, _, _, _ in GRAPH[v]}):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in sorted(GRAPH):
        if v not in index:
            strong(v)
    return out


def _is_package_init(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def test_the_graph_is_read() -> None:
    edges = {(m, t) for m, found in GRAPH.items() for t, *_ in found}
    assert ("xmr.data.datamodule", "xmr.data.store") in edges, "no edge datamodule -> store read"
    assert len(edges) > 50, f"only {len(edges)} import edges read"


def test_no_import_cycles() -> None:
    # A package __init__ that re-exports its modules is an edge from the package to its modules;
    # those do not form cycles unless a module imports its own package back.
    cycles = _cycles()
    assert not cycles, f"import cycles: {cycles}"


def test_no_function_local_xmr_imports() -> None:
    local = [
        f"{MODULES[m].relative_to(REPO)}:{line} imports {t}"
        for m, edges in GRAPH.items()
        for t, _, is_local, line in edges
        if is_local
    ]
    assert not local, "function-local imports of xmr modules:\n" + "\n".join(local)


def test_no_module_imports_private_names_of_another() -> None:
    private = [
        f"{MODULES[m].relative_to(REPO)}:{line} takes {name} from {t}"
        for m, edges in GRAPH.items()
        for t, name, _, line in edges
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not private, "\n".join(private)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m not in COMMANDS))
def test_the_library_never_imports_a_command(module: str) -> None:
    if _is_package_init(module) and module == "xmr":
        return
    bad = sorted({t for t, *_ in GRAPH[module] if t in COMMANDS})
    assert not bad, f"{module} (library) imports the command module(s) {bad}"


@pytest.mark.parametrize("command", sorted(COMMANDS & set(MODULES)))
def test_commands_do_not_import_each_other(command: str) -> None:
    bad = sorted({t for t, *_ in GRAPH[command] if t in COMMANDS})
    assert not bad, f"{command} imports the command module(s) {bad}: move what they share down"


if __name__ == "__main__":
    for m in sorted(GRAPH):
        targets = sorted({t for t, *_ in GRAPH[m]})
        print(f"{m:32s} -> {', '.join(targets) if targets else '-'}")
    cycles = _cycles()
    print("cycles:", cycles if cycles else "none")
    sys.exit(1 if cycles else 0)
