"""The strict type check is part of the test command (issue 18 item 7): configured once in pyproject,
run by scripts/test.sh between the lint and the tests, with no blanket ignores in the checked code."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ["qalign_core", "qalign_schema", "qalign_client", "service", "worker", "qalign_cli"]


def test_mypy_is_strict_with_the_pydantic_plugin_on_every_package() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mypy = config["tool"]["mypy"]
    assert mypy["strict"] is True
    assert "pydantic.mypy" in mypy["plugins"]
    assert sorted(mypy["packages"]) == sorted(CHECKED)
    test_extra = config["project"]["optional-dependencies"]["test"]
    assert any(re.match(r"mypy\b", requirement) for requirement in test_extra)


def test_the_test_command_type_checks_after_the_lint_and_before_the_tests() -> None:
    lines = [line.strip() for line in (ROOT / "scripts/test.sh").read_text().splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    lint = commands.index(".venv/bin/ruff check .")
    types = commands.index(".venv/bin/python -m mypy")
    tests = next(n for n, line in enumerate(commands) if line.startswith(".venv/bin/python -m pytest"))
    assert lint < types < tests


def test_every_type_ignore_names_its_error_code() -> None:
    blanket = re.compile(r"#\s*type:\s*ignore(?!\[)")
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for package in CHECKED
        for path in sorted((ROOT / package).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if blanket.search(line)
    ]
    assert found == []
