"""``Annotated`` dependencies of the routes: the app's services and the caller's identity."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.http.services import Services

bearer = HTTPBearer(
    auto_error=False, description="An API key, when the service has keys configured (QALIGN_API_KEYS)."
)


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


ServicesDep = Annotated[Services, Depends(services)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]


def caller(svc: ServicesDep, credentials: Credentials) -> str | None:
    """The calling key's name (it owns the jobs it makes); None in open mode; else AuthError (401/403)."""
    return svc.keys.owner_of_token(credentials.credentials if credentials else None)


def metrics_caller(svc: ServicesDep, credentials: Credentials) -> None:
    """/metrics stays open for scrapers unless QALIGN_METRICS_REQUIRE_KEY is set."""
    if svc.settings.metrics_require_key:
        svc.keys.owner_of_token(credentials.credentials if credentials else None)


Owner = Annotated[str | None, Depends(caller)]
