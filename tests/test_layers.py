"""How the package's modules depend on each other: the replay engine at the bottom, imports
running one way, and the package importable before ``django.setup()``."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import django_durable

pytestmark = pytest.mark.engine

PACKAGE = Path(django_durable.__file__).parent
# The one module of the package below the engine: the exception hierarchy, which imports
# nothing of the package (its classes' qualified names are recorded in history).
BELOW_ENGINE = "django_durable.exceptions"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The absolute names ``node`` imports (with ``from x import y``, both x and x.y)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    if node.level:
        anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*anchor, *([node.module] if node.module else [])])
    else:
        base = node.module or ""
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def every_import(path: Path) -> Iterator[str]:
    """Every name ``path`` imports anywhere: at import time, under TYPE_CHECKING, in functions."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield from imported(path, node)


def import_time_imports(path: Path, body: list[ast.stmt] | None = None) -> Iterator[str]:
    """The names ``path`` imports when it is imported (not under TYPE_CHECKING, not in functions)."""
    for node in ast.parse(path.read_text()).body if body is None else body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield from imported(path, node)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            yield from import_time_imports(path, [*node.body, *node.orelse])
        elif isinstance(node, ast.If):
            yield from import_time_imports(path, node.orelse)
        elif isinstance(node, ast.Try):
            blocks = [node.body, node.orelse, node.finalbody, *(handler.body for handler in node.handlers)]
            yield from import_time_imports(path, [stmt for block in blocks for stmt in block])


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules its import runs. Importing ``a.b`` runs ``a`` first,
    except where ``a`` is the importer's own package (already running)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py") if "migrations" not in path.parts}
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        graph[module] = set()
        for name in import_time_imports(path):
            parts = name.split(".")
            for prefix in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):
                if prefix in modules and prefix != module and not module.startswith(prefix + "."):
                    graph[module].add(prefix)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while component[-1:] != [module]:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_the_engine_imports_nothing_of_the_package_but_the_exceptions():
    reaching_up = {
        f"{path.name}: {name}"
        for path in (PACKAGE / "engine").glob("*.py")
        for name in every_import(path)
        if name.split(".")[0] not in sys.stdlib_module_names
        and not name.startswith(("django_durable.engine.", BELOW_ENGINE))
        and name != "django_durable.engine"
    }
    assert not reaching_up, f"the engine must be given these, not import them: {sorted(reaching_up)}"


def test_the_exceptions_below_the_engine_import_nothing_of_the_package():
    names = set(every_import(PACKAGE / "exceptions.py"))
    assert all(name.split(".")[0] in sys.stdlib_module_names for name in names), names


def test_the_package_has_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


@pytest.mark.workers
def test_the_package_is_importable_before_django_setup():
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    probe = (
        "import sys, django_durable, django_durable.engine, django_durable.converter, django_durable.retry; "
        "from django.apps import apps; "
        "assert not apps.ready and 'django_durable.models' not in sys.modules; "
        "print(django_durable.Task.__name__, django_durable.WorkflowContext.__name__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        check=False,
        cwd=PACKAGE.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["Task", "WorkflowContext"]
