"""One home per rule: the accepted image formats, the terminal statuses, the default model and the
``Mutation`` type are written out once; every other server-side module derives from that home.

Read from the source (the AST, so docstrings and comments may name the formats): a collection
literal holding two accepted formats or media types or all terminal statuses, a string that lists
the formats by name, or a second module-level definition is a second home.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from qalign_schema.jobs import TERMINAL_STATUSES
from qalign_schema.params import IMAGE_FORMAT_NAMES, IMAGE_FORMATS, IMAGE_MEDIA_TYPES

ROOT = Path(__file__).resolve().parents[2]
#: The server side, the library and their tools (qalign_client is another package with its own tests).
CHECKED = ("qalign_schema", "qalign_core", "qalign_cli", "service", "worker", "scripts", "bench")


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


RULES = {
    "image formats": ("qalign_schema/params.py", _formats),
    "terminal statuses": (
        "qalign_schema/jobs.py",
        lambda tree: any(found >= TERMINAL_STATUSES for found in _literal_collections(tree)),
    ),
    "default model": ("qalign_core/params.py", lambda tree: _defines(tree, "DEFAULT_MODEL")),
    "Mutation": ("service/jobs/transitions.py", lambda tree: _defines(tree, "Mutation")),
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_each_rule_is_written_out_in_its_home_only(rule):
    home, written_out = RULES[rule]
    homes = [path for path, tree in _sources() if written_out(tree)]
    assert homes == [home]
