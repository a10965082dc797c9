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

from qalign_schema.jobs import ErrorOut, JobMetricsOut, JobOut, JobUrls, ResultOut
from service.jobs.estimates import QueueSnapshot
from service.jobs.model import Job, utcnow
from service.settings import Settings
from service.storage import ObjectStore, StorageUnavailable

logger = logging.getLogger("qalign.jobs")


def job_base(job: Job, settings: Settings, fallback: str | None = None) -> str | None:
    """The absolute base of a job's links: PUBLIC_BASE_URL, else the submission's base, else
    ``fallback`` (the current request's base, for records made before links were stored)."""
    base = settings.public_base or job.base_url or fallback
    return base.rstrip("/") if base else None


def job_urls(job_id: str, base: str) -> JobUrls:
    own = f"{base}/jobs/{job_id}"
    return JobUrls(get=own, cancel=own, result=f"{own}/result", events=f"{own}/events")


def job_out(
    job: Job,
    store: ObjectStore,
    settings: Settings,
    *,
    base_url: str | None = None,
    queue: QueueSnapshot | None = None,
) -> JobOut:
    """The public job object; result URLs are presigned per call (fresh expiry).

    When presigning fails (store credentials or endpoint trouble) the URL falls back to
    /jobs/{id}/result, which always works: a poll, a cancel or a webhook never fails on it.
    ``queue`` (read once per request) fills queue_position and eta_s; without it a running job
    still says queue_position 0.
    """
    base = job_base(job, settings, base_url)
    result = None
    if job.result is not None:
        try:
            url = store.presigned_url(job.result.key, settings.result_url_ttl)
        except StorageUnavailable:
            logger.warning("could not presign the result URL; using /jobs/{id}/result", exc_info=True)
            url = None
        expires = utcnow() + timedelta(seconds=settings.result_url_ttl) if url else None
        result = ResultOut(
            url=url or f"{base or ''}/jobs/{job.id}/result",
            content_type=job.result.content_type,
            width=job.result.width,
            height=job.result.height,
            expires_at=expires,
        )
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
        result=result,
        error=ErrorOut(**job.error.model_dump()) if job.error else None,
        metrics=JobMetricsOut(**job.metrics),
        urls=job_urls(job.id, base) if base else None,
        queue_position=position,
        eta_s=eta,
        waiting_for=waiting_for,
    )


def job_json(job: Job, store: ObjectStore, settings: Settings) -> bytes:
    """The job object serialised as the API serialises it (compact JSON)."""
    return job_out(job, store, settings).model_dump_json().encode()
