"""The job state machine as pure functions: each takes a record and returns the new one, or None
when the record must stay as it is. No store, no clock reads beyond ``utcnow`` for timestamps.
Which of them a job goes through, and when, is decided in ``service.jobs.lifecycle``.

Stores apply them atomically through ``JobRecords.apply``; unit tests call them on plain records.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from qalign_schema.jobs import ErrorType
from service.jobs.model import Job, JobError, JobResult, OutputRecord, utcnow

Mutation = Callable[[Job], Job | None]

#: Share of the overall progress bar each pipeline stage covers.
STAGE_SPANS: dict[str, tuple[float, float]] = {
    "loading": (0.0, 0.05),
    "inverting": (0.05, 0.35),
    "denoising": (0.35, 0.93),
    "decoding": (0.93, 0.97),
    "uploading": (0.97, 1.0),
}


def as_holder(change: Mutation, worker: str, attempt: int) -> Mutation:
    """``change`` applied only while the record is still this run's: same worker, same attempt.

    A run whose job was taken over (its worker stopped heartbeating: a lost host, a partition, a
    frozen process) may wake up and write late; its writes then leave the new attempt's record alone.
    """

    def guarded(job: Job) -> Job | None:
        if job.worker != worker or job.attempts != attempt:
            return None
        return change(job)

    return guarded


def superseded(job: Job | None, worker: str, attempt: int) -> bool:
    """Whether the record no longer belongs to the run (worker, attempt): another run took it over."""
    return job is not None and (job.worker != worker or job.attempts != attempt)


def progress(job: Job, stage: str, fraction: float) -> Job | None:
    """A running job's stage and overall progress (never backwards); None once it is not running."""
    if job.status != "running":
        return None
    low, high = STAGE_SPANS.get(stage, (0.0, 1.0))
    overall = round(low + (high - low) * min(max(fraction, 0.0), 1.0), 4)
    return job.model_copy(update={"stage": stage, "progress": max(overall, job.progress)})


def succeed(
    job: Job,
    *,
    results: Sequence[JobResult],
    params: dict[str, Any],
    metrics: dict[str, Any],
    output: OutputRecord | None = None,
) -> Job | None:
    """The run produced its results (one per appearance, in order); a record that already ended
    (canceled meanwhile) stays."""
    if job.finished:
        return None
    return job.model_copy(
        update={
            "status": "succeeded",
            "stage": "done",
            "progress": 1.0,
            "finished_at": utcnow(),
            "results": list(results),
            "output": output,
            "params": params,
            "metrics": metrics,
        }
    )


def fail(job: Job, kind: ErrorType, detail: str, *, only_from: frozenset[str] | None = None) -> Job | None:
    """Failed with a typed error. ``only_from``: statuses it may fail from (default: any unfinished)."""
    if job.finished or (only_from is not None and job.status not in only_from):
        return None
    return job.model_copy(
        update={"status": "failed", "finished_at": utcnow(), "error": JobError(type=kind, detail=detail)}
    )


def cancel_now(job: Job) -> Job:
    return job.model_copy(update={"status": "canceled", "finished_at": utcnow(), "cancel_requested": True})


def canceled(job: Job) -> Job | None:
    """The runner stopped at a cancel request: terminal unless it already is. Without a cancel
    request on the record nothing changes: a job is never ``canceled`` that nobody canceled."""
    return None if job.finished or not job.cancel_requested else cancel_now(job)


def start(job: Job, worker: str) -> Job:
    """Running for ``worker``: one more attempt, from the first stage."""
    return job.model_copy(
        update={
            "status": "running",
            "stage": "loading",
            "progress": 0.0,
            "started_at": utcnow(),
            "worker": worker,
            "attempts": job.attempts + 1,
        }
    )


def back_to_queue(job: Job, attempts: int) -> Job:
    """Queued again, with ``attempts`` runs counted, keeping its place (``records.enqueued_at``)."""
    return job.model_copy(
        update={
            "status": "queued",
            "stage": "queued",
            "progress": 0.0,
            "started_at": None,
            "worker": None,
            "attempts": max(attempts, 0),
        }
    )


def flag_cancel(job: Job) -> Job:
    """A cancel request on a running job: its run stops at its next step."""
    return job.model_copy(update={"cancel_requested": True})
