"""POST /transfer, and GET /limits: what it accepts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from starlette.concurrency import run_in_threadpool

from qalign_schema.limits import Limits, limits
from qalign_schema.params import IMAGE_FORMAT_NAMES, IMAGE_FORMATS_TEXT, MAX_STEPS
from qalign_schema.submission import MAX_PREFER_WAIT_S
from service.http.deps import Owner, ServicesDep
from service.http.intake import read_submission
from service.http.links import request_base
from service.http.routes.common import (
    AUTH,
    LOCATION,
    PREFERENCE_APPLIED,
    RETRY_AFTER,
    UNAVAILABLE,
    Responses,
    job_response,
    problem,
)
from service.http.schemas import FieldProblem, JobOut, multipart_openapi
from service.http.watch import prefer_wait
from service.settings import Settings

router = APIRouter()

_REFUSALS: Responses = {
    400: problem(
        400,
        "not-an-image",
        f"appearance: not an image (send a {IMAGE_FORMATS_TEXT} file)",
        title="Bad Request",
        description="Not an image, a corrupt image, invalid JSON or base64, or a bad Idempotency-Key.",
        instance="/transfer",
    ),
    409: problem(
        409,
        "idempotency-key-reused",
        "this Idempotency-Key was used with a different request",
        title="Conflict",
        description="Idempotency-Key reused with another request, or its first request is still being "
        "processed (then with Retry-After).",
        headers={"Retry-After": {**RETRY_AFTER, "required": False}},
        instance="/transfer",
    ),
    413: problem(
        413,
        "too-large",
        "structure: the file is over the limit of 10485760 bytes",
        title="Content Too Large",
        description="A body, a file or an image's pixel count over the limits.",
        instance="/transfer",
    ),
    415: problem(
        415,
        "unsupported-media-type",
        f"appearance: unsupported image type (gif); allowed: {', '.join(IMAGE_FORMAT_NAMES)}",
        title="Unsupported Media Type",
        description="A recognised but unsupported image type, or a body that is neither multipart nor JSON.",
        instance="/transfer",
    ),
    422: problem(
        422,
        "invalid-parameters",
        f"steps: Input should be less than or equal to {MAX_STEPS} (allowed: >= 2 and <= {MAX_STEPS})",
        title="Unprocessable Content",
        description="A parameter out of range, unknown or inconsistent, a missing file part, or a refused "
        "webhook_url: each field is named with what is allowed.",
        errors=[
            FieldProblem(
                field="steps",
                message=f"Input should be less than or equal to {MAX_STEPS}",
                allowed=f">= 2 and <= {MAX_STEPS}",
            )
        ],
        instance="/transfer",
    ),
    429: problem(
        429,
        "queue-full",
        "100 jobs are queued; try again later",
        title="Too Many Requests",
        description="The queue is full, this key has too many unfinished jobs, or it has made its "
        "allowed submissions in the rate-limit window (/problems/rate-limited, with RateLimit headers).",
        headers={"Retry-After": RETRY_AFTER},
        instance="/transfer",
    ),
}


def deployment_limits(settings: Settings) -> Limits:
    """GET /limits' body: qalign_schema's rules with this deployment's size limits."""
    return limits(
        max_upload_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_pixels,
        max_request_bytes=settings.request_limit,
        max_json_bytes=settings.json_limit,
    )


@router.get(
    "/limits",
    response_model=Limits,
    summary="What POST /transfer accepts: limits and choices",
    responses={
        200: {
            "content": {
                "application/json": {
                    # With the settings' defaults (model_construct: no environment is read).
                    "example": deployment_limits(Settings.model_construct()).model_dump(mode="json")
                }
            }
        }
    },
)
def get_limits(svc: ServicesDep) -> Limits:
    """The limits a submission must fit (some are deployment settings) and the values each choice
    takes. No API key needed: the page at / reads it before a key is given, and it says nothing
    about any job."""
    return deployment_limits(svc.settings)


@router.post(
    "/transfer",
    status_code=202,
    response_model=JobOut,
    summary="Submit a transfer job",
    openapi_extra=multipart_openapi(),
    responses={
        202: job_response("Accepted: the job is queued.", "queued", headers={"Location": LOCATION}),
        200: job_response(
            "Idempotency-Key replay: the job the first request made.",
            "running",
            headers={"Location": LOCATION},
        ),
        201: job_response(
            "Prefer: wait=N and the job ended within N seconds: the finished job.",
            "succeeded",
            headers={"Location": LOCATION, "Preference-Applied": PREFERENCE_APPLIED},
        ),
        **AUTH,
        **_REFUSALS,
        **UNAVAILABLE,
    },
)
async def submit_transfer(
    request: Request,
    response: Response,
    svc: ServicesDep,
    owner: Owner,
    prefer: Annotated[
        str | None,
        Header(description=f"wait=N (1-{MAX_PREFER_WAIT_S}): hold the answer until the job ends or N s pass"),
    ] = None,
) -> JobOut:
    """Multipart (files `structure`, `appearance` + parameter fields) or JSON with base64 images.

    Header `Idempotency-Key`: the same key with the same request returns the first job (200).
    Header `Prefer: wait=N`: answer once the job has ended (201) or after N seconds (202).
    """
    rate = await run_in_threadpool(svc.rate_limiter.hit, owner)  # before the body is read
    if rate is not None:
        response.headers.update(rate.headers())
    wait = prefer_wait(prefer)
    submission = await read_submission(request, svc.settings)
    base = request_base(request, svc.settings)
    job, created = await run_in_threadpool(svc.submitter.submit, submission, owner, base)
    response.headers["Location"] = f"/jobs/{job.id}"
    if wait is not None:
        job = await svc.follower.wait(job, owner, wait, request.is_disconnected)
        response.headers["Preference-Applied"] = f"wait={wait}"
    if not created:
        response.status_code = 200
    elif job.finished and wait is not None:
        response.status_code = 201
    return await run_in_threadpool(svc.views.one, job, base)
