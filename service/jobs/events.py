"""What a state change announces: the outbox event, decided by one pure function of the record
before and after the change.

``JobRecords.apply`` calls ``event_for`` inside the same atomic store operation that writes the
record, so a status change and its event are written together or not at all: no path can end a
job without its terminal event, and no event can announce a change that was not stored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, get_args

from pydantic import BaseModel

from qalign_schema.jobs import TERMINAL_STATUSES, JobStatus
from service.jobs.model import Job, utcnow

EventKind = Literal["start", "completed"]
#: The events a job sends and a ``webhook_events_filter`` may name: running, then the terminal status.
EVENTS: tuple[EventKind, ...] = ("start", "completed")
#: The statuses that announce an event (their webhook ids are what erasure removes from the outbox):
#: running and the terminal ones.
ANNOUNCED: tuple[JobStatus, ...] = tuple(
    status for status in get_args(JobStatus) if status == "running" or status in TERMINAL_STATUSES
)


class OutboxEvent(BaseModel):
    """One event waiting in the durable outbox until the dispatcher has delivered it."""

    id: str  # the webhook-id: the same for every retry and every redelivery of this event
    job: Job  # the record right after the change: the webhook body is built from it
    at: datetime

    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def status(self) -> JobStatus:
        return self.job.status

    @property
    def kind(self) -> EventKind | None:
        return event_kind(self.status)


def event_kind(status: str) -> EventKind | None:
    """The filterable event a status change is: ``start`` (running) or ``completed`` (terminal)."""
    if status == "running":
        return "start"
    return "completed" if status in TERMINAL_STATUSES else None


def webhook_id(job_id: str, status: str) -> str:
    """One id per job and status: retries (and a redelivered duplicate) carry the same id."""
    return f"job_{job_id}_{status}"


def event_ids(job_id: str) -> list[str]:
    """Every outbox id job ``job_id`` can have (erasure removes them with the record)."""
    return [webhook_id(job_id, status) for status in ANNOUNCED]


def event_for(before: Job, after: Job) -> OutboxEvent | None:
    """The event of the change ``before`` -> ``after``, or None: only a change of status into
    running or a terminal status is announced, and only to a job with a webhook that wants it."""
    if after.status == before.status:
        return None
    kind = event_kind(after.status)
    if kind is None or not after.webhook_url or kind not in (after.webhook_events or EVENTS):
        return None
    return OutboxEvent(id=webhook_id(after.id, after.status), job=after, at=utcnow())
