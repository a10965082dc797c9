"""The docs name only modules, attributes and files that exist, so they cannot drift from the layout.

Every dotted Python name in docs/*.md and README.md that starts with a project package
(``service.jobs.lifecycle``, ``worker.celery_app.ConsumeAfterModelLoad``, ``qalign_core.images``,
``service.app:app``) must resolve: its longest prefix that is a module exists, the next name is
defined at the top of that module, and a name after a class is defined in that class's body. Every
repository path the docs write (``service/jobs/runner.py``, ``tests/service/http/``) must exist.
And the module map of docs/architecture.md names every module of ``service/`` and ``worker/``, and
nothing else: a module added, moved or renamed fails here until the map says so.

Read from the sources (no import), so the check costs nothing and cannot run project code. Words a
reader means as prose are not names: a dotted name must start at a word boundary that is not part
of a path or a host (``docs/service.md``, ``qalign.example.com`` are not checked as modules).
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([*(ROOT / "docs").glob("*.md"), ROOT / "README.md"])
PACKAGES = ("service", "worker", "qalign_core", "qalign_schema", "qalign_client", "qalign_cli")
#: File endings: ``service.md`` is a file name, not the module ``service`` and its attribute ``md``.
FILE_SUFFIXES = {"md", "py", "txt", "toml", "yaml", "yml", "json", "lock", "sh", "html", "svg"}
FILE_SUFFIXES |= {"sqlite3", "log"}

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
#: ``package.a.b`` optionally followed by ``:attr`` (an entry point such as ``service.app:app``).
DOTTED = re.compile(
    rf"(?<![\w./:-])((?:{'|'.join(PACKAGES)})(?:\.{IDENT})+)(?::({IDENT}))?(?![\w-]|\.[A-Za-z0-9_]|/)"
)
#: A repository path under a project folder: ``service/jobs/runner.py``, ``tests/service/http/``.
ROOTS = (*PACKAGES, "tests", "scripts", "deploy", "bench", "client", "docs")
#: Folders of run outputs, not in the repository (.gitignore): a measurement names its JSON there.
NOT_TRACKED = ("bench/results/",)
PATH = re.compile(rf"(?<![\w./-])((?:{'|'.join(ROOTS)})/[A-Za-z0-9_./-]*[A-Za-z0-9_/])(?![\w*{{<])")


def _module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def _definitions(path: Path) -> tuple[set[str], dict[str, set[str]]]:
    """Names a module defines or imports at its top level, and the members of each class it defines."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    members: dict[str, set[str]] = {}

    def bound(node: ast.AST) -> set[str]:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return {node.name}
        if isinstance(node, ast.Assign):
            return {n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        if isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
            return {node.target.id}
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            return {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        return set()

    def top_level(body: list[ast.stmt]) -> list[ast.stmt]:
        """Statements of ``body``, with those under ``if``/``try`` (TYPE_CHECKING, optional imports)."""
        found: list[ast.stmt] = []
        for node in body:
            found.append(node)
            if isinstance(node, ast.If):
                found += top_level(node.body) + top_level(node.orelse)
            elif isinstance(node, ast.Try):
                found += top_level(node.body) + top_level(node.orelse) + top_level(node.finalbody)
                for handler in node.handlers:
                    found += top_level(handler.body)
        return found

    for node in top_level(tree.body):
        names |= bound(node)
        if isinstance(node, ast.ClassDef):
            members[node.name] = set().union(*(bound(child) for child in top_level(node.body)))
    return names, members


def _unresolved(dotted: str, attr: str | None) -> str | None:
    """Why ``dotted`` (with its ``:attr``) names nothing in the sources, or None when it resolves."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        path = _module_file(".".join(parts[:cut]))
        if path is not None:
            break
    else:  # pragma: no cover - the pattern only matches names that start with a package
        return "no such package"
    rest = parts[cut:] + ([attr] if attr else [])
    if not rest:
        return None
    names, members = _definitions(path)
    if rest[0] not in names:
        return f"{'.'.join(parts[:cut])} has no {rest[0]}"
    if len(rest) > 1 and rest[0] in members and rest[1] not in members[rest[0]]:
        cls = _class_node(path, rest[0])
        if cls is not None and not cls.bases:  # with bases the member may be inherited: not checked
            return f"{rest[0]} has no member {rest[1]}"
    return None


def _class_node(path: Path, name: str) -> ast.ClassDef | None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return next((n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == name), None)


def _dotted_names(text: str) -> list[tuple[str, str | None]]:
    found = []
    for match in DOTTED.finditer(text):
        dotted, attr = match.group(1), match.group(2)
        if dotted.rsplit(".", 1)[-1] in FILE_SUFFIXES:
            continue
        found.append((dotted, attr))
    return found


def _paths(text: str) -> list[str]:
    """Paths that are surely paths: a file with its ending, a folder with its slash, or three levels
    (``service/worker`` alone may be prose: "the service/worker split")."""
    found = []
    for match in PATH.finditer(text):
        path = match.group(1).rstrip(".")
        if path.startswith(NOT_TRACKED):
            continue
        if "." in path.rsplit("/", 1)[-1] or path.endswith("/") or path.count("/") >= 2:
            found.append(path)
    return found


def _problems(doc: Path) -> list[str]:
    text = doc.read_text(encoding="utf-8")
    problems = []
    for dotted, attr in dict.fromkeys(_dotted_names(text)):
        why = _unresolved(dotted, attr)
        if why is not None:
            problems.append(f"{dotted}{':' + attr if attr else ''}: {why}")
    for path in dict.fromkeys(_paths(text)):
        if not (ROOT / path).exists():
            problems.append(f"{path}: no such file or folder")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_the_docs_name_only_what_exists(doc):
    assert _problems(doc) == []


# --- the check itself


def test_a_renamed_module_class_or_file_is_found():
    text = (
        "`service.api.routes` and `service.jobs.store`; `service.jobs.lifecycle.NoSuchThing`; "
        "`service.backends.blobs.ObjectStore`; `service.jobs.lifecycle.Delivery.NOPE`; "
        "`service.app:nothing`; see service/api/intake.py and tests/service/api/."
    )
    dotted = _dotted_names(text)
    assert [(d, _unresolved(d, a)) for d, a in dotted] == [
        ("service.api.routes", "service has no api"),
        ("service.jobs.store", "service.jobs has no store"),
        ("service.jobs.lifecycle.NoSuchThing", "service.jobs.lifecycle has no NoSuchThing"),
        ("service.backends.blobs.ObjectStore", "service.backends.blobs has no ObjectStore"),
        ("service.jobs.lifecycle.Delivery.NOPE", None),  # an Enum: members may be inherited
        ("service.app", "service.app has no nothing"),
    ]
    assert _paths(text) == ["service/api/intake.py", "tests/service/api/"]
    assert not any((ROOT / path).exists() for path in _paths(text))


def test_what_exists_resolves_and_prose_is_not_a_name():
    text = (
        "`service.jobs.lifecycle` decides; `service.jobs.records.JobRecords.apply` writes; "
        "`worker.celery_app.ConsumeAfterModelLoad`; `uvicorn service.app:app`; "
        "`service.jobs.transitions`. See docs/service.md, service/jobs/lifecycle.py and "
        "tests/service/http/. The service.md file, https://qalign.example.com/service.x, "
        "the worker. Then the service/worker split, ./service/api and `service.jobs.*`."
    )
    assert [d for d, _ in _dotted_names(text)] == [
        "service.jobs.lifecycle",
        "service.jobs.records.JobRecords.apply",
        "worker.celery_app.ConsumeAfterModelLoad",
        "service.app",
        "service.jobs.transitions",
        "service.jobs",
    ]
    assert [_unresolved(d, a) for d, a in _dotted_names(text)] == [None] * 6
    assert _paths(text) == ["docs/service.md", "service/jobs/lifecycle.py", "tests/service/http/"]


# --- the module map of docs/architecture.md, both ways

ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _module_map(text: str) -> set[str]:
    """The files the map names (``service/jobs/lifecycle.py``), read from the code block that starts
    with ``service/``: a folder at the line's start or after two spaces sets where the names after it
    live; ``routes/`` and ``static/`` are named as folders only."""
    block = re.search(r"```\n(service/\n.*?)```", text, re.DOTALL)
    assert block is not None, "architecture.md has no module map (a code block starting with service/)"
    named: set[str] = set()
    top = sub = ""
    for line in block.group(1).splitlines():
        indent = len(line) - len(line.lstrip())
        first = line.split()[0] if line.split() else ""
        if indent == 0 and first.endswith("/"):
            top, sub = first, ""
        elif indent == 2 and first.endswith("/"):
            sub = first
        elif indent == 2:
            sub = ""
        for name in re.findall(r"(?<![\w./])(\w+\.py|\w+/)(?=\s|$)", line):
            if name.endswith("/") and name in (top, sub):
                continue
            named.add(top + sub + name)
    return named


def _modules_to_map() -> set[str]:
    """Every module of service/ (its top and its four layers) and worker/, without package markers."""
    found = set()
    for folder in (
        "service",
        "service/http",
        "service/usecases",
        "service/jobs",
        "service/backends",
        "worker",
    ):
        found |= {f"{folder}/{p.name}" for p in (ROOT / folder).glob("*.py") if p.name != "__init__.py"}
    return found


def test_the_architecture_module_map_is_the_layout():
    named = _module_map(ARCHITECTURE.read_text(encoding="utf-8"))
    assert sorted(p for p in named if not (ROOT / p).exists()) == [], "named but not in the sources"
    assert sorted(_modules_to_map() - named) == [], "in the sources but not in the map"


def test_the_module_map_reader():
    text = "```\nservice/\n  app.py   x    cli.py  y\n  http/    z\n    intake.py  w    static/ v\n```\n"
    assert _module_map(text) == {
        "service/app.py",
        "service/cli.py",
        "service/http/intake.py",
        "service/http/static/",
    }
