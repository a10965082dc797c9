"""GET /jobs, GET and DELETE /jobs/{id} (cancel, or erase with ?purge=true), DELETE /jobs/{id}/data
(erase), GET /jobs/{id}/result, GET /jobs/{id}/events."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import FileResponse, RedirectResponse
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from qalign_schema.jobs import JobStatus
from service.api.deps import Owner, ServicesDep
from service.api.links import request_base
from service.api.listing import DEFAULT_LIMIT, MAX_LIMIT
from service.api.routes.common import AUTH, PROBLEM
from service.api.schemas import JobList, JobOut

router = APIRouter()


@router.get("/jobs", response_model=JobList, responses={**AUTH, 422: PROBLEM, 503: PROBLEM})
def list_jobs(
    request: Request,
    svc: ServicesDep,
    owner: Owner,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Jobs per page.")] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> JobList:
    """The caller's jobs (those of its API key), newest first."""
    jobs, next_cursor = svc.listing.page(owner, status=status, limit=limit, cursor=cursor)
    return JobList(jobs=svc.views.many(jobs, request_base(request, svc.settings)), next_cursor=next_cursor)


@router.get("/jobs/{job_id}", response_model=JobOut, responses={**AUTH, 404: PROBLEM, 503: PROBLEM})
def get_job(job_id: str, request: Request, svc: ServicesDep, owner: Owner) -> JobOut:
    return svc.views.one(svc.jobs.get(job_id, owner), request_base(request, svc.settings))


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
    request: Request,
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
    return svc.views.one(job, request_base(request, svc.settings))


@router.get(
    "/jobs/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "progress events, then the terminal one"},
        204: {"description": "Last-Event-ID is the terminal event: nothing more will come"},
        **AUTH,
        404: PROBLEM,
        422: PROBLEM,
        503: PROBLEM,
    },
)
async def job_events(
    job_id: str,
    request: Request,
    svc: ServicesDep,
    owner: Owner,
    last_event_id: Annotated[
        int | None, Header(ge=0, description="Resume after this event id (sent back by EventSource).")
    ] = None,
) -> Response:
    """Server-Sent Events: `progress` on every status, stage or progress change, then one event named
    `succeeded`, `failed` or `canceled`; each carries the job object; the stream then ends."""
    job = await run_in_threadpool(svc.jobs.get, job_id, owner)
    if svc.follower.nothing_after(job, last_event_id):
        return Response(status_code=204)
    base = request_base(request, svc.settings)

    def render(current) -> str:
        return svc.views.one(current, base).model_dump_json()

    stream = svc.follower.events(job, owner, last_event_id, render)
    return EventSourceResponse(stream, ping=svc.settings.events_ping_s)


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
