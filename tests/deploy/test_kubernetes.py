"""The Kubernetes manifests (deploy/kubernetes): rendered, schema-checked offline, policy-checked.

- ``kubectl kustomize`` renders the base and every overlay (kubectl is on these machines; no cluster).
- Every object is validated against the Kubernetes OpenAPI schemas by ``kubernetes-validate``
  (PyPI; the schemas ship inside the package, nothing is downloaded). KEDA's ScaledObject and the
  Prometheus Operator's ServiceMonitor and PrometheusRule are custom resources that package has no
  schema for: they are skipped there, and their fields are checked here instead
  (test_scaledobject_scales_on_the_celery_queue_to_zero, test_monitoring_scrapes_...).
- checkov (PyPI) reports no failed check. Offline checkov has no severities (they come from its
  paid platform), so the bar is every check, not only HIGH ones: each one skipped is justified in
  the object's ``checkov.io/skipN: CHECK_ID=reason`` annotation (image digests set per release,
  credentials as environment variables, the worker's exec probes).
- test_network_policies.py computes who may connect to whom from the same renders.

The validators live in .venv-tools/ (scripts/deploy-tools.sh, run by scripts/test.sh), apart from
the project's environment because checkov pins many shared libraries.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from kube_render import ROOT, find, objects, render
from testkit import REQUIRE_TOOLS, tool_missing

OVERLAYS = ["base", "overlays/production", "overlays/external-redis"]
#: Everything rendered and validated: the overlays and the weights-loader Job (applied on its own).
TARGETS = [*OVERLAYS, "weights-loader"]
#: Custom resources kubernetes-validate has no schema for (it reports them as unchecked); their
#: fields are checked by the tests below instead.
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule"}
TOOLS = ROOT / ".venv-tools" / "bin"
KUBERNETES_VERSION = "1.32"


def _tool(name: str) -> str:
    path = TOOLS / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        tool_missing(f"{name} is not installed: scripts/test.sh installs it (deploy-tools.sh)", REQUIRE_TOOLS)
    return found


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
    builtin = [d for d in docs if d["kind"] not in CUSTOM_KINDS]
    # Every built-in object passed; the only objects without a schema are the custom resources.
    assert len([line for line in lines if " passed for resource " in line]) == len(builtin), lines
    unchecked = [line for line in lines if "Couldn't find schema" in line]
    assert unchecked == [line for line in unchecked if any(f"kind {k}" in line for k in CUSTOM_KINDS)]
    assert len(unchecked) == len(docs) - len(builtin)


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
    least = 20 if target == "weights-loader" else 100  # one Job, or the whole deployment
    assert sum(r["summary"]["passed"] for r in reports) > least, "checkov ran its Kubernetes checks"
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
            if doc["kind"] not in ("Deployment", "StatefulSet", "Job"):
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
    from service.backends.celery_queue import QUEUE

    for target in OVERLAYS:
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
        # The password: from the Secret through a TriggerAuthentication, never in the trigger itself.
        assert not {"password", "passwordFromEnv"} & set(meta), meta
        auth = find(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        assert auth["apiVersion"] == "keda.sh/v1alpha1"
        assert auth["spec"]["secretTargetRef"] == [
            {"parameter": "password", "name": "qalign-secrets", "key": "REDIS_PASSWORD"}
        ]
        assert auth["metadata"]["namespace"] == scaled["metadata"]["namespace"]


def test_external_redis_overlay_drops_the_in_cluster_redis():
    docs = objects("overlays/external-redis")
    assert not [d for d in docs if d["metadata"]["name"].startswith("qalign-redis")]
    config = find(docs, "ConfigMap", "qalign-config")["data"]
    assert "QALIGN_REDIS_URL" not in config, "the URL with its password comes from the Secret"


def test_worker_rollout_needs_no_spare_gpu():
    strategy = find(objects("base"), "Deployment", "qalign-worker")["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_redis_requires_the_password_from_the_secret():
    docs = objects("base")
    redis = find(docs, "StatefulSet", "qalign-redis")["spec"]["template"]["spec"]["containers"][0]
    env = _env(redis)
    for name in ("REDIS_PASSWORD", "REDISCLI_AUTH"):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "qalign-secrets", "key": "REDIS_PASSWORD"}
    script = " ".join(redis["command"])
    assert "requirepass $REDIS_PASSWORD" in script and "redis-server -" in script
    assert "QALIGN_REDIS_URL" not in find(docs, "ConfigMap", "qalign-config")["data"]
    for name in ("qalign-api", "qalign-worker"):
        container = find(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        env = _env(container)
        assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "REDIS_PASSWORD"
        assert env["QALIGN_REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@qalign-redis:6379/0"
        names = list(env)
        assert names.index("REDIS_PASSWORD") < names.index("QALIGN_REDIS_URL"), (
            "$(VAR) needs it defined first"
        )
    # KEDA's scaler reads the same key (test_scaledobject_scales_on_the_celery_queue_to_zero).
    trigger = find(docs, "ScaledObject", "qalign-worker")["spec"]["triggers"][0]
    auth = find(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert {"name": "qalign-secrets", "key": "REDIS_PASSWORD"} in [
        {k: ref[k] for k in ("name", "key")} for ref in auth["spec"]["secretTargetRef"]
    ]


def test_external_redis_takes_the_url_from_the_secret():
    for name in ("qalign-api", "qalign-worker"):
        container = find(objects("overlays/external-redis"), "Deployment", name)["spec"]["template"]["spec"]
        assert "QALIGN_REDIS_URL" not in _env(container["containers"][0])


def test_api_keys_are_required_and_links_use_the_public_address():
    assert find(objects("base"), "ConfigMap", "qalign-config")["data"]["QALIGN_REQUIRE_API_KEYS"] == "true"
    docs = objects("overlays/production")
    public = find(docs, "ConfigMap", "qalign-config")["data"]["QALIGN_PUBLIC_BASE_URL"]
    assert public == "https://" + find(docs, "Ingress", "qalign-api")["spec"]["rules"][0]["host"]


def test_production_sets_the_model_volume_storage_class():
    assert "storageClassName" not in find(objects("base"), "PersistentVolumeClaim", "qalign-models")["spec"]
    claim = find(objects("overlays/production"), "PersistentVolumeClaim", "qalign-models")["spec"]
    assert claim["storageClassName"] and claim["accessModes"] == ["ReadWriteMany"]


def test_weights_loader_fills_the_models_volume_read_write():
    docs = objects("weights-loader")
    job = find(docs, "Job", "qalign-weights-loader")
    assert job["metadata"]["namespace"] == "qalign"
    pod = job["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"] == {"claimName": "qalign-models"}
    container = pod["containers"][0]
    assert "service.weights_loader" in " ".join(container["command"])
    env = _env(container)
    assert env["HF_HOME"]["value"] == "/models" and env["HF_HUB_OFFLINE"]["value"] == "0"
    mount = [m for m in container["volumeMounts"] if m["name"] == volume["name"]][0]
    assert mount["mountPath"] == "/models" and not mount.get("readOnly")


def test_ingress_fits_the_service_limits():
    """The proxy must pass the largest valid request and hold a Prefer: wait or an events stream."""
    from qalign_schema.submission import MAX_PREFER_WAIT_S
    from service.settings import Settings

    settings = Settings(_env_file=None)
    docs = objects("overlays/production")
    ingress = find(docs, "Ingress", "qalign-api")
    notes = ingress["metadata"]["annotations"]
    size = notes["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert size.endswith("m") and int(size[:-1]) * 1024 * 1024 >= settings.request_limit
    read_timeout = int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"])
    assert read_timeout > MAX_PREFER_WAIT_S and read_timeout > settings.events_ping_s
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off", "events reach the client at once"
    assert ingress["spec"]["tls"][0]["secretName"]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert find(docs, "Service", backend["name"])["spec"]["ports"][0]["name"] == backend["port"]["name"]


def test_monitoring_scrapes_the_api_and_alerts_on_exported_metrics():
    metrics_source = (ROOT / "service" / "http" / "metrics.py").read_text()
    docs = objects("overlays/production")
    monitor = find(docs, "ServiceMonitor", "qalign-api")
    service = find(docs, "Service", "qalign-api")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert all(service["metadata"]["labels"].get(k) == v for k, v in selector.items())
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    rules = find(docs, "PrometheusRule", "qalign-alerts")["spec"]["groups"][0]["rules"]
    alerts = {r["alert"]: r["expr"] for r in rules}
    wanted = {
        "queue age": "qalign_queue_oldest_age_seconds",
        "failure rate": 'status="failed"',
        "no workers": "qalign_workers_live",
        "undelivered webhooks": "qalign_webhooks_undelivered",
    }
    for what, fragment in wanted.items():
        assert any(fragment in expr for expr in alerts.values()), f"no alert on {what}"
    for name, expr in alerts.items():
        for metric in re.findall(r"qalign_[a-z_]+", expr):
            family = re.sub(r"_(bucket|total|count|sum)$", "", metric)
            assert f'"{family}"' in metrics_source, f"{name} uses {metric}, which the API does not export"


def test_every_kustomization_tags_the_image_with_the_release_version():
    """The image tag the manifests deploy is the package's version (its one home, qalign_schema)."""
    import yaml

    from qalign_schema.version import __version__

    tags = {}
    for path in sorted((ROOT / "deploy" / "kubernetes").rglob("kustomization.yaml")):
        for image in yaml.safe_load(path.read_text(encoding="utf-8")).get("images") or []:
            if image["name"] == "qalign":
                tags[str(path.relative_to(ROOT))] = image.get("newTag")
    assert len(tags) >= 3, "the base, production and weights-loader kustomizations were read"
    assert {path: tag for path, tag in tags.items() if tag != __version__} == {}
