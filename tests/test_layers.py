"""The package's shape: layers without cycles, no private names across modules, short functions.

`make test` also runs import-linter's layers contract (setup.cfg); these checks read the same
source with :mod:`ast`, imports inside functions included, and cover what a layers contract does
not: cycles inside one layer, private names, function length and printing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dsb"
LAYERS = ("core", "io", "inference", "kaggle", "network", "training", "workflows", "api", "cli", "napari")
# Below: a layer may import these; siblings on one line may not import each other.
BELOW = {
    "core": set(),
    "io": {"core"},
    "inference": {"core", "io"},
    "kaggle": {"core", "io"},
    "network": {"core", "io", "inference", "kaggle"},
    "training": {"core", "io", "inference", "kaggle", "network"},
    "workflows": {"core", "io", "inference", "kaggle", "network", "training"},
    "api": {"core", "io", "inference", "kaggle", "network", "training", "workflows"},
    "cli": {"core", "io", "inference", "kaggle", "network", "training", "workflows", "api"},
    "napari": {"core", "io", "inference", "kaggle", "network", "training", "workflows", "api"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:``: they never run."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    return skip


def _imports(name: str, path: Path, modules) -> list[tuple[str, str, int]]:
    """``(imported module, imported name or "", line)`` for every dsb import of one module."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == "dsb"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "dsb":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub, "", node.lineno) if sub in modules else (base, alias.name, node.lineno))
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in BELOW else None


@pytest.fixture(scope="module")
def graph():
    modules = _modules()
    return modules, {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_module_lives_in_a_layer(graph):
    modules, _ = graph
    loose = [m for m in modules if m not in ("dsb", "dsb.__main__") and _layer(m) is None]
    assert not loose, f"modules outside the layers {LAYERS}: {loose}"


def test_layers_import_only_layers_below(graph):
    _, edges = graph
    wrong = [
        f"{src} imports {dst} (line {line})"
        for src, imports in edges.items()
        for dst, _, line in imports
        if _layer(src) and _layer(dst) and _layer(dst) != _layer(src) and _layer(dst) not in BELOW[_layer(src)]
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle(graph):
    modules, edges = graph
    successors = {m: {d for d, _, _ in edges[m] if d in modules and d != m} for m in modules}
    # Depth-first search for a back edge; the path to it is the cycle.
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(successors[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for module in sorted(modules):
        if module not in state and (cycle := visit(module)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_no_private_name_is_imported_from_another_module(graph):
    _, edges = graph
    private = [
        f"{src} imports {dst}.{name} (line {line})"
        for src, imports in edges.items()
        for dst, name, line in imports
        if name.startswith("_") and not name.endswith("__") and dst != src
    ]
    assert not private, "\n".join(private)


def test_no_function_body_over_100_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body
                if ast.get_docstring(node) is not None:
                    body = body[1:] or body
                lines = node.end_lineno - body[0].lineno + 1
                if lines > 100:
                    long.append(f"{path.relative_to(PACKAGE.parent)}: {node.name} ({lines} lines)")
    assert not long, "\n".join(long)


def test_only_the_cli_and_progress_print():
    printing = []
    allowed = {PACKAGE / "cli.py", PACKAGE / "core" / "progress.py"}
    for path in sorted(set(PACKAGE.rglob("*.py")) - allowed):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                printing.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not printing, "print outside the CLI and dsb.core.progress: " + ", ".join(printing)


def test_the_checks_see_a_violation(tmp_path):
    """The walker is not blind: a private import and a cycle in a throw-away package are found."""
    pkg = tmp_path / "dsb" / "core"
    pkg.mkdir(parents=True)
    (pkg.parent / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from dsb.core.b import _hidden\n")
    (pkg / "b.py").write_text("from dsb.core import a\n_hidden = 1\n")
    modules = {_module_name_in(p, tmp_path): p for p in tmp_path.rglob("*.py")}
    edges = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert ("dsb.core.b", "_hidden", 2) in edges["dsb.core.a"]
    assert ("dsb.core.a", "", 1) in edges["dsb.core.b"]


def _module_name_in(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
