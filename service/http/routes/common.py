"""OpenAPI response declarations shared by the routes, each with its headers and an example.

Every refusal is declared as ``application/problem+json`` with the ``Problem`` schema (what the
problem handlers send); ``service.http.openapi`` adds the schema to the components and decides where
FastAPI's generic 422 belongs. Routes compose these, e.g. ``responses={**AUTH, **NOT_FOUND}``.
"""

from __future__ import annotations

from typing import Any

from qalign_schema.jobs import TERMINAL_STATUSES
from qalign_schema.problems import ProblemKind
from service.http.schemas import FieldProblem, JobOut, Problem

#: Response declarations by status code, as FastAPI's ``responses=`` takes them.
Responses = dict[int | str, dict[str, Any]]

PROBLEM_JSON = "application/problem+json"
PROBLEM_SCHEMA = {"$ref": "#/components/schemas/Problem"}
JOB_SCHEMA = {"$ref": "#/components/schemas/JobOut"}
EXAMPLE_ID = "3f2c9a1e5b7d4c08a6e1f0b2d4c6e8a0"
EXAMPLE_BASE = "http://127.0.0.1:8000"


def header(description: str, *, integer: bool = False, required: bool = True) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", "minimum": 0} if integer else {"type": "string"}
    return {"description": description, "required": required, "schema": schema}


RETRY_AFTER = header("Seconds to wait before trying again.", integer=True)
LOCATION = header("The job's URL, /jobs/{id}.")
WWW_AUTHENTICATE = header('The scheme to use: Bearer realm="qalign".')
PREFERENCE_APPLIED = header("wait=N: the request was held until the job finished (Prefer: wait=N).")


def problem(
    status: int,
    kind: ProblemKind | None,
    detail: str,
    *,
    title: str,
    description: str | None = None,
    headers: dict[str, dict[str, Any]] | None = None,
    errors: list[FieldProblem] | None = None,
    instance: str = f"/jobs/{EXAMPLE_ID}",
) -> dict[str, Any]:
    """An error response: problem details with one example (``kind`` None: about:blank)."""
    example = Problem.of(status, detail, kind=kind, title=title, instance=instance, errors=errors).model_dump(
        exclude_none=True
    )
    declared: dict[str, Any] = {
        "description": description or title,
        "content": {PROBLEM_JSON: {"schema": PROBLEM_SCHEMA, "example": example}},
    }
    if headers:
        declared["headers"] = headers
    return declared


#: Any refusal; routes prefer the specific declarations below.
PROBLEM = problem(400, "bad-request", "what was wrong and what is allowed", title="Bad Request")
AUTH: Responses = {
    401: problem(
        401,
        "unauthorized",
        "this service requires an API key: send Authorization: Bearer <key>",
        title="Unauthorized",
        description="No API key, or an unknown one (when the service has keys configured).",
        headers={"WWW-Authenticate": WWW_AUTHENTICATE},
    ),
    403: problem(403, "forbidden", "this API key has been revoked", title="Forbidden"),
}
NOT_FOUND: Responses = {
    404: problem(
        404,
        "job-not-found",
        f"no job {EXAMPLE_ID}",
        title="Not Found",
        description="No such job for this caller (another key's job is not found either).",
    )
}
UNAVAILABLE: Responses = {
    503: problem(
        503,
        "not-ready",
        "the job store is unavailable: connection refused",
        title="Service Unavailable",
        description="A dependency (job store, object store, broker, worker) is down; nothing was done.",
        headers={"Retry-After": RETRY_AFTER},
    )
}
#: A query parameter out of range (routes with query parameters; FastAPI's validation answers it).
INVALID_QUERY: Responses = {
    422: problem(
        422,
        "invalid-parameters",
        "limit: Input should be less than or equal to 100 (allowed: 1 to 100)",
        title="Unprocessable Content",
        errors=[FieldProblem(field="limit", message="Input should be less than or equal to 100")],
        instance="/jobs",
    )
}
#: Every route about one job: its key, the job, the store.
JOB_ERRORS: Responses = {**AUTH, **NOT_FOUND, **UNAVAILABLE}


def _job_example(status: str) -> dict[str, Any]:
    """A job object as the API sends it, in ``status`` (validated by the model, so it stays valid)."""
    created = "2026-01-05T10:00:00Z"
    running = status != "queued"
    done = status in TERMINAL_STATUSES
    base = f"{EXAMPLE_BASE}/jobs/{EXAMPLE_ID}"
    job: dict[str, Any] = {
        "id": EXAMPLE_ID,
        "status": status,
        "stage": {"queued": "queued", "running": "denoising"}.get(status, "done"),
        "progress": {"queued": 0.0, "running": 0.42}.get(status, 1.0),
        "created_at": created,
        "started_at": "2026-01-05T10:00:01Z" if running else None,
        "finished_at": "2026-01-05T10:00:31Z" if done else None,
        "params": {"steps": 100, "seed": 1, "size": 512 if status == "succeeded" else None},
        "result": None,
        "error": None,
        "metrics": {"queue_s": 1.0},
        "appearances": 2,
        "urls": {
            "get": base,
            "cancel": base,
            "result": f"{base}/result",
            "events": f"{base}/events",
            "results": [f"{base}/results/0", f"{base}/results/1"],
        },
    }
    if status in ("queued", "running"):
        job |= {"queue_position": 0, "eta_s": 30.0 if running else 41.5}
    if status == "succeeded":
        job["results"] = [
            {
                "index": k,
                "url": f"{base}/result" if k == 0 else f"{base}/results/{k}",
                "content_type": "image/png",
                "width": 512,
                "height": 384,
                "expires_at": None,
                "adain_applied": "masked",
                "object_masks_found": True,
            }
            for k in range(2)
        ]
        job["result"] = job["results"][0]
        job["output"] = {
            "width": 512,
            "height": 384,
            "aspect_clamped": False,
            "grid_width": 512,
            "grid_height": 384,
            "crop": None,
        }
        job["usage"] = {"compute_s": 48.3, "unet_rows": 1064, "output_pixels": 2 * 512 * 384}
        job["metrics"] = {
            "queue_s": 1.0,
            "inversion_s": 13.6,
            "denoise_s": 32.7,
            "decode_s": 0.8,
            "total_s": 47.1,
            "inversion_cache_hits": 0,
            "adain_applied": "masked",
            "object_masks_found": True,
            "rows_per_step": 7,
            "output_width": 512,
            "output_height": 384,
            "aspect_clamped": False,
        }
    if status == "failed":
        job["error"] = {"type": "invalid_image", "detail": "structure: the image could not be decoded"}
    return JobOut.model_validate(job).model_dump(mode="json")


JOB_EXAMPLES = {status: _job_example(status) for status in ("queued", "running", "succeeded", "canceled")}


def job_response(
    description: str, status: str, *, headers: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A response carrying the job object, with an example job in ``status``."""
    declared: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": JOB_SCHEMA, "example": JOB_EXAMPLES[status]}},
    }
    if headers:
        declared["headers"] = headers
    return declared
