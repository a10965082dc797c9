"""SSRF targets refused end to end (webhooks, URL inputs, redirect hops), with the service inside a
loopback-only network namespace: ``unshare -rn``, then ``ip link set lo up``. The namespace has no
route anywhere but 127.0.0.0/8 and ::1, so nothing can leave the machine even while a check is wrong.

``test_runs_in_a_loopback_only_namespace`` starts pytest on this file inside such a namespace
(QALIGN_IN_NETNS=1); the other tests run only there.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from net_helpers import LocalServer, Reply, make_tls_files
from testkit import assert_problem

IN_NETNS = os.environ.get("QALIGN_IN_NETNS") == "1"
inside = pytest.mark.skipif(not IN_NETNS, reason="runs inside the namespace (the launcher test)")
#: Global by Python 3.11's ``is_global`` or missed by a deny-list, yet they reach cloud metadata or
#: internal networks: carrier NAT / Alibaba metadata, 6to4 of 169.254.169.254, the 6to4 relay.
TARGETS = {
    "100.64.0.1": "shared",
    "100.100.100.200": "shared",
    "[2002:a9fe:a9fe::]": "6to4",
    "192.88.99.1": "6to4",
    "[64:ff9b::a9fe:a9fe]": "NAT64 to link-local",
}


def test_runs_in_a_loopback_only_namespace():
    if IN_NETNS:
        pytest.skip("already inside")
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("unshare and ip (util-linux, iproute2) are needed for the network namespace")
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"user and network namespaces are not allowed here: {probe.stderr.decode()[:200]}")
    script = f'ip link set lo up && exec "{sys.executable}" -m pytest -q -p no:cacheprovider "{__file__}"'
    done = subprocess.run(
        ["unshare", "-rn", "sh", "-c", script],
        env={**os.environ, "QALIGN_IN_NETNS": "1"},
        cwd=Path(__file__).resolve().parents[3],
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "13 passed, 1 skipped" in output, output[-2000:]


@inside
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


@inside
@pytest.mark.parametrize(("host", "kind"), TARGETS.items())
def test_webhook_urls_to_non_global_addresses_are_refused(ssrf_client, small_images, host, kind):
    body = _body(small_images, webhook_url=f"http://{host}/hook?token=secret")
    problem = assert_problem(ssrf_client.post("/transfer", json=body), 422)
    assert f"{kind} address" in problem["detail"] and "QALIGN_WEBHOOK_ALLOW_HOSTS" in problem["detail"]
    assert problem["errors"][0]["field"] == "webhook_url"


@inside
@pytest.mark.parametrize(("host", "kind"), TARGETS.items())
def test_url_inputs_to_non_global_addresses_are_refused(ssrf_client, small_images, host, kind):
    problem = assert_problem(
        ssrf_client.post("/transfer", json=_body(small_images, f"https://{host}/s.png")), 422
    )
    assert f"{kind} address" in problem["detail"] and "only globally routable" in problem["detail"]
    assert problem["errors"][0]["field"] == "structure"


@inside
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


@inside
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
