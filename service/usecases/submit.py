"""Accepting a transfer: store the inputs, create the record, hand the id to the runner, under the
Idempotency-Key protocol (the same key and request give the same job; another request is a 409)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from qalign_core.params import TransferParams
from service.backends.blobs import BlobStore
from service.jobs import Job, JobStoreDown, JobStores, lifecycle, new_job_id, utcnow
from service.jobs.records import idempotency_scope
from service.logs import job_context
from service.settings import Settings
from service.usecases.admission import Capacity, Readiness
from service.usecases.errors import IdempotencyConflict, NotReady, QueueFull
from service.usecases.job_queue import JobQueue

logger = logging.getLogger("qalign.api")
#: How long an Idempotency-Key reservation lives before its job record exists (a crashed request
#: frees the key after this); once the job exists the key lives as long as its record
#: (``IdempotencyKeys.confirm``).
RESERVATION_TTL = 60
#: How long a duplicate request waits for the job of the request that reserved its key.
REPLAY_WAIT_S = 10.0
REPLAY_POLL_S = 0.05


def request_fingerprint(submission: Submission) -> str:
    """Digest of the canonical request: effective parameters, input digests (every appearance, in
    order), webhook_url and the webhook events filter."""
    canonical = {
        "params": submission.params.model_dump(mode="json"),
        "structure": hashlib.sha256(submission.structure[0]).hexdigest(),
        "appearances": [hashlib.sha256(data).hexdigest() for data, _ in submission.appearances],
        "webhook_url": submission.webhook_url,
        "webhook_events": submission.webhook_events,
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


class Counter(Protocol):
    """Where accepted submissions are counted (the HTTP edge passes its Prometheus counter)."""

    def inc(self) -> None: ...


@dataclass
class Submission:
    params: TransferParams
    structure: tuple[bytes, str]  # (bytes, content type)
    appearances: list[tuple[bytes, str]]  # 1 .. MAX_APPEARANCES, in the caller's order
    webhook_url: str | None
    idempotency_key: str | None = None
    webhook_events: list[str] | None = None  # webhook_events_filter; None = every event


class Submitter:
    """The POST /transfer use case; refusals are domain errors (service.usecases.errors, store errors)."""

    def __init__(
        self,
        settings: Settings,
        stores: JobStores,
        blobs: BlobStore,
        queue: JobQueue,
        readiness: Readiness,
        capacity: Capacity,
        submitted: Counter,
    ) -> None:
        self.settings, self.stores, self.blobs, self.queue = settings, stores, blobs, queue
        self.readiness, self.capacity, self.submitted = readiness, capacity, submitted

    def submit(
        self, submission: Submission, owner: str | None = None, base_url: str | None = None
    ) -> tuple[Job, bool]:
        """(job, created): with an Idempotency-Key already used by this owner, the earlier job
        (created False) when the request is the same, IdempotencyConflict when it differs.
        ``base_url`` is stored on the job: the absolute base of its links (webhooks included)."""
        scope = fingerprint = None
        if submission.idempotency_key is not None:
            scope = idempotency_scope(owner, submission.idempotency_key)
            fingerprint = request_fingerprint(submission)
            existing = self.stores.idempotency.get(scope)
            if existing is not None:
                return self._replay(existing, fingerprint, owner), False
        self.readiness.require()
        self.readiness.check_size(submission.params.size)
        self.capacity.require(owner)  # early, before storing inputs; capacity.admit decides
        structure_key = self.blobs.put_input(*submission.structure)
        appearance_keys = [self.blobs.put_input(data, ctype) for data, ctype in submission.appearances]
        job = Job(
            id=new_job_id(),
            created_at=utcnow(),
            params=submission.params.model_dump(mode="json"),
            structure_key=structure_key,
            appearance_keys=appearance_keys,
            webhook_url=submission.webhook_url,
            webhook_events=submission.webhook_events,
            owner=owner,
            idempotency_key=submission.idempotency_key,
            base_url=base_url,
        )
        if scope is not None:
            record = {"job_id": job.id, "fingerprint": fingerprint}
            existing = self.stores.idempotency.reserve(scope, record, RESERVATION_TTL)
            if existing is not None:  # a concurrent request with the same key won the reservation
                return self._replay(existing, fingerprint, owner), False
        self._create(job, scope)
        self._enqueue(job, scope)
        return job, True

    def _create(self, job: Job, scope: str | None) -> None:
        """Insert the record under the queue limits (atomic: concurrent POSTs cannot overrun them)."""
        try:
            self.capacity.admit(job)
            if scope is not None:
                self.stores.idempotency.confirm(scope, self.settings.job_ttl)
        except (JobStoreDown, QueueFull):  # the key is free again for the retry
            if scope is not None:
                with contextlib.suppress(JobStoreDown):
                    self.stores.idempotency.release(scope, job.id)
            raise

    def _enqueue(self, job: Job, scope: str | None) -> None:
        with job_context(job.id):
            try:
                self.queue.submit(job.id)
            except Exception as exc:  # broker down between readiness and publish
                self._not_enqueued(job, scope)
                logger.warning("could not queue job: %s", exc)
                raise NotReady(
                    f"the job queue (broker) is unavailable: {exc}; nothing was queued, retry later"
                ) from exc
            self.submitted.inc()
            logger.info("job submitted", extra={"params": job.params, "owner": job.owner})

    def _replay(self, existing: dict[str, Any], fingerprint: str | None, owner: str | None) -> Job:
        """The job an earlier request with the same Idempotency-Key made, or a conflict."""
        if existing.get("fingerprint") != fingerprint:
            raise IdempotencyConflict(
                "this Idempotency-Key was already used with a different request (other images, parameters "
                "or webhook_url); use a new key for a new request"
            )
        # The request that reserved the key may still be writing the record.
        waiting = Retrying(
            stop=stop_after_delay(REPLAY_WAIT_S),
            wait=wait_fixed(REPLAY_POLL_S),
            retry=retry_if_result(lambda job: job is None or job.owner != owner),
            retry_error_callback=lambda _: None,
        )
        job: Job | None = waiting(self.stores.records.get, existing["job_id"])
        if job is None:
            raise IdempotencyConflict(
                "a request with this Idempotency-Key is still being processed; retry shortly",
                in_progress=True,
            )
        return job

    def _not_enqueued(self, job: Job, scope: str | None) -> None:
        """The broker refused the job: fail its record and free its Idempotency-Key for a retry."""
        try:
            self.stores.records.apply(job.id, lifecycle.not_enqueued)
            if scope is not None:
                self.stores.idempotency.release(scope, job.id)
        except JobStoreDown:
            logger.warning("could not mark the unqueued job failed: job store unreachable")
