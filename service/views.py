"""The public job object built from a stored record: what GET /jobs/{id} answers and webhooks send.

One function for both, so a webhook body is exactly the body a poll would have returned.
"""

from __future__ import annotations

from datetime import timedelta

from service.jobs import Job, utcnow
from service.schemas import ErrorOut, JobMetricsOut, JobOut, ResultOut
from service.settings import Settings
from service.storage import ObjectStore


def job_out(job: Job, store: ObjectStore, settings: Settings) -> JobOut:
    """The public job object; result URLs are presigned per call (fresh expiry)."""
    result = None
    if job.result is not None:
        url = store.presigned_url(job.result.key, settings.result_url_ttl)
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
