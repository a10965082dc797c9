"""Which pods may talk to which, computed from each overlay's render (netpolicy_eval evaluates the
NetworkPolicy selectors against the pod templates' labels), against the intended graph:

- API and workers -> Redis; KEDA's operator -> Redis (it reads the queue length); nothing else.
- API and workers -> S3 over HTTPS (an address outside the cluster); API -> webhook receivers on
  any port; workers -> nowhere else outside; no qalign pod -> cloud metadata (169.254.169.254,
  100.100.100.200).
- anyone -> API :8000; Redis -> nothing but DNS.
The weights loader (deploy/kubernetes/weights-loader) is rendered into the same namespace and must
not reach Redis.
"""

from __future__ import annotations

import copy

import pytest
from kube_render import objects
from netpolicy_eval import Network, Pod, external, selects, workload_pods

OVERLAYS = ["base", "overlays/production", "overlays/external-redis"]
S3 = external("52.216.8.1")
WEBHOOK = external("203.0.113.10")
METADATA = [external("169.254.169.254"), external("100.100.100.200")]
KEDA = Pod("keda-operator", "keda", {"app": "keda-operator"})
DNS = Pod("coredns", "kube-system", {"k8s-app": "kube-dns"})
OUTSIDERS = [
    KEDA,
    DNS,
    Pod("ingress-nginx", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}),
    Pod("other-app", "default", {"app": "other"}),
    Pod("debug", "qalign", {"run": "debug"}),  # a pod started by hand in the namespace
    Pod("lookalike", "qalign", {"app.kubernetes.io/part-of": "qalign"}),
]


def cluster(target: str) -> tuple[Network, dict[str, Pod], list[Pod]]:
    docs = objects(target) + objects("weights-loader")
    pods = {p.name: p for p in workload_pods(docs)}
    return Network(docs), pods, list(pods.values()) + OUTSIDERS


@pytest.mark.parametrize("target", OVERLAYS)
def test_only_the_api_the_workers_and_keda_reach_redis(target):
    network, pods, everyone = cluster(target)
    if "qalign-redis" not in pods:
        pytest.skip("this overlay uses a managed Redis (test_external_redis_is_reached_by_api_and_workers)")
    redis = pods["qalign-redis"]
    assert network.sources(redis, 6379, everyone) == {"qalign-api", "qalign-worker", "keda-operator"}
    assert network.sources(redis, 6380, everyone) == set()
    assert not network.allows(pods["qalign-weights-loader"], S3, 80), "the loader downloads over HTTPS only"
    assert network.allows(pods["qalign-weights-loader"], S3, 443)
    assert {p.name for p in everyone if network.allows(p, redis, 6379)} >= {"qalign-api", "qalign-worker"}
    assert not network.allows(redis, S3, 443) and not network.allows(redis, pods["qalign-api"], 8000)
    assert network.allows(redis, DNS, 53, "UDP")


@pytest.mark.parametrize("target", OVERLAYS)
def test_api_and_workers_reach_s3_and_only_the_api_reaches_webhooks(target):
    network, pods, _ = cluster(target)
    api, worker = pods["qalign-api"], pods["qalign-worker"]
    for pod in (api, worker):
        assert network.allows(pod, S3, 443), pod.name
        assert network.allows(pod, DNS, 53, "UDP") and network.allows(pod, DNS, 53, "TCP")
        for address in METADATA:
            assert not network.allows(pod, address, 80) and not network.allows(pod, address, 443)
    for port in (443, 80, 8443):
        assert network.allows(api, WEBHOOK, port), f"webhook egress on {port}"
    assert not network.allows(worker, WEBHOOK, 8443) and not network.allows(worker, WEBHOOK, 80)


@pytest.mark.parametrize("target", OVERLAYS)
def test_the_api_takes_http_from_anywhere_and_nothing_else_is_open(target):
    network, pods, everyone = cluster(target)
    api = pods["qalign-api"]
    # Everyone but the pods whose egress is closed to it (workers, Redis) and the API itself.
    closed = {"qalign-api", "qalign-worker", "qalign-redis", "qalign-weights-loader"}
    assert network.sources(api, 8000, everyone) == {p.name for p in everyone} - closed
    assert network.allows(external("198.51.100.7"), api, 8000)
    for name, pod in pods.items():
        if name != "qalign-api":
            assert network.sources(pod, 8000, everyone) == set(), name


def test_external_redis_is_reached_by_api_and_workers():
    network, pods, _ = cluster("overlays/external-redis")
    managed = external("10.20.0.5")
    assert network.allows(pods["qalign-api"], managed, 6379)
    assert network.allows(pods["qalign-worker"], managed, 6379)


@pytest.mark.parametrize("target", OVERLAYS)
def test_every_policy_selector_selects_a_pod(target):
    """A selector that matches no pod is a typo or a label that the templates lost."""
    network, pods, _ = cluster(target)
    for policy in network.policies:
        selector = policy["spec"]["podSelector"]
        if selector:
            chosen = [p for p in pods.values() if selects(selector, p.labels)]
            assert chosen, f"NetworkPolicy {policy['metadata']['name']} selects no pod"


def test_the_evaluation_catches_the_label_bug_this_replaced():
    """The policy that once admitted ``app.kubernetes.io/part-of: qalign`` while no pod template
    carried that label: API and workers could not reach Redis. The evaluation must say so."""
    docs = copy.deepcopy(objects("base"))
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            doc["spec"]["template"]["metadata"]["labels"].pop("app.kubernetes.io/part-of")
        if doc["kind"] == "NetworkPolicy" and doc["metadata"]["name"] == "qalign-redis-ingress":
            doc["spec"]["ingress"][0]["from"][0] = {
                "podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "qalign"}}
            }
    network = Network(docs)
    pods = {p.name: p for p in workload_pods(docs)}
    reached_by = network.sources(pods["qalign-redis"], 6379, list(pods.values()) + OUTSIDERS)
    assert "qalign-api" not in reached_by and "qalign-worker" not in reached_by
    assert reached_by == {"keda-operator", "lookalike"}, "only KEDA and a pod that happens to carry the label"
