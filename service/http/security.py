"""Browser-facing protections of every response, and who may shape the API's links.

- ``SecurityHeadersMiddleware``: ``X-Content-Type-Options: nosniff``, ``Referrer-Policy:
  no-referrer``, and a Content-Security-Policy on every response: HTML pages get the page policy
  (own scripts and styles only, no framing) unless the route set its own, to which
  ``frame-ancestors 'none'`` is added; API responses get ``default-src 'none'`` (a JSON or image
  answer opened in a browser runs nothing). ``X-Frame-Options: DENY`` for older browsers.
- ``HostAllowListMiddleware``: with QALIGN_ALLOWED_HOSTS set (and no PUBLIC_BASE_URL), a request
  for another Host is refused (400) before any link could be built from it. Probes (/healthz,
  /readyz, /metrics) are exempt: kubelets and scrapers address pods by IP.
- ``install_cors``: CORS for the origins in QALIGN_CORS_ALLOW_ORIGINS, nothing when empty (off).
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http.problems import problem_response
from service.settings import Settings

#: The web page: its own script, styles and images (data: and blob: for previews of chosen files and
#: results; connect-src blob: so the page can read back an object URL it made, e.g. a result to save).
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self' blob:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: Everything else (JSON, problem details, images, event streams): nothing runs, nothing frames it.
API_POLICY = "default-src 'none'; frame-ancestors 'none'"
PROBES = ("/healthz", "/readyz", "/metrics")


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("x-content-type-options", "nosniff")
                headers.setdefault("referrer-policy", "no-referrer")
                headers.setdefault("x-frame-options", "DENY")
                own = headers.get("content-security-policy")
                if own is not None:
                    if "frame-ancestors" not in own:
                        headers["content-security-policy"] = f"{own}; frame-ancestors 'none'"
                elif headers.get("content-type", "").startswith("text/html"):
                    headers["content-security-policy"] = PAGE_POLICY
                else:
                    headers["content-security-policy"] = API_POLICY
            await send(message)

        await self.app(scope, receive, with_headers)


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """``host`` (without port) is an entry, or under a ``*.domain`` entry."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.lower().rstrip(".")
    return any(entry == name or (entry.startswith("*.") and name.endswith(entry[1:])) for entry in allowed)


class HostAllowListMiddleware:
    """400 for a Host outside ``allowed`` (after trusted proxies' X-Forwarded-Host was applied)."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...]) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.allowed and scope.get("path") not in PROBES:
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if not host_allowed(host, self.allowed):
                detail = (
                    f"this service does not answer for Host {host[:100]!r}; allowed: "
                    f"{', '.join(self.allowed)} (QALIGN_ALLOWED_HOSTS)"
                )
                await problem_response(400, detail, kind="host-not-allowed")(scope, receive, send)
                return
        await self.app(scope, receive, send)


def install_host_check(app: FastAPI, settings: Settings) -> None:
    """The Host allow-list, when QALIGN_ALLOWED_HOSTS is set and PUBLIC_BASE_URL (which makes the
    Host irrelevant to links) is not. Install it inside ForwardedHeadersMiddleware."""
    if settings.allowed_host_names and not settings.public_base:
        app.add_middleware(HostAllowListMiddleware, allowed=settings.allowed_host_names)


def install_cors(app: FastAPI, settings: Settings) -> None:
    """CORS for QALIGN_CORS_ALLOW_ORIGINS; install it outermost, so preflights are answered first."""
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Prefer", "Last-Event-ID"],
            expose_headers=["Location", "Retry-After", "Preference-Applied", "Idempotent-Replayed"],
            max_age=600,
        )
