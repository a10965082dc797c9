"""Operations: /healthz, /readyz, /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.auth import AuthError
from service.http.deps import Credentials, ServicesDep, metrics_caller
from service.http.routes.common import AUTH

router = APIRouter()

_READINESS_SCHEMA = {
    "type": "object",
    "description": "mode and checks only for a caller with a valid API key, in open mode, or with "
    "QALIGN_READINESS_DETAILS; others get ready alone.",
    "required": ["ready"],
    "properties": {
        "ready": {"type": "boolean"},
        "mode": {"type": "string", "enum": ["embedded", "distributed"]},
        "checks": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["ok"],
                "properties": {"ok": {"type": "boolean"}, "detail": {"type": "string"}},
            },
        },
        "model": {
            "description": "The served model as its workers report it (null until one has loaded it): "
            "backbone (sd15 or sdxl), native size, and the output sizes it takes (`size`: a multiple of "
            "size_unit from min_size to max_size).",
            "anyOf": [
                {
                    "type": "object",
                    "required": ["backbone", "native_size", "size_unit", "min_size", "max_size"],
                    "properties": {
                        "name": {"type": ["string", "null"]},
                        "backbone": {"type": "string", "enum": ["sd15", "sdxl"]},
                        "title": {"type": "string"},
                        "native_size": {"type": "integer"},
                        "size_unit": {"type": "integer"},
                        "min_size": {"type": "integer"},
                        "max_size": {"type": "integer"},
                    },
                },
                {"type": "null"},
            ],
        },
    },
}
_MODEL = {
    "name": "stabilityai/stable-diffusion-xl-base-1.0",
    "backbone": "sdxl",
    "title": "Stable Diffusion XL",
    "native_size": 1024,
    "size_unit": 32,
    "min_size": 64,
    "max_size": 1536,
}
_READY = {
    "ready": True,
    "mode": "embedded",
    "checks": {"jobs": {"ok": True}, "store": {"ok": True}},
    "model": _MODEL,
}
_NOT_READY = {
    "ready": False,
    "mode": "distributed",
    "checks": {
        "jobs": {"ok": True},
        "store": {"ok": True},
        "workers": {"ok": False, "detail": "no live worker"},
    },
    "model": None,
}


@router.get(
    "/healthz",
    summary="Process is alive",
    responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}},
)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Job store, object store, broker and a live worker are reachable; the served model",
    response_class=JSONResponse,
    responses={
        200: {
            "description": "Every check passes.",
            "content": {"application/json": {"schema": _READINESS_SCHEMA, "example": _READY}},
        },
        503: {
            "description": "A check fails; the body names it.",
            "content": {"application/json": {"schema": _READINESS_SCHEMA, "example": _NOT_READY}},
        },
    },
)
def readyz(svc: ServicesDep, credentials: Credentials) -> JSONResponse:
    """The verdict is reused for QALIGN_READINESS_CACHE_S (a probe storm costs one check). Its
    details (which dependency failed, and how) go only to callers allowed to see them."""
    verdict = svc.readiness.verdict()
    status = 200 if verdict["ready"] else 503
    if not _sees_details(svc, credentials):
        return JSONResponse({"ready": verdict["ready"]}, status_code=status)
    return JSONResponse(verdict, status_code=status)


def _sees_details(svc: ServicesDep, credentials: Credentials) -> bool:
    """QALIGN_READINESS_DETAILS, a valid API key, or open mode (where anyone may do anything)."""
    if svc.settings.readiness_details:
        return True
    try:
        svc.keys.owner_of_token(credentials.credentials if credentials else None)
    except AuthError:
        return False
    return True


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    dependencies=[Depends(metrics_caller)],
    responses={
        200: {
            "description": "Prometheus text format.",
            "content": {
                CONTENT_TYPE_LATEST: {
                    "schema": {"type": "string"},
                    "example": 'qalign_jobs{status="queued"} 0.0\n',
                }
            },
        },
        **AUTH,
    },
)
def metrics(svc: ServicesDep) -> Response:
    return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)
