"""One home per rule: the accepted image formats, the terminal statuses, the AdaIN modes, the error
types, the webhook events and undelivered reasons, the URL length, the Idempotency-Key rule, the
longest Prefer wait, the webhook secret prefix, the version, how a problem's type URI is formed, the
weight dtypes, the default model and the ``Mutation`` type are written out once; every other module
(the client's included) derives from that home.

Read from the source (the AST, so docstrings and comments may name them): a collection literal
holding two accepted formats or media types, or all of an enumeration's values, a string that lists
the formats by name, a number or pattern of a limit, or a second module-level definition is a second
home. The page's static files are checked for limits written into them (it reads GET /limits).
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import pytest

from qalign_core.params import DTYPE_NAMES
from qalign_schema.jobs import ERROR_TYPES, TERMINAL_STATUSES, UNDELIVERED_REASONS, ErrorType
from qalign_schema.params import ADAIN_MODES, IMAGE_FORMAT_NAMES, IMAGE_FORMATS, IMAGE_MEDIA_TYPES
from qalign_schema.problems import PROBLEM_KINDS, ProblemKind
from qalign_schema.signing import SECRET_PREFIX
from qalign_schema.submission import EVENT_KINDS, IDEMPOTENCY_KEY_MAX_LENGTH, MAX_URL_LENGTH

ROOT = Path(__file__).resolve().parents[2]
#: The server side, the library, the client (it ships qalign_schema, so it shares the homes) and
#: their tools.
CHECKED = (
    "qalign_schema",
    "qalign_core",
    "qalign_cli",
    "qalign_client",
    "service",
    "worker",
    "scripts",
    "bench",
)


def _sources() -> Iterator[tuple[str, ast.Module]]:
    for package in CHECKED:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(encoding="utf-8"))


def _docstrings(tree: ast.Module) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            found.add(id(body[0].value))
    return found


def _literal_collections(tree: ast.Module) -> Iterator[set[str]]:
    """The string items of every tuple, list, set (Literal[...] included) and dict keys."""
    for node in ast.walk(tree):
        items = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None)
        if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)) and items:
            yield {
                item.value for item in items if isinstance(item, ast.Constant) and isinstance(item.value, str)
            }


def _strings(tree: ast.Module) -> Iterator[str]:
    """Every string constant but docstrings (f-strings' literal parts included)."""
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            yield node.value


def _defines(tree: ast.Module, name: str) -> bool:
    targets = [t for node in tree.body if isinstance(node, ast.Assign) for t in node.targets]
    targets += [node.target for node in tree.body if isinstance(node, ast.AnnAssign)]
    return any(isinstance(t, ast.Name) and t.id == name for t in targets)


def _formats(tree: ast.Module) -> bool:
    named = ", ".join(IMAGE_FORMAT_NAMES[:2])  # "PNG, JPEG": the start of any list of their names
    in_literals = any(
        len(found & set(IMAGE_FORMATS)) >= 2 or len(found & set(IMAGE_MEDIA_TYPES)) >= 2
        for found in _literal_collections(tree)
    )
    in_strings = any(
        named in text or sum(media_type in text for media_type in IMAGE_MEDIA_TYPES) >= 2
        for text in _strings(tree)
    )
    return in_literals or in_strings


def _holds_all(values: frozenset[str] | tuple[str, ...]):
    """A collection literal holding every one of ``values`` (an enumeration written out again)."""
    return lambda tree: any(found >= set(values) for found in _literal_collections(tree))


def _numbers(tree: ast.Module) -> Iterator[object]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            yield node.value


def _url_length(tree: ast.Module) -> bool:
    """The URL length as a bound: assigned, compared with, a ``max_length`` or a ``maxLength``."""

    def is_it(node: ast.expr | None) -> bool:
        return isinstance(node, ast.Constant) and node.value == MAX_URL_LENGTH

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(is_it(n) for n in [node.left, *node.comparators]):
            return True
        if isinstance(node, ast.keyword) and node.arg == "max_length" and is_it(node.value):
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and is_it(node.value):
            return True
        if isinstance(node, ast.Dict) and any(
            isinstance(k, ast.Constant) and k.value == "maxLength" and is_it(v)
            for k, v in zip(node.keys, node.values, strict=True)
        ):
            return True
    return False


def _idempotency_rule(tree: ast.Module) -> bool:
    """The key's pattern or its words, or its length beside the header's name."""
    strings = list(_strings(tree))
    named = any("Idempotency-Key" in text for text in strings)
    return any("[!-~]" in text or "printable ASCII" in text for text in strings) or (
        named and IDEMPOTENCY_KEY_MAX_LENGTH in _numbers(tree)
    )


def _defines_like(pattern: str):
    rule = re.compile(pattern)

    def found(tree: ast.Module) -> bool:
        targets = [t for node in tree.body if isinstance(node, ast.Assign) for t in node.targets]
        targets += [node.target for node in tree.body if isinstance(node, ast.AnnAssign)]
        return any(isinstance(t, ast.Name) and rule.fullmatch(t.id) for t in targets)

    return found


RULES = {
    "image formats": ("qalign_schema/params.py", _formats),
    "terminal statuses": (
        "qalign_schema/jobs.py",
        lambda tree: any(found >= TERMINAL_STATUSES for found in _literal_collections(tree)),
    ),
    "default model": ("qalign_core/params.py", lambda tree: _defines(tree, "DEFAULT_MODEL")),
    "Mutation": ("service/jobs/transitions.py", lambda tree: _defines(tree, "Mutation")),
    "AdaIN modes": ("qalign_schema/params.py", _holds_all(ADAIN_MODES)),
    "event kinds": ("qalign_schema/submission.py", _holds_all(EVENT_KINDS)),
    "undelivered reasons": ("qalign_schema/jobs.py", _holds_all(UNDELIVERED_REASONS)),
    "error types": (
        "qalign_schema/jobs.py",
        lambda tree: any(len(found & set(ERROR_TYPES)) >= 3 for found in _literal_collections(tree)),
    ),
    "URL length": ("qalign_schema/submission.py", _url_length),
    "Idempotency-Key rule": ("qalign_schema/submission.py", _idempotency_rule),
    "longest Prefer wait": ("qalign_schema/submission.py", _defines_like(r"MAX_\w*WAIT\w*")),
    "webhook secret prefix": (
        "qalign_schema/signing.py",
        lambda tree: any(text == SECRET_PREFIX for text in _strings(tree)),
    ),
    "version": ("qalign_schema/version.py", lambda tree: _defines(tree, "__version__")),
    "dtype names": ("qalign_core/params.py", _holds_all(DTYPE_NAMES)),
    "problem type URI": (
        "qalign_schema/problems.py",
        lambda tree: any(re.fullmatch(r"/problems/[a-z-]*", text) for text in _strings(tree)),
    ),
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_each_rule_is_written_out_in_its_home_only(rule):
    home, written_out = RULES[rule]
    homes = [path for path, tree in _sources() if written_out(tree)]
    assert homes == [home]


def test_error_types_are_every_type_the_service_produces():
    """``ErrorType`` lists exactly the types a job can fail with: every error type written where a
    job is failed (``fail(job, "<type>", ...)``, ``JobError(type=...)``, lifecycle.failure's
    ``return "<type>", detail``, a ``*_ERROR`` constant) is in it, and each of its types is written
    somewhere, so the list has no dead entries."""
    produced: dict[str, str] = {}
    for path, tree in _sources():
        if path.startswith("qalign_schema/"):
            continue
        for node in ast.walk(tree):
            candidates: list[ast.expr] = []
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name == "fail" and len(node.args) >= 2:
                    candidates.append(node.args[1])
                candidates += [kw.value for kw in node.keywords if name == "JobError" and kw.arg == "type"]
            elif isinstance(node, ast.FunctionDef) and node.name == "failure":
                returned = [n.value for n in ast.walk(node) if isinstance(n, ast.Return)]
                candidates += [v.elts[0] for v in returned if isinstance(v, ast.Tuple) and v.elts]
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                named = any(isinstance(t, ast.Name) and t.id.endswith("_ERROR") for t in targets)
                if named and isinstance(node.value, ast.Tuple) and node.value.elts:
                    candidates.append(node.value.elts[0])
            for candidate in candidates:
                if isinstance(candidate, ast.Constant) and isinstance(candidate.value, str):
                    produced.setdefault(candidate.value, path)
    declared = set(get_args(ErrorType))
    assert set(ERROR_TYPES) == declared, "ERROR_TYPES describes each ErrorType once"
    assert {kind: path for kind, path in produced.items() if kind not in declared} == {}
    assert declared - set(produced) == set(), "listed but never produced"


def test_problem_kinds_are_every_kind_the_api_answers_with():
    """mypy holds every problem the service builds to ``ProblemKind``; this holds ``ProblemKind`` to
    the service: each kind is written somewhere in it, so the closed set has no dead entries."""
    written = {text for path, tree in _sources() if path.startswith("service/") for text in _strings(tree)}
    assert set(PROBLEM_KINDS) == set(get_args(ProblemKind)), "PROBLEM_KINDS describes each kind once"
    assert set(PROBLEM_KINDS) - written == set(), "listed but never answered with"


def test_the_distributions_read_the_version_from_its_home():
    for name in ("pyproject.toml", "client/pyproject.toml"):
        config = tomllib.loads((ROOT / name).read_text(encoding="utf-8"))
        assert "version" not in config["project"] and "version" in config["project"]["dynamic"], name
        dynamic = config["tool"]["setuptools"]["dynamic"]["version"]
        assert dynamic == {"attr": "qalign_schema.version.__version__"}, name


#: Limits and choices written into the page instead of read from GET /limits.
PAGE_LIMITS = [
    r"\bMAX_[A-Z_]+\s*=",  # a JavaScript constant of a limit
    r"\b(?:eight|1 to 8|/ 8)\b",  # the appearance count in words
    r"image/(?:png|jpeg|webp)[\s,\"']+image/",  # the formats as a list of media types
    ", ".join(IMAGE_FORMAT_NAMES[:2]),  # the formats by name
    r'<input\b[^>]*\b(?:min|max)="\d+"',  # an input's range
    r"<option\b",  # a choice's values
    r'"succeeded",\s*"failed"',  # the terminal statuses
]


@pytest.mark.parametrize("name", ["index.html", "page.js"])
def test_the_page_reads_its_limits_from_the_api(name):
    text = (ROOT / "service" / "http" / "static" / name).read_text(encoding="utf-8")
    written = [pattern for pattern in PAGE_LIMITS if re.search(pattern, text)]
    assert written == [], f"{name} writes limits GET /limits gives"
