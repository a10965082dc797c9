"""The job record, defined once: what the API, the Celery worker and the embedded runner share."""

from __future__ import annotations

import os
import socket
import uuid
from datetime import UTC, datetime
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, Field

from qalign_schema.jobs import TERMINAL_STATUSES, ErrorType, JobStage, JobStatus, UndeliveredReason
from qalign_schema.params import AdainMode

STATUSES: tuple[str, ...] = get_args(JobStatus)
STAGES: tuple[str, ...] = get_args(JobStage)
#: The statuses a job never leaves (defined once, in qalign_schema).
TERMINAL: frozenset[str] = TERMINAL_STATUSES


class JobError(BaseModel):
    type: ErrorType
    detail: str


class JobResult(BaseModel):
    """One stored result image (the one made from appearance k is ``Job.results[k]``)."""

    key: str
    content_type: str
    width: int
    height: int
    adain_applied: AdainMode | None = None  # the AdaIN that ran for this pair; None on old records
    object_masks_found: bool | None = None


class UndeliveredWebhook(BaseModel):
    """A webhook event given up on (``reason``: its URL refused, or every attempt failed): kept on the job
    record so an operator can see what a receiver missed, and why."""

    webhook_id: str
    status: str
    reason: UndeliveredReason
    detail: str
    at: datetime


#: A job's stored output shape: its ints and flag, and the crop box (a dict of ints) or None.
OutputRecord = dict[str, int | bool | dict[str, int] | None]


class Job(BaseModel):
    """One transfer request and everything known about its run (internals included: store keys,
    worker, attempts; the public shape is service.http.schemas.JobOut)."""

    # A field a newer version writes survives an older process's read-modify-write while a rolling
    # upgrade runs both (the public JobOut is built field by field, so it never leaks). In code an
    # unknown keyword is still an error: mypy's pydantic plugin forbids it (init_forbid_extra).
    model_config = ConfigDict(extra="allow")

    id: str
    status: JobStatus = "queued"
    stage: JobStage = "queued"
    progress: float = 0.0
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    structure_key: str
    #: Store keys of the appearance images, in submission order (1 .. MAX_APPEARANCES).
    appearance_keys: list[str] = Field(min_length=1)
    #: One stored result per appearance, in the same order; empty until the job has succeeded.
    results: list[JobResult] = Field(default_factory=list)
    #: The output's shape as qalign_schema.jobs.OutputOut has it: width, height, aspect_clamped,
    #: grid_width, grid_height, crop (known once the job has run).
    output: OutputRecord | None = None
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

    @property
    def result(self) -> JobResult | None:
        """The first result (what /jobs/{id}/result serves), None until the job has succeeded."""
        return self.results[0] if self.results else None

    @property
    def input_keys(self) -> list[str]:
        """Every input the job lists, structure first (duplicates kept once: inputs are shared)."""
        return list(dict.fromkeys((self.structure_key, *self.appearance_keys)))


def new_job_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


def worker_name() -> str:
    """hostname:pid, unique per worker process; what heartbeats and job records name."""
    return f"{socket.gethostname()}:{os.getpid()}"
