"""The public job document built from a stored record: what GET /jobs/{id} answers and what
webhooks send, one function for both so a webhook body is exactly the body a poll would return.

Kept apart from the record: the record has internals (store keys, worker, attempts) that callers
never see, and the public shape must not change when storage does. Pydantic only (no FastAPI), so
the worker can build webhook bodies without importing the HTTP layer.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from qalign_schema.jobs import ErrorOut, JobMetricsOut, JobOut, ResultOut
from service.jobs.model import Job, utcnow
from service.settings import Settings
from service.storage import ObjectStore, StorageUnavailable

logger = logging.getLogger("qalign.jobs")


def job_out(job: Job, store: ObjectStore, settings: Settings) -> JobOut:
    """The public job object; result URLs are presigned per call (fresh expiry).

    When presigning fails (store credentials or endpoint trouble) the URL falls back to
    /jobs/{id}/result, which always works: a poll, a cancel or a webhook never fails on it.
    """
    result = None
    if job.result is not None:
        try:
            url = store.presigned_url(job.result.key, settings.result_url_ttl)
        except StorageUnavailable:
            logger.warning("could not presign the result URL; using /jobs/{id}/result", exc_info=True)
            url = None
        expires = utcnow() + timedelta(seconds=settings.result_url_ttl) if url else None
        result = ResultOut(
            url=url or f"/jobs/{job.id}/result",
            content_type=job.result.content_type,
            width=job.result.width,
            height=job.result.height,
            expires_at=expires,
        )
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
    )


def job_json(job: Job, store: ObjectStore, settings: Settings) -> bytes:
    """The job object serialised as the API serialises it (compact JSON)."""
    return job_out(job, store, settings).model_dump_json().encode()
