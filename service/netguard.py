"""Outbound HTTP to URLs a caller chose (webhooks, URL inputs), guarded against SSRF and DNS rebinding.

``pin`` resolves the host once and checks every address it resolves to by an allow-list: only
globally routable addresses (``ipaddress``'s ``is_global``) pass, minus the ranges that Python counts
as global although they lead elsewhere (6to4 2002::/16 and its relay 192.88.99.0/24, which embed or
reach any IPv4 address; NAT64 prefixes are judged by the IPv4 address they embed). Loopback, private,
shared (100.64.0.0/10: carrier NAT and cloud metadata such as 100.100.100.200), link-local,
documentation and every other special-purpose address is refused unless an allow-list entry (a host
name, an IP address or a CIDR network) of the operator exempts it. ``open_pinned`` then connects to
exactly those checked addresses, never resolving the name again: the request URL carries the pinned
IP, while the ``Host`` header and the TLS server name (SNI, and so the certificate check) stay the
original host name. Nothing here follows redirects; callers re-pin every hop.

What a caller is told about a failed connection (``public_reason``) is a category, never the
network or TLS error text: that text would tell a caller what answers at an address.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from urllib.parse import urlsplit

import httpx

#: ``resolver(host, port)`` -> the addresses to try, in order (tests inject one).
Resolver = Callable[[str, int], list[str]]
#: The names refusals give, in the order they are tried; an address that is none of these and still
#: not global is "non-global" (e.g. 100.64.0.0/10 reads "shared").
_KINDS = ("unspecified", "loopback", "link_local", "multicast", "reserved", "private")
_SHARED = ipaddress.ip_network("100.64.0.0/10")
#: Counted as global by ``is_global`` (Python 3.11) but not a destination of its own: 6to4 embeds an
#: IPv4 address (2002:a9fe:a9fe:: is 169.254.169.254) and 192.88.99.0/24 is the 6to4 relay anycast.
_TUNNELS = (ipaddress.ip_network("2002::/16"), ipaddress.ip_network("192.88.99.0/24"))
#: NAT64 prefixes: the last 32 bits are the IPv4 address actually reached.
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


class UrlRefused(ValueError):
    """The URL may not be fetched or called; the message says why and what is allowed."""


class HostNotResolved(UrlRefused):
    """The host name did not resolve (now): refused, but a later attempt may succeed."""


def resolve(host: str, port: int) -> list[str]:
    """Every address of ``host`` in the resolver's order of preference, without duplicates."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class NetPolicy:
    """Who may be reached. ``allow`` entries are host names (exact), IP addresses or CIDR networks
    exempt from the public-address rule; ``allow_setting`` is named in refusals so callers and
    operators know where the exemption lives; ``ca_bundle`` replaces the default trust store."""

    schemes: tuple[str, ...] = ("http", "https")
    allow: tuple[str, ...] = ()
    allow_setting: str = ""
    ca_bundle: str | None = None
    resolver: Resolver = resolve

    def allows_host(self, host: str) -> bool:
        return host.lower() in {entry.lower() for entry in self.allow}

    def allows_address(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        for entry in self.allow:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:  # a host name entry
                continue
        return False


@dataclass(frozen=True)
class PinnedUrl:
    """A URL whose host resolved to ``addresses``, all checked; connections go to these only."""

    url: httpx.URL
    host: str
    port: int
    addresses: tuple[str, ...]

    @property
    def host_header(self) -> str:
        default = 443 if self.url.scheme == "https" else 80
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == default else f"{name}:{self.port}"

    def via(self, address: str) -> httpx.URL:
        """The URL with the host replaced by ``address`` (the path, query and port unchanged)."""
        return self.url.copy_with(host=address)


def forbidden_kind(address: str) -> str | None:
    """Why ``address`` is not a public destination ("loopback", "private", "shared", "6to4", ...),
    or None when it is globally routable."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        elif any(ip in net for net in _NAT64):
            embedded = forbidden_kind(str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
            return f"NAT64 to {embedded}" if embedded else None
    if ip.is_multicast:  # 224.0.0.1 counts as global in Python 3.11
        return "multicast"
    if any(ip in net for net in _TUNNELS):
        return "6to4"
    if ip.is_global:
        return None
    if ip in _SHARED:
        return "shared"
    for attribute in _KINDS:
        if getattr(ip, f"is_{attribute}"):
            return attribute.replace("_", "-")
    return "non-global"


def pin(url: str, policy: NetPolicy, *, name: str) -> PinnedUrl:
    """Check ``url`` (named ``name`` in messages) and resolve its host once; raise UrlRefused."""
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise UrlRefused(f"{name} is not a valid URL: {exc}") from exc
    if parts.scheme not in policy.schemes:
        allowed = " or ".join(policy.schemes)
        raise UrlRefused(f"{name} must use {allowed}; got {parts.scheme or 'no scheme'!r}")
    if not hostname:
        raise UrlRefused(f"{name} has no host")
    if parts.username or parts.password:
        raise UrlRefused(f"{name} must not carry credentials")
    try:
        parsed = httpx.URL(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except (httpx.InvalidURL, ValueError) as exc:
        raise UrlRefused(f"{name} is not a valid URL: {exc}") from exc
    host = hostname.lower()
    try:
        addresses = policy.resolver(host, port)
    except (OSError, UnicodeError, ValueError) as exc:
        raise HostNotResolved(f"{name} host {host!r} does not resolve: {exc}") from exc
    if not addresses:
        raise HostNotResolved(f"{name} host {host!r} does not resolve")
    if not policy.allows_host(host):
        for address in addresses:
            kind = forbidden_kind(address)
            if kind and not policy.allows_address(ipaddress.ip_address(address.split("%")[0])):
                setting = policy.allow_setting
                hint = f" (operators can allow hosts with {setting})" if setting else ""
                raise UrlRefused(
                    f"{name} host {host!r} resolves to {kind} address {address}; only globally "
                    f"routable (public) addresses are allowed{hint}"
                )
    return PinnedUrl(url=parsed, host=host, port=port, addresses=tuple(addresses))


@cache
def _ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    """Certificate and host name verification on; the CA bundle given, else certifi's."""
    if ca_bundle is None:
        import certifi

        ca_bundle = certifi.where()
    return ssl.create_default_context(cafile=ca_bundle)


@contextmanager
def open_pinned(
    pinned: PinnedUrl,
    method: str,
    policy: NetPolicy,
    *,
    timeout: float,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Iterator[httpx.Response]:
    """Send one request to the pinned addresses (the next one only when connecting fails) and yield
    the streaming response. Proxies from the environment are ignored: they would resolve again."""
    verify = _ssl_context(policy.ca_bundle) if pinned.url.scheme == "https" else True
    all_headers = {**(headers or {}), "Host": pinned.host_header}
    with httpx.Client(timeout=timeout, verify=verify, trust_env=False, follow_redirects=False) as client:
        failure: httpx.ConnectError | None = None
        for address in pinned.addresses:
            request = client.build_request(
                method,
                pinned.via(address),
                content=content,
                headers=all_headers,
                extensions={"sni_hostname": pinned.host},
            )
            try:
                response = client.send(request, stream=True)
            except httpx.ConnectError as exc:  # this address is unreachable: try the next checked one
                failure = exc
                continue
            try:
                yield response
            finally:
                response.close()
            return
        assert failure is not None
        raise failure


def describe(exc: BaseException) -> str:
    """A short reason for a failed request for logs: the exception class and its message."""
    message = str(exc).strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def public_reason(exc: BaseException) -> str:
    """What a caller may learn of a failed request: a category only. Connection refused, host
    unreachable and a failed TLS handshake read the same, so no answer tells what listens where."""
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        return "could not connect or complete the TLS handshake"
    if isinstance(exc, httpx.RemoteProtocolError):  # it connected: the answer itself was wrong
        return f"the answer was not valid HTTP ({exc})"
    return "the connection failed"


def redact_url(url: str) -> str:
    """``url`` without user information, query and fragment (they often carry tokens), for logs and
    messages."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return url.split("?", 1)[0].split("#", 1)[0].rsplit("@", 1)[-1][:300]
    return f"{parts.scheme}://{host}{port}{parts.path}"[:300]
