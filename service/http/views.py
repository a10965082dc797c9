"""Job objects as one request shows them: absolute links and, for unfinished jobs, the queue
position and ETA (the queue is read once per request, however many jobs the answer holds)."""

from __future__ import annotations

import logging

from qalign_schema.jobs import JobOut
from service.backends.blobs import BlobStore
from service.jobs import Job, JobStoreDown, JobStores
from service.jobs.estimates import QueueSnapshot
from service.jobs.public import job_out
from service.settings import Settings

logger = logging.getLogger("qalign.api")


class JobViews:
    def __init__(self, settings: Settings, stores: JobStores, blobs: BlobStore) -> None:
        self.settings, self.stores, self.blobs = settings, stores, blobs

    def one(self, job: Job, base_url: str | None) -> JobOut:
        return self.many([job], base_url)[0]

    def many(self, jobs: list[Job], base_url: str | None) -> list[JobOut]:
        """``base_url`` (the request's) is used only for records stored before links were."""
        queue = self._queue(jobs) if any(not job.finished for job in jobs) else None
        return [job_out(job, self.blobs, self.settings, base_url=base_url, queue=queue) for job in jobs]

    def _queue(self, jobs: list[Job]) -> QueueSnapshot | None:
        try:
            return QueueSnapshot.read(self.stores, jobs)
        except JobStoreDown:  # the record was read; positions are a nicety, not worth a 503
            logger.warning("could not read the queue for queue_position/eta_s", exc_info=True)
            return None
