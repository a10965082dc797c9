"""The absolute base of the links the API hands out, and the proxy headers that shape it.

PUBLIC_BASE_URL wins when set. Otherwise the base is the request's own (scheme, Host, root path),
where a trusted reverse proxy's X-Forwarded-Proto and X-Forwarded-Host replace the scheme and host
it saw: a proxy terminating TLS for https://qalign.example.com makes links under that name, not
under http://10.0.0.5:8000. Peers not listed in FORWARDED_ALLOW_IPS cannot choose the links.
"""

from __future__ import annotations

import ipaddress

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.settings import Settings


def request_base(request: Request, settings: Settings) -> str:
    """What a job submitted by ``request`` stores as its links' base (no trailing slash)."""
    return settings.public_base or str(request.base_url).rstrip("/")


class TrustedPeers:
    """``*`` or a comma list of addresses and networks (``10.0.0.0/8``)."""

    def __init__(self, spec: str) -> None:
        entries = [entry.strip() for entry in spec.split(",") if entry.strip()]
        self.everyone = "*" in entries
        self.networks = [ipaddress.ip_network(e, strict=False) for e in entries if e != "*"]

    def __contains__(self, host: str | None) -> bool:
        if self.everyone:
            return True
        try:
            address = ipaddress.ip_address(host or "")
        except ValueError:
            return False
        return any(address in network for network in self.networks)


def _first(value: bytes) -> str:
    """The first (client-most) entry of a comma list header set by a chain of proxies."""
    return value.decode("latin-1").split(",")[0].strip()


class ForwardedHeadersMiddleware:
    """Applies X-Forwarded-Proto and X-Forwarded-Host of trusted peers to the request scope, so
    ``request.base_url`` is the address the client used. (uvicorn's own proxy handling knows no
    X-Forwarded-Host; ``qalign serve`` turns it off so this middleware sees the real peer.)"""

    def __init__(self, app: ASGIApp, trusted: str) -> None:
        self.app, self.trusted = app, TrustedPeers(trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            client = scope.get("client")
            if (client[0] if client else None) in self.trusted:
                scope = self._apply(scope)
        await self.app(scope, receive, send)

    @staticmethod
    def _apply(scope: Scope) -> Scope:
        headers = dict(scope["headers"])
        proto = _first(headers.get(b"x-forwarded-proto", b"")).lower()
        host = _first(headers.get(b"x-forwarded-host", b""))
        if proto not in ("http", "https") and not host:
            return scope
        scope = dict(scope)
        if proto in ("http", "https"):
            scope["scheme"] = proto
        if host:
            others = [(k, v) for k, v in scope["headers"] if k != b"host"]
            scope["headers"] = [(b"host", host.encode("latin-1")), *others]
        return scope
