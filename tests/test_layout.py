"""The package's shape, checked: no import circle (type-only and function-local imports count),
the data package free of models and analysis, no function over 60 lines (the Typer command
functions of cli.py aside: their signatures are declarations), no module over 600 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "jadecli"
MAX_FUNCTION, MAX_MODULE = 60, 600


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The jadecli modules `name` imports, anywhere in its file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            # a package's __init__ importing its own modules is no circle
            if target and target != name and not target.startswith(name + "."):
                found.add(target)
    return found


def test_no_import_circle():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    state: dict[str, str] = {}  # grey while on the path, black when done

    def visit(node: str, path: list[str]) -> None:
        state[node] = "grey"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "grey":
                cycle = [*path[path.index(nxt) :], nxt]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "black"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_data_package_imports_no_model_and_no_analysis():
    known = modules()
    forbidden = ("jadecli.model", "jadecli.nets", "jadecli.objective", "jadecli.trainer")
    for name, path in known.items():
        if name.startswith("jadecli.data"):
            bad = [t for t in imports(name, path, known) if t.startswith(forbidden)]
            bad += [t for t in imports(name, path, known) if t.startswith("jadecli.analysis")]
            assert not bad, f"{name} imports {bad}"


def test_functions_and_modules_stay_readable():
    long_functions, long_modules = [], []
    for name, path in modules().items():
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_MODULE:
            long_modules.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            typer_command = name == "jadecli.cli" and any(
                isinstance(d, ast.Call) and getattr(d.func, "id", "") == "config_command"
                for d in node.decorator_list
            )
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION and not typer_command:
                long_functions.append(f"{name}.{node.name}: {length} lines")
    assert not long_functions, long_functions
    assert not long_modules, long_modules
