"""The public job document built from a stored record: what GET /jobs/{id} answers and what
webhooks send, one function for both so a webhook body is exactly the body a poll would return.

Links are absolute: the base is PUBLIC_BASE_URL, else the base the job was submitted through
(stored on the record, so a worker's webhook body carries the same links as a poll).

Kept apart from the record: the record has internals (store keys, worker, attempts) that callers
never see, and the public shape must not change when storage does. Pydantic only (no FastAPI), so
the worker can build webhook bodies without importing the HTTP layer.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from qalign_schema.jobs import ErrorOut, JobMetricsOut, JobOut, JobUrls, OutputOut, ResultOut
from service.backends.blobs import BlobStore, BlobStoreDown
from service.jobs.estimates import QueueSnapshot
from service.jobs.model import Job, utcnow
from service.jobs.usage import job_usage
from service.settings import Settings

logger = logging.getLogger("qalign.jobs")


def job_base(job: Job, settings: Settings, fallback: str | None = None) -> str | None:
    """The absolute base of a job's links: PUBLIC_BASE_URL, else the submission's base, else
    ``fallback`` (the current request's base, for records made before links were stored)."""
    base = settings.public_base or job.base_url or fallback
    return base.rstrip("/") if base else None


def job_urls(job_id: str, base: str, appearances: int = 1) -> JobUrls:
    own = f"{base}/jobs/{job_id}"
    return JobUrls(
        get=own,
        cancel=own,
        result=f"{own}/result",
        events=f"{own}/events",
        results=[f"{own}/results/{k}" for k in range(appearances)],
    )


def job_out(
    job: Job,
    blobs: BlobStore,
    settings: Settings,
    *,
    base_url: str | None = None,
    queue: QueueSnapshot | None = None,
) -> JobOut:
    """The public job object; result URLs are presigned per call (fresh expiry).

    When presigning fails (store credentials or endpoint trouble) the URL falls back to
    /jobs/{id}/result (/jobs/{id}/results/{k} for the later images), which always works: a poll, a
    cancel or a webhook never fails on it. ``queue`` (read once per request) fills queue_position
    and eta_s; without it a running job still says queue_position 0.
    """
    base = job_base(job, settings, base_url)
    results = [_result_out(job, index, blobs, settings, base) for index in range(len(job.results))]
    position = eta = waiting_for = None
    if queue is not None:
        position, eta, waiting_for = queue.position(job), queue.eta_s(job), queue.waiting_for(job)
    elif job.status == "running":
        position = 0
    return JobOut(
        id=job.id,
        status=job.status,
        stage=job.stage,
        progress=job.progress,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        params=job.params,
        appearances=len(job.appearance_keys),
        output=_output(job),
        result=results[0] if results else None,
        results=results,
        error=ErrorOut(**job.error.model_dump()) if job.error else None,
        metrics=JobMetricsOut(**job.metrics),
        usage=job_usage(job),
        urls=job_urls(job.id, base, len(job.appearance_keys)) if base else None,
        queue_position=position,
        eta_s=eta,
        waiting_for=waiting_for,
    )


def _result_out(job: Job, index: int, blobs: BlobStore, settings: Settings, base: str | None) -> ResultOut:
    stored = job.results[index]
    try:
        url = blobs.presigned_url(stored.key, settings.result_url_ttl)
    except BlobStoreDown:
        logger.warning("could not presign a result URL; using the API's result URL", exc_info=True)
        url = None
    expires = utcnow() + timedelta(seconds=settings.result_url_ttl) if url else None
    own = f"{base or ''}/jobs/{job.id}"
    return ResultOut(
        index=index,
        url=url or (f"{own}/result" if index == 0 else f"{own}/results/{index}"),
        content_type=stored.content_type,
        width=stored.width,
        height=stored.height,
        expires_at=expires,
        adain_applied=stored.adain_applied,
        object_masks_found=stored.object_masks_found,
    )


def _output(job: Job) -> OutputOut | None:
    """The output shape: from the run (v1.2 records), else from the first result of an older record."""
    if job.output is not None:
        return OutputOut.model_validate(job.output)
    if job.results:
        return OutputOut(width=job.results[0].width, height=job.results[0].height, aspect_clamped=False)
    return None


def job_json(job: Job, blobs: BlobStore, settings: Settings) -> bytes:
    """The job object serialised as the API serialises it (compact JSON)."""
    return job_out(job, blobs, settings).model_dump_json().encode()
