"""Renders of deploy/kubernetes targets with ``kubectl kustomize`` (shared by the deploy tests)."""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path

import yaml
from testkit import REQUIRE_TOOLS, tool_missing

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"


def _kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        tool_missing(
            "kubectl is not installed (it renders the kustomizations; apt-get install kubectl)", REQUIRE_TOOLS
        )
    return found


@cache
def render(target: str) -> str:
    done = subprocess.run(
        [_kubectl(), "kustomize", str(KUBE / target)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def objects(target: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(render(target)) if doc]


def find(docs: list[dict], kind: str, name: str) -> dict:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert matches, f"no {kind} {name}"
    return matches[0]
