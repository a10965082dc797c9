"""Regenerates the lock files from pyproject.toml with pip's own resolver (offline-capable: pip reads
whatever indexes and --find-links its configuration names).

    .venv/bin/python scripts/lock.py

It resolves with the interpreter running it, and also with /usr/bin/python3.11 where that is a
different interpreter (Debian's and Ubuntu's: the image's), or with the ones named by --python.

Writes, for CPython 3.11 on Linux x86_64 (the test machines and the image):

- requirements-test.lock: everything the test command installs ([project].dependencies, the "service"
  and "test" extras, the build backend), torch's CPU wheel included, one sha256 per pin;
- requirements.lock: what the image installs: the part of that resolution that [project].dependencies
  and the "service" extra need, *without torch* (the image takes torch, a CUDA build, from the PyTorch
  index by version: its hash cannot be known offline; see docs/security.md);
- requirements-tools.lock: the Kubernetes validators the test command installs into .venv-tools/
  (scripts/deploy-tools.sh), DEPLOY_TOOLS and what they need, resolved on their own (checkov pins
  libraries the project also uses, at other versions) with the interpreter running this script.

How: ``pip install --dry-run --ignore-installed --report`` resolves the whole set with torch pinned to
``--torch`` (the report gives each chosen file's version and sha256); the image's subset is the
closure of its requirements over the resolved metadata (markers evaluated, extras followed), so both
files agree on every version. With several interpreters (markers such as
``python_full_version < "3.11.3"`` differ between Debian's 3.11.2 and a newer 3.11) the union is kept,
and a package resolved to two versions is an error.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_LOCK = ROOT / "requirements.lock"
TEST_LOCK = ROOT / "requirements-test.lock"
TOOLS_LOCK = ROOT / "requirements-tools.lock"
DEFAULT_TORCH = "2.13.0"
#: The deploy validators' versions: their one home (scripts/deploy-tools.sh installs the lock).
DEPLOY_TOOLS = ["checkov==3.3.30", "kubernetes-validate==1.37.0"]


def project_requirements() -> tuple[list[str], list[str]]:
    """(the image's requirements, the test command's requirements), as written in pyproject.toml."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = data["project"]
    runtime = project["dependencies"] + project["optional-dependencies"]["service"]
    test = runtime + project["optional-dependencies"]["test"] + data["build-system"]["requires"]
    return runtime, test


def resolve(
    python: str, requirements: list[str], torch: str | None
) -> tuple[dict[str, dict], dict[str, str]]:
    """pip's resolution by ``python`` (with torch pinned to ``torch`` unless None): {name: report item},
    and that interpreter's marker environment."""
    with tempfile.TemporaryDirectory() as work:
        reqs, report = Path(work, "requirements.txt"), Path(work, "report.json")
        pinned = [f"torch=={torch}"] if torch is not None else []
        reqs.write_text("\n".join([*pinned, *requirements]) + "\n")
        subprocess.run(
            [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
             "--report", str(report), "-r", str(reqs)],
            check=True,
        )  # fmt: skip
        items = json.loads(report.read_text())["install"]
        environment = json.loads(
            subprocess.run(
                [python, "-c", "import json, pip._vendor.packaging.markers as m; "
                 "print(json.dumps(m.default_environment()))"],
                check=True, capture_output=True, text=True,
            ).stdout
        )  # fmt: skip
    return {canonicalize_name(item["metadata"]["name"]): item for item in items}, environment


def resolve_union(
    pythons: list[str], requirements: list[str], torch: str | None
) -> tuple[dict[str, dict], list[dict[str, str]]]:
    """The union of each interpreter's resolution (a package resolved to two versions is an error),
    and their marker environments."""
    items: dict[str, dict] = {}
    environments: list[dict[str, str]] = []
    for python in pythons:
        resolved, environment = resolve(python, requirements, torch)
        environments.append(environment)
        for name, item in resolved.items():
            if name in items and line(items[name]) != line(item):
                sys.exit(f"{name}: {line(items[name])} with one interpreter, {line(item)} with {python}")
            items[name] = item
    return items, environments


def closure(roots: list[str], items: dict[str, dict], environments: list[dict[str, str]]) -> set[str]:
    """Names of every distribution ``roots`` need in any of ``environments``, following the resolved
    metadata (Requires-Dist, with the extras asked for)."""
    needed: dict[str, set[str]] = {}
    queue = [Requirement(r) for r in roots]
    while queue:
        requirement = queue.pop()
        name = canonicalize_name(requirement.name)
        if name not in items:
            continue  # its marker excluded it from every resolution
        extras = {canonicalize_name(e) for e in requirement.extras}
        if name in needed and extras <= needed[name]:
            continue
        needed.setdefault(name, set()).update(extras)
        for line in items[name]["metadata"].get("requires_dist", []):
            child = Requirement(line)
            if child.marker is None or any(
                child.marker.evaluate({**env, "extra": extra})
                for env in environments
                for extra in ("", *needed[name])
            ):
                queue.append(child)
    return set(needed)


def line(item: dict) -> str:
    archive = item["download_info"]["archive_info"]
    # pip >= 23.1 reports "hashes"; older ones (Debian's 23.0) a single "hash": "sha256=..."
    digest = archive["hashes"]["sha256"] if "hashes" in archive else archive["hash"].split("=", 1)[1]
    version = item["metadata"]["version"].split("+")[0]  # torch's "+cpu" build tag: pinned by hash
    return f"{canonicalize_name(item['metadata']['name'])}=={version} --hash=sha256:{digest}"


def write(path: Path, header: str, names: set[str], items: dict[str, dict]) -> None:
    body = "\n".join(line(items[name]) for name in sorted(names))
    path.write_text(header.strip() + "\n" + body + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--python", action="append", help="another interpreter to resolve with (repeatable)")
    parser.add_argument("--torch", default=DEFAULT_TORCH, help="the torch version the set is resolved with")
    args = parser.parse_args()
    runtime, test = project_requirements()
    system = Path("/usr/bin/python3.11")
    others = args.python if args.python is not None else [str(system)] if system.exists() else []
    pythons_used = [sys.executable, *others]
    items, environments = resolve_union(pythons_used, test, args.torch)
    pythons = ", ".join(sorted({e["python_full_version"] for e in environments}))
    common = f"""
# Generated by scripts/lock.py from pyproject.toml; do not edit by hand (regenerate: docs/security.md).
# CPython 3.11 ({pythons}) on Linux x86_64, resolved with torch=={args.torch}. One pinned file per
# distribution; install with: pip install --require-hashes --no-deps -r FILE
"""
    everything = closure(test, items, environments)
    write(
        TEST_LOCK,
        common + "# The test command's set: dependencies, the service and test extras, the build backend;\n"
        "# torch is the CPU wheel.\n",
        everything,
        items,
    )
    image = closure(runtime, items, environments) - {"torch"}
    write(
        RUNTIME_LOCK,
        common + "# The image's set: dependencies and the service extra, torch's own dependencies included,\n"
        "# torch itself left out (the image installs a CUDA build from the PyTorch index, by version).\n",
        image,
        items,
    )
    # .venv-tools is made from the project venv's interpreter: resolved with that one alone.
    tool_items, _ = resolve_union([sys.executable], DEPLOY_TOOLS, None)
    write(
        TOOLS_LOCK,
        f"""
# Generated by scripts/lock.py; do not edit by hand (regenerate: docs/security.md). CPython
# {platform.python_version()} on Linux x86_64: the Kubernetes validators' set, which
# scripts/deploy-tools.sh installs into .venv-tools/ (pip install --require-hashes --no-deps -r FILE).
""",
        set(tool_items),
        tool_items,
    )
    print(
        f"{TEST_LOCK.name}: {len(everything)} pins; {RUNTIME_LOCK.name}: {len(image)}; "
        f"{TOOLS_LOCK.name}: {len(tool_items)}"
    )


if __name__ == "__main__":
    main()
