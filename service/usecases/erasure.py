"""Erasure: removing one job and its data before JOB_TTL (``DELETE /jobs/{id}?purge=true``).

Removed: the job record, its results (one per appearance), its inputs and the cached inversions its
runs used, except inputs and inversions that another stored job still lists (inputs are shared by
content digest).
A running job is flagged canceled first; its runner stops at its next check, finds the record gone
and deletes what it wrote meanwhile (service.jobs.runner), so no late write brings anything back.

Order: objects first, then the record, then the objects of the record's last state once more.
When the store cannot delete, BlobStoreDown is raised before the record is touched, so the
caller can retry and nothing is left unreachable but undeleted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from service.backends.blobs import BlobStore, BlobStoreDown, result_keys
from service.jobs import Job, JobStores, lifecycle
from service.jobs.records import listed_keys

logger = logging.getLogger("qalign.erasure")


@dataclass
class Erasure:
    """What one erasure removed (for the log line), and the record as it was when removed."""

    job: Job
    results: int = 0
    inputs: int = 0
    inversions: int = 0
    kept_shared: list[str] = field(default_factory=list)


def erase_job(stores: JobStores, blobs: BlobStore, job_id: str) -> Erasure | None:
    """Erase job ``job_id`` (ownership is the caller's check); None when it does not exist (any more)."""
    job = stores.records.apply(job_id, lifecycle.cancel)  # a queued job never runs now
    if job is None:
        return None
    erasure = Erasure(job=job)
    _delete_objects(stores, blobs, job, erasure)  # may raise BlobStoreDown: record still there
    last = stores.records.delete(job_id)
    if last is None:  # erased concurrently by another request
        return None
    erasure.job = last
    try:  # what the runner added between the first pass and the removal (result, inversions)
        _delete_objects(stores, blobs, last, erasure, count=False)
    except BlobStoreDown as exc:
        logger.warning("erased job %s: some objects are left for the expiry sweep: %s", job_id, exc)
    return erasure


def _delete_objects(
    stores: JobStores, blobs: BlobStore, job: Job, erasure: Erasure, *, count: bool = True
) -> None:
    shared = stores.records.listed_by_others(listed_keys(job), job.id)
    # Each attempt uploads its own objects, one per appearance image.
    for key in result_keys(job.id, job.attempts, len(job.appearance_keys)):
        blobs.delete(key)
    if count:
        erasure.results += len(job.results)
    for key in job.input_keys:
        if key in shared:
            if count:
                erasure.kept_shared.append(key)
            continue
        blobs.delete(key)
        erasure.inputs += int(count)
    for key in dict.fromkeys(job.inversion_keys):
        if key in shared:
            if count:
                erasure.kept_shared.append(key)
            continue
        blobs.delete(key)
        erasure.inversions += int(count)
