"""A test whose tool is missing skips on a developer's machine and fails in CI (.ci/run requires the
tools), so the web page's test cannot pass there by skipping."""

from __future__ import annotations

from pathlib import Path

import pytest
from testkit import REQUIRE_TOOLS, tool_missing

ROOT = Path(__file__).resolve().parents[1]


def test_a_missing_tool_skips_where_nothing_requires_it(monkeypatch):
    monkeypatch.delenv(REQUIRE_TOOLS, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no Chromium found"):
        tool_missing("no Chromium found", REQUIRE_TOOLS)
    monkeypatch.setenv(REQUIRE_TOOLS, "0")
    with pytest.raises(pytest.skip.Exception):
        tool_missing("no Chromium found", REQUIRE_TOOLS)


@pytest.mark.parametrize("value", ["1", "true", " YES "])
def test_a_missing_tool_fails_where_the_run_requires_it(monkeypatch, value):
    monkeypatch.setenv(REQUIRE_TOOLS, value)
    with pytest.raises(pytest.fail.Exception) as failed:
        tool_missing("no Chromium found", REQUIRE_TOOLS)
    assert "no Chromium found" in str(failed.value) and REQUIRE_TOOLS in str(failed.value)


def test_ci_requires_the_browser_and_runs_the_readme_command():
    lines = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    assert f"export {REQUIRE_TOOLS}=1" in commands
    assert commands[-1] == "exec ./scripts/test.sh"
