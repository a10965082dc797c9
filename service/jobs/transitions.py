"""The job state machine as pure functions: each takes a record and returns the new one, or None
when the record must stay as it is. No store, no clock reads beyond ``utcnow`` for timestamps.

Stores apply them atomically through ``JobRecords.modify``; unit tests call them on plain records.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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


def claim(
    job: Job, *, worker: str, live_workers: Mapping[str, Mapping[str, Any]], max_attempts: int
) -> Job | None:
    """Queued -> running for ``worker``; None when the job must not run (taken by a live worker, finished).

    A job left ``running`` by a worker that lost it (see ``holder_lost``) is taken over, up to
    ``max_attempts`` runs; then it is failed. A claim of a job with a cancel request cancels it.
    The caller tells the outcomes apart by the returned status (running = claimed, terminal = ended).
    """
    takeover = job.status == "running" and holder_lost(job, live_workers, worker)
    if job.status != "queued" and not takeover:
        return None
    if job.attempts >= max_attempts and takeover:
        return fail(
            job,
            "worker_lost",
            f"the worker running this job stopped without finishing it (crash, kill or lost host) "
            f"in each of its {job.attempts} attempts; giving up (QALIGN_MAX_ATTEMPTS={max_attempts})",
        )
    if job.attempts >= max_attempts:
        return fail(job, "interrupted", f"the job was interrupted {job.attempts} times; giving up")
    if job.cancel_requested:
        return cancel_now(job)
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


def holder_lost(job: Job, live_workers: Mapping[str, Mapping[str, Any]], claimer: str) -> bool:
    """Whether the worker named by a running record no longer runs it, so a redelivery may take it over.

    Lost: no fresh heartbeat; or its heartbeat names the job it runs and that is another job (or none);
    or it is the claimer itself (one job at a time per worker process: a record naming it is left
    over from a run that ended without its final write, e.g. while Redis was down).
    """
    if job.worker == claimer:
        return True
    info = live_workers.get(job.worker or "")
    if info is None:
        return True
    return "job" in info and info["job"] != job.id


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


def cancel(job: Job) -> Job | None:
    """A caller's cancel. Queued: canceled now. Running: flagged; the runner stops at its next step.
    Finished: unchanged."""
    if job.status == "queued":
        return cancel_now(job)
    if job.status == "running" and not job.cancel_requested:
        return job.model_copy(update={"cancel_requested": True})
    return None


def requeue(job: Job, reason: str, max_attempts: int, *, refund: bool = False) -> Job | None:
    """Put an interrupted running job back in the queue, or fail it when out of attempts.

    ``refund``: the run was stopped on purpose (graceful shutdown), so it does not count as an attempt.
    """
    if job.status != "running":
        return None
    if job.cancel_requested:
        return cancel_now(job)
    attempts = job.attempts - 1 if refund else job.attempts
    if attempts >= max_attempts:
        return fail(job, "interrupted", f"{reason}; gave up after {job.attempts} attempts")
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
