"""What a state change announces: the outbox event, decided by one pure function of the record
before and after the change.

``JobRecords.apply`` calls ``event_for`` inside the same atomic store operation that writes the
record, so a status change and its event are written together or not at all: no path can end a
job without its terminal event, and no event can announce a change that was not stored.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from qalign_schema.jobs import TERMINAL_STATUSES, JobStatus
from qalign_schema.submission import EVENT_KINDS, EventKind
from service.jobs.model import Job, utcnow


class OutboxEvent(BaseModel):
    """One event waiting in the durable outbox until the outbox drainer has delivered it."""

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


def webhook_id(job_id: str, status: str, revision: int) -> str:
    """One id per event occurrence; retries (and a redelivered duplicate) carry the same id, since
    it is fixed when the event enters the outbox. A job ends once: ``job_<id>_<status>``. It may
    start running more than once (requeued, taken over), so each start is told apart by the record
    revision that made it (the events stream's id of that change): ``job_<id>_running_<revision>``.
    """
    if status in TERMINAL_STATUSES:
        return f"{event_id_prefix(job_id)}{status}"
    return f"{event_id_prefix(job_id)}{status}_{revision}"


def event_id_prefix(job_id: str) -> str:
    """What every event id of job ``job_id`` starts with (erasure removes them with the record);
    job ids are hex, so no other job's ids share it."""
    return f"job_{job_id}_"


def event_for(before: Job, after: Job) -> OutboxEvent | None:
    """The event of the change ``before`` -> ``after``, or None: only the start of a run (a change
    into running, or a takeover: running again, started anew) and the change into a terminal status
    are announced, and only to a job with a webhook that wants them."""
    restarted = after.status == "running" and after.started_at != before.started_at
    if after.status == before.status and not restarted:
        return None
    kind = event_kind(after.status)
    if kind is None or not after.webhook_url or kind not in (after.webhook_events or EVENT_KINDS):
        return None
    return OutboxEvent(id=webhook_id(after.id, after.status, after.revision), job=after, at=utcnow())
