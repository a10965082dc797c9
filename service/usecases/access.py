"""Reading, cancelling and erasing a caller's jobs, and locating a result. A job belongs to the API
key that made it: another key's job is JobNotFound, exactly like a job that does not exist."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from service.backends.blobs import BlobNotFound, BlobStore
from service.jobs import Job, JobStores, lifecycle
from service.jobs.records import idempotency_scope
from service.logs import job_context
from service.settings import Settings
from service.usecases.erasure import erase_job
from service.usecases.errors import JobNotFound, ResultGone, ResultNotFound, ResultNotReady

logger = logging.getLogger("qalign.api")
JOB_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class ResultLocation:
    """Where GET /jobs/{id}/result finds the image: a local file, a redirect URL, or the bytes."""

    content_type: str
    path: Path | None = None
    url: str | None = None
    data: bytes | None = None


class JobAccess:
    def __init__(self, settings: Settings, stores: JobStores, blobs: BlobStore) -> None:
        self.settings, self.stores, self.blobs = settings, stores, blobs

    def get(self, job_id: str, owner: str | None) -> Job:
        job = self.stores.records.get(job_id) if JOB_ID.match(job_id) else None
        if job is None or job.owner != owner:
            raise JobNotFound(f"no job with id {job_id!r}")
        return job

    def cancel(self, job_id: str, owner: str | None) -> Job:
        self.get(job_id, owner)
        job = self.stores.records.apply(job_id, lifecycle.cancel)
        if job is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        with job_context(job_id):
            logger.info("cancel requested: job is %s", job.status)
        return job

    def erase(self, job_id: str, owner: str | None) -> None:
        """Erase the job and its data (service.usecases.erasure), and forget its Idempotency-Key: the key
        then submits a new job instead of answering with the erased one."""
        self.get(job_id, owner)
        with job_context(job_id):
            erased = erase_job(self.stores, self.blobs, job_id)
            if erased is None:
                raise JobNotFound(f"no job with id {job_id!r}")
            if erased.job.idempotency_key is not None:
                scope = idempotency_scope(owner, erased.job.idempotency_key)
                self.stores.idempotency.release(scope, job_id)
            logger.info(
                "job erased",
                extra={
                    "erased": {
                        "results": erased.results,
                        "inputs": erased.inputs,
                        "inversions": erased.inversions,
                        "kept_shared": len(erased.kept_shared),
                    }
                },
            )

    def result(self, job_id: str, owner: str | None, index: int = 0) -> ResultLocation:
        """Result ``index`` (k from 0, one per appearance in order) of the caller's job.

        An index outside the job's appearances is ResultNotFound (naming the range) whatever the
        job's status; a valid one of an unsucceeded job is ResultNotReady."""
        job = self.get(job_id, owner)
        count = len(job.appearance_keys)
        if not 0 <= index < count:
            allowed = "0" if count == 1 else f"0 to {count - 1}"
            raise ResultNotFound(
                f"job {job_id} has {count} appearance image{'s' if count > 1 else ''}, so no result {index}; "
                f"results are numbered {allowed}"
            )
        if job.status != "succeeded" or index >= len(job.results):
            why = "has not finished" if not job.finished else f"ended {job.status} and has no result"
            raise ResultNotReady(f"job {job_id} {why} (status {job.status})")
        key, content_type = job.results[index].key, job.results[index].content_type
        path = self.blobs.local_path(key)
        if path is not None:
            return ResultLocation(content_type, path=path)
        if self.settings.result_redirect:
            url = self.blobs.presigned_url(key, self.settings.result_url_ttl)
            if url:
                return ResultLocation(content_type, url=url)
        try:
            return ResultLocation(content_type, data=self.blobs.get(key))
        except BlobNotFound as exc:
            raise ResultGone(f"the result of job {job_id} is no longer in the store") from exc
