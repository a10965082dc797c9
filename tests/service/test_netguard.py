"""The SSRF guard with the address pinned, against real local HTTP and HTTPS servers."""

from __future__ import annotations

import httpx
import pytest
from net_helpers import LOOPBACK_ONLY, LocalServer, Reply, make_tls_files, namespace_launcher, pinned_resolver

from service.netguard import NetPolicy, UrlRefused, open_pinned, pin, redact_url

# Names non-loopback addresses (targets the checks must refuse or never reach): every test
# here runs inside a loopback-only network namespace (tests/net_helpers.py).
pytestmark = LOOPBACK_ONLY
test_in_loopback_only_namespace = namespace_launcher(__file__)


def ok(seen, handler):
    return Reply(200, b"hello")


@pytest.fixture
def tls(tmp_path):
    return make_tls_files(tmp_path, names=("hook.test",))


@pytest.mark.parametrize(
    ("addresses", "fragment"),
    [
        (["127.0.0.1"], "loopback"),
        (["10.1.2.3"], "private"),
        (["169.254.169.254"], "link-local"),
        (["93.184.215.14", "192.168.1.5"], "private"),
        (["::ffff:127.0.0.1"], "loopback"),
        (["224.0.0.1"], "multicast"),
        (["100.64.0.1"], "shared"),
        (["100.100.100.200"], "shared"),
        (["2002:a9fe:a9fe::"], "6to4"),
        (["192.88.99.1"], "6to4"),
        (["64:ff9b::a9fe:a9fe"], "NAT64 to link-local"),
        (["203.0.113.7"], "private"),  # documentation ranges are not global
        (["198.18.0.1"], "private"),  # benchmarking
        (["2001:0:a9fe:a9fe::"], "private"),  # Teredo
    ],
)
def test_any_non_public_address_is_refused(addresses, fragment):
    policy = NetPolicy(resolver=lambda h, p: addresses, allow_setting="QALIGN_X_ALLOW")
    with pytest.raises(UrlRefused, match=fragment) as refused:
        pin("https://some.example/x", policy, name="thing")
    assert str(refused.value).startswith("thing host") and "QALIGN_X_ALLOW" in str(refused.value)


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "52.216.8.1", "2606:4700::1", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_globally_routable_addresses_pass(address):
    pinned = pin("https://some.example/x", NetPolicy(resolver=lambda h, p: [address]), name="thing")
    assert pinned.addresses == (address,)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:pw@hooks.example/in?token=abc#frag", "https://hooks.example/in"),
        ("http://[::1]:8080/p?q", "http://[::1]:8080/p"),
        ("https://[broken/x?token=1", "https://[broken/x"),
    ],
)
def test_urls_are_logged_without_credentials_or_query(url, shown):
    assert redact_url(url) == shown


def test_allow_entries_are_host_names_addresses_or_networks():
    table = {"a.internal": ["10.0.0.5"], "b.internal": ["10.0.0.6"], "c.internal": ["10.9.0.1"]}
    resolver = pinned_resolver(table)
    policy = NetPolicy(resolver=resolver, allow=("a.internal", "10.0.0.6", "10.9.0.0/16"))
    for host in ("a.internal", "b.internal", "c.internal"):
        assert pin(f"http://{host}/", policy, name="u").addresses
    with pytest.raises(UrlRefused, match="private"):
        other = NetPolicy(resolver=lambda h, p: ["10.0.0.7"], allow=("10.0.0.6",))
        pin("http://d.internal/", other, name="u")


def test_scheme_host_and_credentials_are_checked_before_resolving():
    resolver = pinned_resolver({})
    policy = NetPolicy(schemes=("https",), resolver=resolver)
    for url, fragment in [
        ("http://x.example/", "must use https"),
        ("https:///nohost", "no host"),
        ("https://u:p@x.example/", "credentials"),
    ]:
        with pytest.raises(UrlRefused, match=fragment):
            pin(url, policy, name="u")
    assert resolver.calls == []
    with pytest.raises(UrlRefused, match="does not resolve"):
        pin("https://nope.invalid/", policy, name="u")


def test_dns_rebinding_cannot_redirect_the_connection():
    """The resolver answers an allowed address first and a forbidden one afterwards (a rebinding
    attacker's DNS): the request goes to the first, checked address and the name is resolved once."""
    server = LocalServer(ok)
    answers = [["127.0.0.1"], ["10.0.0.7"]]
    calls = []

    def rebinding(host, port):
        calls.append(host)
        return answers[min(len(calls) - 1, 1)]

    policy = NetPolicy(resolver=rebinding, allow=("127.0.0.1",))
    try:
        pinned = pin(f"http://rebind.test:{server.port}/hook?x=1", policy, name="u")
        with open_pinned(pinned, "POST", policy, timeout=10, content=b"payload") as response:
            assert response.status_code == 200 and response.read() == b"hello"
        assert calls == ["rebind.test"], "resolved once, at the check"
        seen = server.seen[0]
        assert seen.headers["Host"] == f"rebind.test:{server.port}" and seen.path == "/hook?x=1"
        assert seen.body == b"payload"
        with pytest.raises(UrlRefused, match="private address 10.0.0.7"):
            pin(f"http://rebind.test:{server.port}/hook", policy, name="u")  # what a second look-up meets
    finally:
        server.close()


def test_next_checked_address_is_tried_when_the_first_does_not_connect():
    server = LocalServer(ok)
    policy = NetPolicy(resolver=lambda h, p: ["127.0.0.2", "127.0.0.1"], allow=("127.0.0.0/8",))
    try:
        pinned = pin(f"http://two.test:{server.port}/", policy, name="u")
        with open_pinned(pinned, "GET", policy, timeout=10) as response:
            assert response.status_code == 200
    finally:
        server.close()


def test_https_keeps_sni_and_certificate_checks_for_the_host_name(tls):
    server = LocalServer(ok, tls=tls)
    resolver = pinned_resolver({"hook.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    policy = NetPolicy(resolver=resolver, allow=("127.0.0.1",), ca_bundle=str(tls.ca))
    try:
        pinned = pin(f"https://hook.test:{server.port}/in", policy, name="u")
        with open_pinned(pinned, "GET", policy, timeout=10) as response:
            assert response.status_code == 200 and response.read() == b"hello"
        assert server.seen[0].headers["Host"] == f"hook.test:{server.port}"
        wrong_name = pin(f"https://other.test:{server.port}/in", policy, name="u")
        with pytest.raises(httpx.ConnectError, match="certificate"):
            open_pinned(wrong_name, "GET", policy, timeout=10).__enter__()
        untrusted = NetPolicy(resolver=resolver, allow=("127.0.0.1",))  # certifi's CAs only
        with pytest.raises(httpx.ConnectError, match="certificate"):
            open_pinned(pinned, "GET", untrusted, timeout=10).__enter__()
        assert len(server.seen) == 1, "no request is sent over an unverified connection"
    finally:
        server.close()
