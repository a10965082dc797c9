"""The docs' tables of settings, error types and problem types hold to the code, both ways: every
row names a real setting (or error or problem type) with the code's default (or meaning), and every
setting and type has a row. A setting added, renamed or given a new default fails here until the
docs say so."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qalign_schema.jobs import ERROR_TYPES
from qalign_schema.problems import PROBLEM_KINDS
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([*(ROOT / "docs").glob("*.md"), ROOT / "README.md"])
#: Environment variables the deployment docs list beside the settings, read by other programs.
NOT_SETTINGS = {"HF_HOME", "HF_HUB_OFFLINE", "REDIS_PASSWORD"}
#: A settings row: `QALIGN_NAME` or `NAME`, its default, its meaning.
SETTING_ROW = re.compile(r"^\| `(?:QALIGN_)?([A-Z][A-Z0-9_]*)` \| ([^|]*) \|", re.MULTILINE)


def _settings_tables() -> list[tuple[str, str, str]]:
    """(doc, NAME, default cell) for each row of a table whose header is name/setting | default."""
    rows = []
    for doc in DOCS:
        for table in re.split(r"\n(?!\|)", doc.read_text(encoding="utf-8")):
            lines = table.strip().splitlines()
            if not lines or not re.match(r"^\| *(name|setting|variable) *\| *default *\|", lines[0], re.I):
                continue
            rows += [(doc.name, name, cell.strip()) for name, cell in SETTING_ROW.findall(table)]
    return rows


def _plain_default(cell: str) -> str | None:
    """The default a cell states as a plain value (`100`, 0.5, `false`, `127.0.0.1`, `0` = off), or
    None when it is described in words (unset = ..., auto, a formula)."""
    match = re.fullmatch(r"`?([^`\s]+)`?(?: = .*| \(.*\))?", cell)
    if match is None or match.group(1) in ("unset", "auto", "empty") or "×" in cell:
        return None
    if re.fullmatch(r"[A-Z][A-Z0-9_]+", match.group(1)):  # another setting's value
        return None
    return match.group(1)


def _same(stated: str, default: object) -> bool:
    if isinstance(default, Path):
        return Path(stated) == default
    if isinstance(default, bool):
        return stated == str(default).lower()
    if isinstance(default, (int, float)):
        try:
            return float(stated) == float(default)
        except ValueError:
            return False
    return stated == str(default)


def test_every_settings_row_is_a_setting_with_its_default():
    fields = Settings.model_fields
    wrong: list[str] = []
    compared: list[str] = []
    for doc, name, cell in _settings_tables():
        field = name.lower()
        if name in NOT_SETTINGS:
            continue
        if field not in fields:
            wrong.append(f"{doc}: {name} is no setting")
            continue
        stated = _plain_default(cell)
        compared.append(name)
        if stated is not None and not _same(stated, fields[field].default):
            wrong.append(f"{doc}: {name} default {stated!r}, the code's is {fields[field].default!r}")
    assert wrong == []
    assert len(compared) > 50, "the tables' rows were read"


def test_every_setting_has_a_row():
    documented = {name.lower() for _, name, _ in _settings_tables()}
    assert sorted(set(Settings.model_fields) - documented) == []


def test_the_settings_tables_are_found():
    """The parser above reads the tables it should (a changed header would make it read none)."""
    docs = {doc for doc, _, _ in _settings_tables()}
    assert {"service.md", "deployment.md"} <= docs


def _table_rows(heading: str) -> list[tuple[str, str]]:
    """(name, meaning) of each row of the table under docs/service.md's ``heading``."""
    text = (ROOT / "docs" / "service.md").read_text(encoding="utf-8")
    section = text.split(heading, 1)[1].split("\n#", 1)[0]
    return re.findall(r"^\| `([a-z_-]+)` \| (.*) \|$", section, re.MULTILINE)


@pytest.mark.parametrize(
    ("heading", "meanings"), [("### Error types", ERROR_TYPES), ("### Problem types", PROBLEM_KINDS)]
)
def test_the_docs_table_is_the_codes(heading, meanings):
    expected = "\n".join(f"| `{name}` | {meaning} |" for name, meaning in meanings.items())
    found = "\n".join(f"| `{name}` | {meaning} |" for name, meaning in _table_rows(heading))
    assert found == expected, f"docs/service.md's table under {heading!r} should read:\n" + expected


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_error_types_the_docs_name_exist(doc):
    """`error.type = "x"` anywhere in the docs names a type the service produces."""
    named = re.findall(r'error\.type(?:`)? *= *`?"?([a-z_]+)', doc.read_text(encoding="utf-8"))
    assert sorted(set(named) - set(ERROR_TYPES)) == []
