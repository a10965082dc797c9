"""Operations: /healthz, /readyz, /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import ServicesDep, metrics_caller

router = APIRouter()


@router.get("/healthz", summary="Process is alive")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Job store, object store, broker and a live worker are reachable")
def readyz(svc: ServicesDep) -> JSONResponse:
    verdict = svc.readiness.verdict(fresh=True)
    return JSONResponse(verdict, status_code=200 if verdict["ready"] else 503)


@router.get(
    "/metrics", summary="Prometheus metrics", response_class=Response, dependencies=[Depends(metrics_caller)]
)
def metrics(svc: ServicesDep) -> Response:
    return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)
