"""POST /transfer."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from starlette.concurrency import run_in_threadpool

from service.api.deps import Owner, ServicesDep
from service.api.intake import read_submission
from service.api.links import request_base
from service.api.routes.common import AUTH, PROBLEM
from service.api.schemas import JobOut, multipart_openapi
from service.api.watch import prefer_wait

router = APIRouter()


@router.post(
    "/transfer",
    status_code=202,
    response_model=JobOut,
    summary="Submit a transfer job",
    openapi_extra=multipart_openapi(),
    responses={
        200: {"model": JobOut, "description": "Idempotency-Key replay: the job the first request made"},
        201: {"model": JobOut, "description": "Prefer: wait=N and the job ended within N seconds"},
        **AUTH,
        **{code: PROBLEM for code in (400, 409, 413, 415, 422, 429, 503)},
    },
)
async def submit_transfer(
    request: Request,
    response: Response,
    svc: ServicesDep,
    owner: Owner,
    prefer: Annotated[
        str | None, Header(description="wait=N (1-60): hold the answer until the job ends or N s pass")
    ] = None,
) -> JobOut:
    """Multipart (files `structure`, `appearance` + parameter fields) or JSON with base64 images.

    Header `Idempotency-Key`: the same key with the same request returns the first job (200).
    Header `Prefer: wait=N`: answer once the job has ended (201) or after N seconds (202).
    """
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
