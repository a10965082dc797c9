"""POST /transfer."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from service.api.deps import Owner, ServicesDep
from service.api.intake import read_submission
from service.api.routes.common import AUTH, PROBLEM
from service.api.schemas import JobOut, multipart_openapi
from service.jobs.public import job_out

router = APIRouter()


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
async def submit_transfer(request: Request, response: Response, svc: ServicesDep, owner: Owner) -> JobOut:
    """Multipart (files `structure`, `appearance` + parameter fields) or JSON with base64 images.

    Header `Idempotency-Key`: the same key with the same request returns the first job (200).
    """
    submission = await read_submission(request, svc.settings)
    job, created = await run_in_threadpool(svc.submitter.submit, submission, owner)
    response.headers["Location"] = f"/jobs/{job.id}"
    if not created:
        response.status_code = 200
    return job_out(job, svc.store, svc.settings)
