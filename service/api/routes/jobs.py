"""GET and DELETE /jobs/{id} (cancel, or erase with ?purge=true), DELETE /jobs/{id}/data (erase),
GET /jobs/{id}/result."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response
from fastapi.responses import FileResponse, RedirectResponse

from service.api.deps import Owner, ServicesDep
from service.api.routes.common import AUTH, PROBLEM
from service.api.schemas import JobOut
from service.jobs.public import job_out

router = APIRouter()


@router.get("/jobs/{job_id}", response_model=JobOut, responses={**AUTH, 404: PROBLEM, 503: PROBLEM})
def get_job(job_id: str, svc: ServicesDep, owner: Owner) -> JobOut:
    return job_out(svc.jobs.get(job_id, owner), svc.store, svc.settings)


@router.delete(
    "/jobs/{job_id}",
    response_model=JobOut,
    responses={
        202: {"model": JobOut, "description": "Running job: it stops at its next step"},
        204: {"description": "purge=true: the job and its data were erased"},
        **AUTH,
        404: PROBLEM,
        503: PROBLEM,
    },
)
def cancel_job(
    job_id: str,
    response: Response,
    svc: ServicesDep,
    owner: Owner,
    purge: bool = Query(False, description="Erase the job and its data (as DELETE /jobs/{id}/data)"),
) -> JobOut | Response:
    """Queued: canceled at once (200). Running: stops at its next step (202). Finished: unchanged (200).
    With purge=true: erased (204)."""
    if purge:
        return erase_job_data(job_id, svc, owner)
    job = svc.jobs.cancel(job_id, owner)
    if job.status == "running":
        response.status_code = 202
    return job_out(job, svc.store, svc.settings)


@router.delete(
    "/jobs/{job_id}/data",
    status_code=204,
    response_class=Response,
    responses={204: {"description": "The job and its data were erased"}, **AUTH, 404: PROBLEM, 503: PROBLEM},
)
def erase_job_data(job_id: str, svc: ServicesDep, owner: Owner) -> Response:
    """Erase the job: record, inputs, result and cached inversions no other job uses; a running job
    is canceled first. Afterwards every URL of the job answers 404."""
    svc.jobs.erase(job_id, owner)
    return Response(status_code=204)


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
def get_result(job_id: str, svc: ServicesDep, owner: Owner) -> Response:
    found = svc.jobs.result(job_id, owner)
    if found.path is not None:
        return FileResponse(found.path, media_type=found.content_type)
    if found.url is not None:
        return RedirectResponse(found.url, status_code=307)
    return Response(found.data, media_type=found.content_type)
