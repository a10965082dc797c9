"""The job record, defined once: what the API, the Celery worker and the embedded runner share."""

from __future__ import annotations

import os
import socket
import uuid
from datetime import UTC, datetime
from typing import get_args

from pydantic import BaseModel, Field

from qalign_schema.jobs import JobStage, JobStatus

STATUSES: tuple[str, ...] = get_args(JobStatus)
STAGES: tuple[str, ...] = get_args(JobStage)
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})


class JobError(BaseModel):
    type: str
    detail: str


class JobResult(BaseModel):
    key: str
    content_type: str
    width: int
    height: int


class UndeliveredWebhook(BaseModel):
    """A webhook event given up on (queue full, URL refused, every attempt failed): kept on the job
    record so an operator can see what a receiver missed, and why."""

    webhook_id: str
    status: str
    reason: str
    detail: str
    at: datetime


class Job(BaseModel):
    """One transfer request and everything known about its run (internals included: store keys,
    worker, attempts; the public shape is service.api.schemas.JobOut)."""

    id: str
    status: JobStatus = "queued"
    stage: JobStage = "queued"
    progress: float = 0.0
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    params: dict = Field(default_factory=dict)
    structure_key: str
    appearance_key: str
    result: JobResult | None = None
    error: JobError | None = None
    metrics: dict[str, float | int | bool | str | None] = Field(default_factory=dict)
    cancel_requested: bool = False
    attempts: int = 0
    worker: str | None = None
    owner: str | None = None
    webhook_url: str | None = None
    webhook_events: list[str] | None = None  # the webhook_events_filter; None = every event
    webhook_undelivered: list[UndeliveredWebhook] = Field(default_factory=list)
    idempotency_key: str | None = None
    base_url: str | None = None  # absolute base of the job's links, fixed at submission
    revision: int = 1  # bumped by the store on every write: the events stream's event ids
    #: Store keys of the cached inversions this job's runs read or wrote (erasure removes those
    #: no other live job lists).
    inversion_keys: list[str] = Field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


def new_job_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


def worker_name() -> str:
    """hostname:pid, unique per worker process; what heartbeats and job records name."""
    return f"{socket.gethostname()}:{os.getpid()}"
