"""SSRF targets refused end to end (webhooks, URL inputs, redirect hops), with the service inside a
loopback-only network namespace: ``unshare -n``, then ``ip link set lo up``. The namespace has no
route anywhere but 127.0.0.0/8 and ::1, so nothing can leave the machine even while a check is wrong.

``test_in_loopback_only_namespace`` (tests/net_helpers.py) starts pytest on this file inside such a
namespace; the other tests run only there.
"""

from __future__ import annotations

import base64
import socket

import pytest
from net_helpers import LOOPBACK_ONLY, LocalServer, Reply, make_tls_files, namespace_launcher
from testkit import assert_problem

pytestmark = LOOPBACK_ONLY
test_in_loopback_only_namespace = namespace_launcher(__file__)
#: Global by Python 3.11's ``is_global`` or missed by a deny-list, yet they reach cloud metadata or
#: internal networks: carrier NAT / Alibaba metadata, 6to4 of 169.254.169.254, the 6to4 relay.
TARGETS = {
    "100.64.0.1": "shared",
    "100.100.100.200": "shared",
    "[2002:a9fe:a9fe::]": "6to4",
    "192.88.99.1": "6to4",
    "[64:ff9b::a9fe:a9fe]": "NAT64 to link-local",
}


def test_the_namespace_has_only_loopback():
    assert [name for _index, name in socket.if_nameindex()] == ["lo"]
    with socket.socket() as outside, pytest.raises(OSError):  # no route: fails at once
        outside.settimeout(5)
        outside.connect(("100.100.100.200", 80))


@pytest.fixture
def ssrf_client(make_client, embedded_settings):
    settings = embedded_settings.model_copy(update={"webhook_secret": "s" * 32})
    return make_client(settings)


def _body(small_images, structure: str | None = None, **extra) -> dict:
    structure = structure or base64.b64encode(small_images[0]).decode()
    return {"structure": structure, "appearance": base64.b64encode(small_images[1]).decode(), **extra}


@pytest.mark.parametrize(("host", "kind"), TARGETS.items())
def test_webhook_urls_to_non_global_addresses_are_refused(ssrf_client, small_images, host, kind):
    body = _body(small_images, webhook_url=f"http://{host}/hook?token=secret")
    problem = assert_problem(ssrf_client.post("/transfer", json=body), 422)
    assert f"{kind} address" in problem["detail"] and "QALIGN_WEBHOOK_ALLOW_HOSTS" in problem["detail"]
    assert problem["errors"][0]["field"] == "webhook_url"


@pytest.mark.parametrize(("host", "kind"), TARGETS.items())
def test_url_inputs_to_non_global_addresses_are_refused(ssrf_client, small_images, host, kind):
    problem = assert_problem(
        ssrf_client.post("/transfer", json=_body(small_images, f"https://{host}/s.png")), 422
    )
    assert f"{kind} address" in problem["detail"] and "only globally routable" in problem["detail"]
    assert problem["errors"][0]["field"] == "structure"


def test_every_redirect_hop_is_checked(make_client, embedded_settings, small_images, tmp_path):
    tls = make_tls_files(tmp_path, names=("localhost",))
    hops = iter(TARGETS)
    origin = LocalServer(
        lambda seen, handler: Reply(302, b"", {"Location": f"https://{next(hops)}/x.png"}), tls=tls
    )
    settings = embedded_settings.model_copy(
        update={"input_url_allow_hosts": "127.0.0.1", "outbound_ca_bundle": tls.ca}
    )
    client = make_client(settings)
    try:
        for kind in TARGETS.values():
            body = _body(small_images, origin.url(path="/start.png"))
            problem = assert_problem(client.post("/transfer", json=body), 422)
            assert f"{kind} address" in problem["detail"], problem
    finally:
        origin.close()


def test_a_failed_connection_never_echoes_the_network_error(make_client, embedded_settings, small_images):
    """An operator allows 100.64.0.0/10 (say, a wrong entry): the fetch is tried, the namespace has no
    route, and the caller reads a category, not the error (which would tell what answers where)."""
    with socket.socket() as probe:  # a loopback port nobody listens on: refused at once
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    settings = embedded_settings.model_copy(update={"input_url_allow_hosts": "100.64.0.0/10,127.0.0.1"})
    client = make_client(settings)
    details = []
    for url in ("https://100.64.0.1/s.png", f"https://127.0.0.1:{closed}/s.png"):
        problem = assert_problem(client.post("/transfer", json=_body(small_images, url)), 422)
        assert problem["type"].endswith("/input-fetch-failed")
        details.append(problem["detail"].split(": ", 3)[-1])
    assert details[0] == details[1] == "could not connect or complete the TLS handshake", details
    assert not any(word in " ".join(details).lower() for word in ("errno", "unreachable", "refused"))
