"""GET /jobs, GET and DELETE /jobs/{id} (cancel, or erase with ?purge=true), DELETE /jobs/{id}/data
(erase), GET /jobs/{id}/result and /jobs/{id}/results/{k}, GET /jobs/{id}/events."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import FileResponse, RedirectResponse
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from qalign_schema.jobs import JobStatus, UsageOut
from qalign_schema.params import IMAGE_MEDIA_TYPES
from service.http.deps import Owner, ServicesDep
from service.http.links import request_base
from service.http.routes.common import (
    AUTH,
    EXAMPLE_ID,
    INVALID_QUERY,
    JOB_ERRORS,
    JOB_EXAMPLES,
    UNAVAILABLE,
    Responses,
    header,
    job_response,
    problem,
)
from service.http.schemas import FieldProblem, JobList, JobOut
from service.jobs import TERMINAL
from service.usecases.listing import DEFAULT_LIMIT, MAX_LIMIT

if TYPE_CHECKING:
    from service.jobs.model import Job
    from service.usecases.access import ResultLocation

router = APIRouter()

#: One event of the stream (OpenAPI 3.1: the schema of a text/event-stream describes each event).
_EVENT_SCHEMA = {
    "type": "object",
    "required": ["event", "data", "id"],
    "properties": {
        "event": {"type": "string", "enum": ["progress", *sorted(TERMINAL)]},
        "id": {"type": "string", "pattern": "^[0-9]+$", "description": "Increasing; send as Last-Event-ID."},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": "#/components/schemas/JobOut"},
            "description": "The job object.",
        },
        "retry": {"type": "integer", "minimum": 0},
    },
}
_EVENT_EXAMPLE = {"event": "succeeded", "id": "9", "data": json.dumps(JOB_EXAMPLES["succeeded"])}


@router.get(
    "/jobs",
    response_model=JobList,
    summary="The caller's jobs",
    responses={
        200: {
            "description": "One page, newest first.",
            "content": {
                "application/json": {
                    "example": {"jobs": [JOB_EXAMPLES["succeeded"]], "next_cursor": "MTc2NzYwNzIwMC4wfDNm"}
                }
            },
        },
        **AUTH,
        **INVALID_QUERY,
        **UNAVAILABLE,
    },
)
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


@router.get(
    "/usage",
    response_model=UsageOut,
    summary="What the caller's jobs cost",
    responses={
        200: {
            "description": "The sums over the caller's jobs created in the period.",
            "content": {
                "application/json": {
                    "example": {
                        "since": "2026-12-01T00:00:00Z",
                        "until": "2027-01-01T00:00:00Z",
                        "jobs": 120,
                        "succeeded": 117,
                        "unfinished": 1,
                        "compute_s": 5712.4,
                        "unet_rows": 61440,
                        "output_megapixels": 30.67,
                    }
                }
            },
        },
        **AUTH,
        **INVALID_QUERY,
        **UNAVAILABLE,
    },
)
def get_usage(
    svc: ServicesDep,
    owner: Owner,
    since: Annotated[
        datetime | None,
        Query(description="Start (inclusive, ISO 8601; UTC without a zone); default: every kept job."),
    ] = None,
    until: Annotated[datetime | None, Query(description="End (exclusive, ISO 8601); default: now.")] = None,
) -> UsageOut:
    """The caller's jobs created in [since, until): how many, how many succeeded, and their compute
    seconds, UNet rows and output megapixels (the sum of each ended job's ``usage``)."""
    return svc.usage.report(owner, since, until)


@router.get(
    "/jobs/{job_id}",
    response_model=JobOut,
    summary="The job object",
    responses={200: job_response("The job.", "succeeded"), **JOB_ERRORS},
)
def get_job(job_id: str, request: Request, svc: ServicesDep, owner: Owner) -> JobOut:
    return svc.views.one(svc.jobs.get(job_id, owner), request_base(request, svc.settings))


@router.delete(
    "/jobs/{job_id}",
    response_model=JobOut,
    summary="Cancel a job",
    responses={
        200: job_response("Queued: canceled at once. Finished: unchanged.", "canceled"),
        202: job_response("Running: the cancel is flagged; it stops at its next step.", "running"),
        204: {"description": "purge=true: the job and its data were erased"},
        **JOB_ERRORS,
        **INVALID_QUERY,
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
    summary="Progress events of a job (Server-Sent Events)",
    responses={
        200: {
            "description": "`progress` events, then one `succeeded`, `failed` or `canceled` event; each "
            "`data` is the job object, each `id` an increasing integer.",
            "content": {"text/event-stream": {"schema": _EVENT_SCHEMA, "example": _EVENT_EXAMPLE}},
        },
        204: {"description": "Last-Event-ID is the terminal event: nothing more will come."},
        **JOB_ERRORS,
        422: problem(
            422,
            "invalid-parameters",
            "header.last-event-id: Input should be a valid integer",
            title="Unprocessable Content",
            description="Last-Event-ID is not a whole number >= 0.",
            instance=f"/jobs/{EXAMPLE_ID}/events",
        ),
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

    def render(current: Job) -> str:
        return svc.views.one(current, base).model_dump_json()

    stream = svc.follower.events(job, owner, last_event_id, render)
    return EventSourceResponse(stream, ping=svc.settings.events_ping_s)


@router.delete(
    "/jobs/{job_id}/data",
    status_code=204,
    response_class=Response,
    summary="Erase a job and its data",
    responses={204: {"description": "The job and its data were erased"}, **JOB_ERRORS},
)
def erase_job_data(job_id: str, svc: ServicesDep, owner: Owner) -> Response:
    """Erase the job: record, inputs, result and cached inversions no other job uses; a running job
    is canceled first. Afterwards every URL of the job answers 404."""
    svc.jobs.erase(job_id, owner)
    return Response(status_code=204)


#: Each output format's media type with a binary schema: what makes generators type the body as a file
#: (openapi-python-client: a ``File``, once its ``content_type_overrides`` maps these media types to
#: application/octet-stream, the only binary one it knows; contentMediaType alone gives a string).
_RESULT_IMAGE = {
    "description": "The image, in the job's output_format.",
    "content": {media: {"schema": {"type": "string", "format": "binary"}} for media in IMAGE_MEDIA_TYPES},
}
_RESULT_REDIRECT = {
    "description": "Redirect to a fresh presigned URL of the object store.",
    "headers": {"Location": header("The presigned URL.")},
}


def _result_errors(instance: str) -> Responses:
    return {
        409: problem(
            409,
            "result-not-ready",
            f"job {EXAMPLE_ID} is running; the result exists once it has succeeded",
            title="Conflict",
            description="The job has no result (yet, or ever: failed or canceled).",
            instance=instance,
        ),
        410: problem(
            410,
            "result-gone",
            f"the result of job {EXAMPLE_ID} has expired from the store",
            title="Gone",
            instance=instance,
        ),
        **JOB_ERRORS,
    }


@router.get(
    "/jobs/{job_id}/result",
    response_class=Response,
    summary="The (first) result image",
    responses={200: _RESULT_IMAGE, 307: _RESULT_REDIRECT, **_result_errors(f"/jobs/{EXAMPLE_ID}/result")},
)
def get_result(job_id: str, svc: ServicesDep, owner: Owner) -> Response:
    """The result image; for a job with several appearance images, the first one's result (the
    same as `/jobs/{id}/results/0`)."""
    return _result_response(svc.jobs.result(job_id, owner))


_RESULT_K_ERRORS = _result_errors(f"/jobs/{EXAMPLE_ID}/results/1")
_RESULT_K_ERRORS[404] = problem(
    404,
    "result-not-found",
    f"job {EXAMPLE_ID} has 2 appearance images, so no result 2; results are numbered 0 to 1",
    title="Not Found",
    description="No such job for this caller, or k is not one of its results (0 to appearances - 1).",
    instance=f"/jobs/{EXAMPLE_ID}/results/2",
)
_RESULT_K_ERRORS[422] = problem(
    422,
    "invalid-parameters",
    "k: Input should be a valid integer, unable to parse string as an integer",
    title="Unprocessable Content",
    errors=[FieldProblem(field="k", message="Input should be a valid integer")],
    instance=f"/jobs/{EXAMPLE_ID}/results/first",
)


@router.get(
    "/jobs/{job_id}/results/{k}",
    response_class=Response,
    summary="Result image k",
    responses={200: _RESULT_IMAGE, 307: _RESULT_REDIRECT, **_RESULT_K_ERRORS},
)
def get_result_k(
    job_id: str,
    k: Annotated[int, Path(description="Which result: the appearance image's position, from 0.")],
    svc: ServicesDep,
    owner: Owner,
) -> Response:
    """The result made from appearance image `k` (from 0, in submission order). 404 naming the
    range when the job has no such appearance; 409 while the job has not succeeded."""
    return _result_response(svc.jobs.result(job_id, owner, k))


def _result_response(found: ResultLocation) -> Response:
    if found.path is not None:
        return FileResponse(found.path, media_type=found.content_type)
    if found.url is not None:
        return RedirectResponse(found.url, status_code=307)
    return Response(found.data, media_type=found.content_type)
