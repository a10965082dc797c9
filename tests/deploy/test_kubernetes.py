"""The Kubernetes manifests (deploy/kubernetes): rendered, schema-checked offline, policy-checked.

- ``kubectl kustomize`` renders the base and every overlay (kubectl is on these machines; no cluster).
- Every object is validated against the Kubernetes OpenAPI schemas by ``kubernetes-validate``
  (PyPI; the schemas ship inside the package, nothing is downloaded). KEDA's ScaledObject is a
  custom resource that package has no schema for: it is skipped there, and its fields are checked
  here instead (test_scaledobject_scales_on_the_celery_queue_to_zero).
- checkov (PyPI) reports no failed check. Offline checkov has no severities (they come from its
  paid platform), so the bar is every check, not only HIGH ones: each one skipped is justified in
  the object's ``checkov.io/skipN: CHECK_ID=reason`` annotation (7 in the base: image digests set
  per release, credentials as environment variables, the worker's exec probes).

The validators live in .venv-tools/ (scripts/deploy-tools.sh, run by scripts/test.sh), apart from
the project's environment because checkov pins many shared libraries.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
TARGETS = ["base", "overlays/production", "overlays/external-redis"]
TOOLS = ROOT / ".venv-tools" / "bin"
KUBERNETES_VERSION = "1.32"


def _tool(name: str) -> str:
    path = TOOLS / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed: scripts/test.sh installs it (scripts/deploy-tools.sh)")
    return found


def _kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl is not installed (it renders the kustomizations; apt-get install kubectl)")
    return found


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


@pytest.mark.parametrize("target", TARGETS)
def test_renders_and_validates_against_the_kubernetes_schemas(target, tmp_path):
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(render(target))
    done = subprocess.run(
        [_tool("kubernetes-validate"), "--kubernetes-version", KUBERNETES_VERSION, "--strict", str(rendered)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = (done.stdout + done.stderr).splitlines()
    assert done.returncode == 0, "\n".join(lines)
    docs = objects(target)
    builtin = [d for d in docs if d["kind"] != "ScaledObject"]
    # Every built-in object passed; the only object without a schema is KEDA's custom resource.
    assert len([line for line in lines if " passed for resource " in line]) == len(builtin), lines
    unchecked = [line for line in lines if "Couldn't find schema" in line]
    assert unchecked == [line for line in unchecked if "kind ScaledObject" in line], unchecked
    assert len(unchecked) == len(docs) - len(builtin) == 1


@pytest.mark.parametrize("target", TARGETS)
def test_checkov_finds_nothing_that_is_not_justified(target, tmp_path):
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(render(target))
    done = subprocess.run(
        [
            _tool("checkov"),
            "--compact",
            "--skip-download",  # offline: no Prisma Cloud guidelines or severities
            "-o",
            "json",
            "--framework",
            "kubernetes",
            "-f",
            str(rendered),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads(done.stdout)
    reports = report if isinstance(report, list) else [report]
    assert reports and all(r["summary"]["parsing_errors"] == 0 for r in reports)
    assert sum(r["summary"]["passed"] for r in reports) > 100, "checkov ran its Kubernetes checks"
    failed = [
        f"{c['check_id']} {c['resource']}: {c['check_name']}"
        for r in reports
        for c in r["results"].get("failed_checks", [])
    ]
    assert failed == [], "\n".join(failed)
    # Each skip is a checkov.io/skipN annotation of the object, "CHECK_ID=reason".
    docs = objects(target)
    for r in reports:
        for check in r["results"].get("skipped_checks", []):
            kind, _namespace, name = check["resource"].split(".", 2)
            notes = find(docs, kind, name)["metadata"].get("annotations", {})
            reasons = [v.split("=", 1)[1] for k, v in notes.items() if k.startswith("checkov.io/skip")
                       and v.startswith(check["check_id"] + "=")]  # fmt: skip
            assert reasons and len(reasons[0]) > 20, (
                f"{check['check_id']} on {name} is skipped without a reason"
            )


def test_worker_takes_a_gpu_and_outlives_its_shutdown_grace():
    docs = objects("base")
    config = find(docs, "ConfigMap", "qalign-config")["data"]
    worker = find(docs, "Deployment", "qalign-worker")["spec"]["template"]["spec"]
    container = worker["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["terminationGracePeriodSeconds"] > float(config["QALIGN_WORKER_SHUTDOWN_GRACE"])
    assert "startupProbe" in container and "livenessProbe" in container
    assert "--concurrency" in container["command"]


def test_api_probes_hpa_and_scale_to_zero_setting():
    docs = objects("base")
    api = find(docs, "Deployment", "qalign-api")["spec"]["template"]["spec"]["containers"][0]
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["startupProbe"]["httpGet"]["path"] == "/healthz"
    hpa = find(docs, "HorizontalPodAutoscaler", "qalign-api")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "qalign-api"
    assert find(docs, "ConfigMap", "qalign-config")["data"]["QALIGN_ACCEPT_WITHOUT_WORKERS"] == "true"
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "PodDisruptionBudget"} >= {
        "qalign-api",
        "qalign-worker",
    }


def test_every_pod_is_non_root_with_a_read_only_root():
    for target in TARGETS:
        for doc in objects(target):
            if doc["kind"] not in ("Deployment", "StatefulSet"):
                continue
            pod = doc["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
            assert pod["automountServiceAccountToken"] is False
            for container in pod["containers"]:
                context = container["securityContext"]
                assert context["readOnlyRootFilesystem"] is True, container["name"]
                assert context["allowPrivilegeEscalation"] is False
                assert context["capabilities"]["drop"] == ["ALL"]


def test_scaledobject_scales_on_the_celery_queue_to_zero():
    """Checked here because no offline validator has KEDA's schema: the fields KEDA reads."""
    from service.queue import QUEUE

    for target in TARGETS:
        docs = objects(target)
        scaled = find(docs, "ScaledObject", "qalign-worker")
        assert scaled["apiVersion"] == "keda.sh/v1alpha1"
        spec = scaled["spec"]
        assert spec["scaleTargetRef"]["name"] == "qalign-worker"
        find(docs, "Deployment", spec["scaleTargetRef"]["name"])
        assert spec["minReplicaCount"] == 0 and spec["maxReplicaCount"] >= 1
        assert isinstance(spec["cooldownPeriod"], int) and isinstance(spec["pollingInterval"], int)
        (trigger,) = spec["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "redis" and meta["listName"] == QUEUE
        assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata values are strings"
        assert int(meta["listLength"]) >= 1 and int(meta["activationListLength"]) == 0
        config = find(docs, "ConfigMap", "qalign-config")["data"]
        assert meta["addressFromEnv"] in config, "the address KEDA reads is in the worker's environment"


def test_external_redis_overlay_drops_the_in_cluster_redis():
    docs = objects("overlays/external-redis")
    assert not [d for d in docs if "redis" in d["metadata"]["name"] and d["kind"] != "ScaledObject"]
    config = find(docs, "ConfigMap", "qalign-config")["data"]
    assert "QALIGN_REDIS_URL" not in config, "the URL with its password comes from the Secret"
