"""The package layout as the design says: no module imports itself back through others (no cycle),
and no layer imports one above it.

    service.http  ->  service.usecases  ->  service.jobs  <->  service.backends

The runtime and its backends meet at modules, never in a cycle: backends implement the record
protocols ``service.jobs.records`` declares, and the runtime reads and writes blobs through
``service.backends.blobs``. ``worker`` sits beside ``service.http``, on the runtime;
``qalign_schema`` is under all.
The graph is read from the sources (every ``import``, at any depth, type-only imports included),
so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("qalign_core", "qalign_schema", "qalign_client", "qalign_cli", "service", "worker")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The project module ``name`` refers to (a module, or the module defining an imported name)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(name: str, path: Path) -> Iterator[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            owner = _owner(target)
            if owner is not None and owner != name:
                yield owner


GRAPH = {name: set(_imports(name, path)) for name, path in MODULES.items()}


def _external_imports(name: str) -> set[str]:
    path = MODULES[name]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
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


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_no_module_cycle():
    assert _cycles(GRAPH) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


#: Each layer and the project packages it must not import.
FORBIDDEN = {
    "qalign_schema": ("qalign_core", "qalign_client", "qalign_cli", "service", "worker"),
    "qalign_core": ("qalign_client", "qalign_cli", "service", "worker"),
    "qalign_client": ("qalign_core", "qalign_cli", "service", "worker"),
    "service.backends": ("service.http", "service.usecases", "worker"),
    "service.jobs": ("service.http", "service.usecases", "worker"),
    "service.usecases": ("service.http", "worker"),
    "service.http": ("worker",),
    "worker": ("service.http", "service.usecases"),
}

#: Each layer and the third-party packages it must not import (HTTP and queue stay at their edge).
FORBIDDEN_EXTERNAL = {
    "qalign_core": {"fastapi", "starlette", "celery", "redis", "boto3", "httpx"},
    "service.jobs": {"fastapi", "starlette", "celery"},
    "service.usecases": {"fastapi", "starlette", "celery"},
    "service.backends": {"fastapi", "starlette"},
}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_each_layer_imports_only_what_is_under_it(layer):
    wrong = sorted(
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        if _in(name, layer)
        for target in targets
        if any(_in(target, banned) for banned in FORBIDDEN[layer])
    )
    assert wrong == []


@pytest.mark.parametrize("layer", sorted(FORBIDDEN_EXTERNAL))
def test_http_and_queue_libraries_stay_at_their_edge(layer):
    wrong = sorted(
        f"{name} imports {package}"
        for name in MODULES
        if _in(name, layer)
        for package in _external_imports(name) & FORBIDDEN_EXTERNAL[layer]
    )
    assert wrong == []
