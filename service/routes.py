"""HTTP routes: parse, call one Services operation, shape the answer. No logic lives here."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response, Security
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from service.context import Services
from service.intake import read_submission
from service.problems import ApiProblem
from service.schemas import JobOut, Problem, multipart_openapi
from service.storage import ObjectNotFound, StorageUnavailable

router = APIRouter()
PROBLEM = {"model": Problem, "content": {"application/problem+json": {}}}


AUTH = {401: PROBLEM, 403: PROBLEM}
bearer = HTTPBearer(
    auto_error=False, description="An API key, when the service has keys configured (QALIGN_API_KEYS)."
)


def services(request: Request) -> Services:
    return request.app.state.services


def caller(request: Request, _: HTTPAuthorizationCredentials | None = Security(bearer)) -> str | None:
    """The calling key's name (it owns the jobs it makes); None in open mode; else 401/403."""
    return services(request).authenticate(request.headers.get("authorization"))


def metrics_caller(request: Request) -> None:
    """/metrics stays open for scrapers unless QALIGN_METRICS_REQUIRE_KEY is set."""
    if services(request).settings.metrics_require_key:
        services(request).authenticate(request.headers.get("authorization"))


@router.post(
    "/transfer",
    status_code=202,
    response_model=JobOut,
    summary="Submit a transfer job",
    openapi_extra=multipart_openapi(),
    responses={
        200: {"model": JobOut, "description": "Idempotency-Key replay: the job the first request made"},
        **AUTH,
        **{code: PROBLEM for code in (400, 409, 413, 415, 422, 429, 503)},
    },
)
async def submit_transfer(
    request: Request, response: Response, owner: str | None = Depends(caller)
) -> JobOut:
    """Multipart (files `structure`, `appearance` + parameter fields) or JSON with base64 images.

    Header `Idempotency-Key`: the same key with the same request returns the first job (200).
    """
    svc = services(request)
    submission = await read_submission(request, svc.settings)
    job, created = await run_in_threadpool(svc.submit, submission, owner)
    response.headers["Location"] = f"/jobs/{job.id}"
    if not created:
        response.status_code = 200
    return svc.view(job)


@router.get("/jobs/{job_id}", response_model=JobOut, responses={**AUTH, 404: PROBLEM, 503: PROBLEM})
def get_job(job_id: str, request: Request, owner: str | None = Depends(caller)) -> JobOut:
    svc = services(request)
    return svc.view(svc.get_job(job_id, owner))


@router.delete(
    "/jobs/{job_id}",
    response_model=JobOut,
    responses={
        202: {"model": JobOut, "description": "Running job: it stops at its next step"},
        **AUTH,
        404: PROBLEM,
        503: PROBLEM,
    },
)
def cancel_job(
    job_id: str, request: Request, response: Response, owner: str | None = Depends(caller)
) -> JobOut:
    """Queued: canceled at once (200). Running: stops at its next step (202). Finished: unchanged (200)."""
    svc = services(request)
    job = svc.cancel(job_id, owner)
    if job.status == "running":
        response.status_code = 202
    return svc.view(job)


@router.get(
    "/jobs/{job_id}/result",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
        307: {"description": "Redirect to the presigned store URL"},
        **AUTH,
        404: PROBLEM,
        409: PROBLEM,
        410: PROBLEM,
        503: PROBLEM,
    },
)
def get_result(job_id: str, request: Request, owner: str | None = Depends(caller)) -> Response:
    svc = services(request)
    job = svc.get_job(job_id, owner)
    if job.status != "succeeded" or job.result is None:
        why = "has not finished" if not job.finished else f"ended {job.status} and has no result"
        raise ApiProblem(409, f"job {job_id} {why} (status {job.status})", kind="result-not-ready")
    key, content_type = job.result.key, job.result.content_type
    path = svc.store.local_path(key)
    if path is not None:
        return FileResponse(path, media_type=content_type)
    if svc.settings.result_redirect:
        url = svc.store.presigned_url(key, svc.settings.result_url_ttl)
        if url:
            return RedirectResponse(url, status_code=307)
    try:
        return Response(svc.store.get(key), media_type=content_type)
    except ObjectNotFound as exc:
        raise ApiProblem(
            410, f"the result of job {job_id} is no longer in the store", kind="result-gone"
        ) from exc
    except StorageUnavailable as exc:
        raise ApiProblem(503, f"the store is unavailable: {exc}", kind="not-ready") from exc


@router.get("/healthz", summary="Process is alive")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Job store, object store, broker and a live worker are reachable")
def readyz(request: Request) -> JSONResponse:
    verdict = services(request).readiness(fresh=True)
    return JSONResponse(verdict, status_code=200 if verdict["ready"] else 503)


@router.get(
    "/metrics", summary="Prometheus metrics", response_class=Response, dependencies=[Depends(metrics_caller)]
)
def metrics(request: Request) -> Response:
    return Response(generate_latest(services(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)
