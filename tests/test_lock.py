"""The lock files are current: every requirement of pyproject.toml (and, through the installed metadata,
every requirement of those requirements) is met by a locked pin, and every pin carries a sha256.

Both files are installed with ``--require-hashes --no-deps`` (scripts/bootstrap.sh, the Dockerfile),
so a pin missing here would be missing at run time, not resolved: this test says so first, and names
the fix (``.venv/bin/python scripts/lock.py``)."""

from __future__ import annotations

import platform
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(
    r"(?P<name>[a-z0-9][a-z0-9._-]*)==(?P<version>[^\s;]+) --hash=sha256:(?P<digest>[0-9a-f]{64})"
)
STALE = "the lock is stale: run .venv/bin/python scripts/lock.py (docs/security.md)"
#: Markers are evaluated here and for the image's interpreter (Debian bookworm's and Ubuntu's 3.11
#: are older than 3.11.3, where e.g. redis needs async-timeout).
ENVIRONMENTS = [
    default_environment(),
    {**default_environment(), "python_full_version": "3.11.2", "python_version": "3.11"},
]

#: The tests that walk the installed metadata need the venv scripts/bootstrap.sh installs from the
#: lock, which it does on the lock's platform only (elsewhere it installs pyproject.toml's ranges).
on_the_locked_platform = pytest.mark.skipif(
    sys.version_info[:2] != (3, 11) or platform.machine() != "x86_64" or sys.platform != "linux",
    reason="the venv is installed from the lock on CPython 3.11, Linux x86_64 only",
)


def read_lock(name: str) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for number, line in enumerate((ROOT / name).read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = PIN.fullmatch(line)
        assert match, f"{name}:{number}: not 'name==version --hash=sha256:<64 hex>': {line!r}"
        assert match["name"] == canonicalize_name(match["name"]), f"{name}:{number}: name not normalized"
        assert match["name"] not in pins, f"{name}:{number}: {match['name']} pinned twice"
        pins[match["name"]] = Version(match["version"])
    return pins


def requirements() -> tuple[list[str], list[str]]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = data["project"]
    runtime = project["dependencies"] + project["optional-dependencies"]["service"]
    return runtime, runtime + project["optional-dependencies"]["test"] + data["build-system"]["requires"]


def applies(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    marker = requirement.marker
    return any(marker.evaluate({**env, "extra": extra}) for env in ENVIRONMENTS for extra in ("", *extras))


def unmet(roots: list[str], pins: dict[str, Version], unlocked: frozenset[str] = frozenset()) -> list[str]:
    """What ``roots`` need, transitively (the installed distributions' metadata), that ``pins`` lack or
    pin to a version the requirement refuses. Names in ``unlocked`` are followed but not pinned."""
    problems: list[str] = []
    seen: dict[str, set[str]] = {}
    queue = [(Requirement(r), "pyproject.toml") for r in roots]
    while queue:
        requirement, wanted_by = queue.pop()
        if not applies(requirement, seen.get(canonicalize_name(wanted_by), set())):
            continue
        name = canonicalize_name(requirement.name)
        if name not in unlocked:
            if name not in pins:
                problems.append(f"{name} ({wanted_by} wants {requirement}) is not locked")
                continue
            if not requirement.specifier.contains(pins[name], prereleases=True):
                problems.append(f"{name}=={pins[name]} does not meet {requirement} ({wanted_by})")
        extras = {canonicalize_name(e) for e in requirement.extras}
        if name in seen and extras <= seen[name]:
            continue
        seen.setdefault(name, set()).update(extras)
        for line in metadata.requires(name) or []:
            queue.append((Requirement(line), name))
    return problems


@pytest.fixture(scope="module")
def runtime_pins() -> dict[str, Version]:
    return read_lock("requirements.lock")


@pytest.fixture(scope="module")
def test_pins() -> dict[str, Version]:
    return read_lock("requirements-test.lock")


def test_every_pin_has_a_hash_and_the_image_set_is_part_of_the_test_set(runtime_pins, test_pins):
    assert runtime_pins and test_pins
    runtime_lines, test_lines = (
        {line for line in (ROOT / name).read_text().splitlines() if PIN.match(line)}
        for name in ("requirements.lock", "requirements-test.lock")
    )
    assert runtime_lines <= test_lines, f"pinned differently in the two files: {runtime_lines - test_lines}"


def test_torch_is_locked_for_the_tests_but_not_for_the_image(runtime_pins, test_pins):
    """The image installs a CUDA build of torch by version (its hash cannot be known offline); the test
    command installs the CPU wheel the lock names, and the lock says which torch it was resolved with."""
    assert "torch" not in runtime_pins
    assert "torch" in test_pins
    assert f"resolved with torch=={test_pins['torch']}" in (ROOT / "requirements.lock").read_text()


@on_the_locked_platform
def test_the_image_lock_meets_every_runtime_requirement(runtime_pins):
    runtime, _ = requirements()
    assert not unmet(runtime, runtime_pins, unlocked=frozenset({"torch"})), STALE


@on_the_locked_platform
def test_the_test_lock_meets_every_requirement_of_the_test_command(test_pins):
    _, everything = requirements()
    assert not unmet(everything, test_pins), STALE


@on_the_locked_platform
def test_the_venv_holds_what_is_locked(test_pins):
    """scripts/bootstrap.sh installed the lock (so the metadata this test walks is the locked one)."""
    wrong = {
        name: (str(pin), metadata.version(name))
        for name, pin in test_pins.items()
        if Version(metadata.version(name)).public != pin.public
    }
    assert not wrong, f"(locked, installed): {wrong}; run scripts/bootstrap.sh"


@on_the_locked_platform
def test_a_stale_lock_is_noticed(test_pins):
    """The check itself: a pin dropped or moved below a requirement is reported."""
    _, everything = requirements()
    without_httpx = {name: pin for name, pin in test_pins.items() if name != "httpx"}
    assert any(problem.startswith("httpx ") for problem in unmet(everything, without_httpx))
    old_fastapi = {**test_pins, "fastapi": Version("0.100")}
    assert any("fastapi==0.100 does not meet fastapi>=0.110" in p for p in unmet(everything, old_fastapi))
    old_anyio = {**test_pins, "anyio": Version("0.1")}  # needed by httpx and starlette, not by pyproject
    assert any(p.startswith("anyio==0.1 does not meet") for p in unmet(everything, old_anyio))


def _deploy_tools() -> list[str]:
    """scripts/lock.py's DEPLOY_TOOLS (the validators' versions), read from the script."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lock_script", ROOT / "scripts" / "lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.DEPLOY_TOOLS)


def test_the_tools_lock_pins_the_validators_with_hashes():
    """scripts/deploy-tools.sh installs requirements-tools.lock hash-checked: it holds DEPLOY_TOOLS at
    their versions (read_lock checks each line's hash)."""
    pins = read_lock("requirements-tools.lock")
    for tool in map(Requirement, _deploy_tools()):
        assert tool.specifier.contains(pins.get(canonicalize_name(tool.name), Version("0"))), (tool, STALE)


def test_the_tools_venv_holds_what_is_locked():
    """Where scripts/deploy-tools.sh has run, .venv-tools holds exactly the tools lock."""
    import json
    import subprocess

    pip = ROOT / ".venv-tools" / "bin" / "pip"
    if not pip.exists():
        pytest.skip(
            ".venv-tools is not installed here (scripts/deploy-tools.sh, which the full test command runs)"
        )
    listed = subprocess.run(
        [str(pip), "list", "--format", "json", "--disable-pip-version-check"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    installed = {canonicalize_name(p["name"]): Version(p["version"]) for p in json.loads(listed.stdout)}
    pins = read_lock("requirements-tools.lock")
    wrong = {
        name: (str(pin), str(installed.get(name))) for name, pin in pins.items() if installed.get(name) != pin
    }
    assert not wrong, f"(locked, installed): {wrong}; run scripts/deploy-tools.sh"
