"""Who may connect to whom under a set of Kubernetes NetworkPolicies: our own evaluation of the
selectors, as the API reference defines them (no cluster, no CNI).

A connection from A to B on a port is allowed when A's egress allows it (no Egress policy selects A,
or a rule of one does) and B's ingress allows it (likewise). Peers: ``podSelector`` alone means the
policy's namespace; ``namespaceSelector`` (with an optional ``podSelector``) other namespaces;
``ipBlock`` addresses. Pods get addresses from POD_CIDR, and an ``ipBlock`` that contains a pod's
address counts as matching it (Calico and Cilium behave so; the API leaves it to the CNI, so
counting it is the cautious reading: it can only add connections).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

POD_CIDR = ipaddress.ip_network("10.244.0.0/16")
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job")


@dataclass(frozen=True)
class Pod:
    """A pod (one per workload) or an address outside the cluster (``namespace`` None)."""

    name: str
    namespace: str | None
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, int] = field(default_factory=dict)
    address: str = ""

    @property
    def namespace_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace} if self.namespace else {}


def external(address: str) -> Pod:
    return Pod(name=address, namespace=None, address=address)


def workload_pods(docs: Iterable[dict], first_host: int = 10) -> list[Pod]:
    """One pod per workload of a render, with its template's labels and named container ports."""
    pods = []
    for doc in docs:
        if doc["kind"] not in WORKLOADS:
            continue
        template = doc["spec"]["template"]
        ports = {
            p["name"]: p["containerPort"]
            for c in template["spec"]["containers"]
            for p in c.get("ports", [])
            if "name" in p
        }
        address = str(POD_CIDR[first_host + len(pods)])
        labels = template.get("metadata", {}).get("labels", {})
        pods.append(Pod(doc["metadata"]["name"], doc["metadata"]["namespace"], labels, ports, address))
    return pods


def selects(selector: Mapping | None, labels: Mapping[str, str]) -> bool:
    """``matchLabels`` and ``matchExpressions`` (In, NotIn, Exists, DoesNotExist); {} selects all."""
    if selector is None:
        return True
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        ok = {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]
        if not ok:
            return False
    return True


def _in_block(block: Mapping, address: str) -> bool:
    ip = ipaddress.ip_address(address)
    cidr = ipaddress.ip_network(block["cidr"])
    if ip.version != cidr.version or ip not in cidr:
        return False
    return not any(
        ip in ipaddress.ip_network(e)
        for e in block.get("except", [])
        if ipaddress.ip_network(e).version == ip.version
    )


def peer_matches(peer: Mapping, policy_namespace: str, other: Pod) -> bool:
    if "ipBlock" in peer:
        return bool(other.address) and _in_block(peer["ipBlock"], other.address)
    if other.namespace is None:  # pod and namespace selectors never match an outside address
        return False
    if "namespaceSelector" in peer:
        in_namespace = selects(peer["namespaceSelector"], other.namespace_labels)
    else:
        in_namespace = other.namespace == policy_namespace
    return in_namespace and selects(peer.get("podSelector"), other.labels)


def ports_match(rule_ports: list[Mapping] | None, port: int, protocol: str, target: Pod) -> bool:
    if not rule_ports:
        return True
    for entry in rule_ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        wanted = entry.get("port")
        if wanted is None:
            return True
        if isinstance(wanted, str):
            wanted = target.ports.get(wanted)
            if wanted is None:
                continue
        if wanted <= port <= entry.get("endPort", wanted):
            return True
    return False


def _types(policy: Mapping) -> list[str]:
    spec = policy["spec"]
    return spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else []))


class Network:
    """The NetworkPolicies of a render, asked whether one endpoint may connect to another."""

    def __init__(self, docs: Iterable[dict]) -> None:
        self.policies = [d for d in docs if d["kind"] == "NetworkPolicy"]

    def _policies(self, pod: Pod, direction: str) -> list[Mapping]:
        if pod.namespace is None:
            return []
        return [
            p
            for p in self.policies
            if p["metadata"]["namespace"] == pod.namespace
            and direction in _types(p)
            and selects(p["spec"]["podSelector"], pod.labels)
        ]

    def _side_allows(
        self, pod: Pod, other: Pod, port: int, protocol: str, direction: str, target: Pod
    ) -> bool:
        policies = self._policies(pod, direction)
        if not policies:
            return True
        rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        for policy in policies:
            for rule in policy["spec"].get(rules_key) or []:
                if not ports_match(rule.get("ports"), port, protocol, target):
                    continue
                peers = rule.get(peers_key)
                if not peers or any(peer_matches(p, policy["metadata"]["namespace"], other) for p in peers):
                    return True
        return False

    def allows(self, source: Pod, target: Pod, port: int, protocol: str = "TCP") -> bool:
        out = self._side_allows(source, target, port, protocol, "Egress", target)
        return out and self._side_allows(target, source, port, protocol, "Ingress", target)

    def sources(self, target: Pod, port: int, candidates: Iterable[Pod]) -> set[str]:
        return {c.name for c in candidates if c is not target and self.allows(c, target, port)}
