"""GET and DELETE /jobs/{id}, GET /jobs/{id}/result."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse, RedirectResponse

from service.api.deps import Owner, ServicesDep
from service.api.routes.common import EXAMPLE_ID, JOB_ERRORS, header, job_response, problem
from service.api.schemas import JobOut
from service.jobs.public import job_out

router = APIRouter()


@router.get(
    "/jobs/{job_id}",
    response_model=JobOut,
    summary="The job object",
    responses={200: job_response("The job.", "succeeded"), **JOB_ERRORS},
)
def get_job(job_id: str, svc: ServicesDep, owner: Owner) -> JobOut:
    return job_out(svc.jobs.get(job_id, owner), svc.store, svc.settings)


@router.delete(
    "/jobs/{job_id}",
    response_model=JobOut,
    summary="Cancel a job",
    responses={
        200: job_response("Queued: canceled at once. Finished: unchanged.", "canceled"),
        202: job_response("Running: the cancel is flagged; it stops at its next step.", "running"),
        **JOB_ERRORS,
    },
)
def cancel_job(job_id: str, response: Response, svc: ServicesDep, owner: Owner) -> JobOut:
    """Queued: canceled at once (200). Running: stops at its next step (202). Finished: unchanged (200)."""
    job = svc.jobs.cancel(job_id, owner)
    if job.status == "running":
        response.status_code = 202
    return job_out(job, svc.store, svc.settings)


_IMAGE = {"schema": {"type": "string", "format": "binary"}}


@router.get(
    "/jobs/{job_id}/result",
    response_class=Response,
    summary="The result image",
    responses={
        200: {
            "description": "The image, in the job's output_format.",
            "content": {"image/png": _IMAGE, "image/jpeg": _IMAGE, "image/webp": _IMAGE},
        },
        307: {
            "description": "Redirect to a fresh presigned URL of the object store.",
            "headers": {"Location": header("The presigned URL.")},
        },
        409: problem(
            409,
            "result-not-ready",
            f"job {EXAMPLE_ID} is running; the result exists once it has succeeded",
            title="Conflict",
            description="The job has no result (yet, or ever: failed or canceled).",
            instance=f"/jobs/{EXAMPLE_ID}/result",
        ),
        410: problem(
            410,
            "result-gone",
            f"the result of job {EXAMPLE_ID} has expired from the store",
            title="Gone",
            instance=f"/jobs/{EXAMPLE_ID}/result",
        ),
        **JOB_ERRORS,
    },
)
def get_result(job_id: str, svc: ServicesDep, owner: Owner) -> Response:
    found = svc.jobs.result(job_id, owner)
    if found.path is not None:
        return FileResponse(found.path, media_type=found.content_type)
    if found.url is not None:
        return RedirectResponse(found.url, status_code=307)
    return Response(found.data, media_type=found.content_type)
