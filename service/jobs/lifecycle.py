"""Every decision about a job's life, in one place; the hosts (the Celery task and signals, the
embedded thread, the takeover scan, the submit and cancel use cases) map its typed outcomes to
their own actions and decide nothing.

The life of a job: admitted ``queued`` (the store's atomic admission) -> claimed by one worker
(``claim``: also a takeover of a run whose holder is lost, or the end of a job out of attempts or
canceled) -> run (``stop_reason`` at each step; ``failure`` names what went wrong; ``on_stop``
says what a stop writes) -> ``ran`` says how the run ended, and ``delivery`` what the broker
message does then (acknowledged, requeued, or retried later while another live worker holds the
job). Around it: a caller's ``cancel``; ``recover`` (embedded start), ``hard_time_limit``
(Celery killed the run), ``lost_holders`` and ``stranded`` (the takeover scan of running jobs
whose holder stopped heartbeating, and of queued jobs whose broker message is gone).

Record changes are ``transitions`` mutations applied atomically by ``JobRecords.apply``, which
writes each change's event to the outbox; this module only chooses them. No store, no Celery.
"""

from __future__ import annotations

import enum
import math
import os
import socket
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from qalign_core.errors import InvalidImageError, ModelLoadError, QAlignError
from qalign_schema.jobs import ErrorType
from service.backends.blobs import BlobNotFound, BlobStoreDown
from service.jobs.model import Job
from service.jobs.records import JobStoreDown
from service.jobs.transitions import (
    Mutation,
    back_to_queue,
    cancel_now,
    canceled,
    fail,
    flag_cancel,
    start,
    superseded,
)
from service.settings import Settings

# --- outcomes


class StopReason(enum.Enum):
    """Why a run stopped before its end (the pipeline saw ``should_cancel`` return True)."""

    CANCELED = "canceled"  # the record carries a cancel request: the job ends canceled
    ERASED = "erased"  # the record is gone: nothing more is written
    LOST = "lost"  # the record names another run (taken over, re-queued): nothing is written
    SHUTDOWN = "shutdown"  # the process is stopping: the job goes back to the queue
    TIME_LIMIT = "time_limit"  # past QALIGN_JOB_TIME_LIMIT: the job fails with time_limit


class ClaimKind(enum.Enum):
    """What a worker's claim of a delivered job came to."""

    CLAIMED = "claimed"  # running for this worker now
    ENDED = "ended"  # the claim ended the job (canceled, or out of attempts)
    HELD = "held"  # another worker that is still alive runs it
    FINISHED = "finished"  # already terminal: nothing to do
    UNKNOWN = "unknown"  # no such record (never existed, expired or erased)


@dataclass(frozen=True)
class Claim:
    kind: ClaimKind
    job: Job | None  # the record after the claim


class RunKind(enum.Enum):
    """How one delivery of a job ended, as far as its host (task or thread) must know."""

    NOT_RUN = "not_run"  # the claim did not start a run (see the Claim)
    HELD = "held"  # not run: another live worker holds the job
    FINISHED = "finished"  # the run ended the job (succeeded, failed or canceled)
    REQUEUED = "requeued"  # stopped by a shutdown: the job is queued again
    ERASED = "erased"  # the job was erased during the run
    LOST = "lost"  # the job was taken over by another run: this one wrote nothing


@dataclass(frozen=True)
class Run:
    kind: RunKind
    job: Job | None  # the record as the run last saw it


class Delivery(enum.Enum):
    """What a worker does with a job's broker message."""

    ACK = "ack"  # done with it (the record is final, gone, or another run's)
    REQUEUE = "requeue"  # back in the queue now
    RETRY_LATER = "retry_later"  # published again after ``countdown`` (a live worker holds the job)


@dataclass(frozen=True)
class MessageOutcome:
    action: Delivery
    reason: str
    countdown: float = 0.0  # RETRY_LATER: seconds until the next look
    max_retries: int = 0  # RETRY_LATER: how many looks in all (the holder's time limit bounds the wait)
    pause: float = 0.0  # REQUEUE: seconds to wait first (a store outage: do not spin on the message)
    status: str | None = None  # ACK: the job's status then (the task's return value), None: no record


@dataclass(frozen=True)
class Republish:
    """A job the takeover scan publishes again, and why (for the log)."""

    job_id: str
    attempt: int
    reason: str
    holder: str | None = None


@dataclass(frozen=True)
class BrokerView:
    """What the broker holds of our jobs (an observation, read by
    ``service.backends.celery_queue.broker_view``): ids waiting in the queue, and the delivery
    time (epoch s) of each delivered, unacked message."""

    waiting: frozenset[str] = frozenset()
    delivered: Mapping[str, float] = field(default_factory=dict)


OUTCOME_TYPES = (StopReason, ClaimKind, Claim, RunKind, Run, Delivery, MessageOutcome, Republish)

# --- admission, cancel


def cancel(job: Job) -> Job | None:
    """A caller's cancel. Queued: canceled now. Running: flagged; the runner stops at its next step.
    Finished: unchanged."""
    if job.status == "queued":
        return cancel_now(job)
    if job.status == "running" and not job.cancel_requested:
        return flag_cancel(job)
    return None


def not_enqueued(job: Job) -> Job | None:
    """The broker refused the job at submission: it fails (the caller may submit it again)."""
    return fail(job, "not_enqueued", "the job could not be queued", only_from=frozenset({"queued"}))


def model_unavailable(load_error: str) -> Mutation:
    """The embedded worker could not load its model: a queued job fails with the reason."""
    detail = f"the model could not be loaded: {load_error}"
    return lambda job: fail(job, "model_load_error", detail, only_from=frozenset({"queued"}))


# --- claim, takeover


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


def claim(
    job: Job, *, worker: str, live_workers: Mapping[str, Mapping[str, Any]], max_attempts: int
) -> Job | None:
    """Queued -> running for ``worker``; None when the job must not run (taken by a live worker, finished).

    A job left ``running`` by a worker that lost it (see ``holder_lost``) is taken over, up to
    ``max_attempts`` runs; then it is failed. A claim of a job with a cancel request cancels it.
    ``claimed`` tells the outcomes apart.
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
    return start(job, worker)


def claimed(before: Job | None, after: Job | None, worker: str) -> Claim:
    """The outcome of ``claim`` applied to ``before`` (None: no record), giving ``after``."""
    if after is None or before is None:
        return Claim(ClaimKind.UNKNOWN, after)
    if after is before:  # the claim changed nothing
        return Claim(ClaimKind.HELD if after.status == "running" else ClaimKind.FINISHED, after)
    if after.status == "running" and after.worker == worker:
        return Claim(ClaimKind.CLAIMED, after)
    return Claim(ClaimKind.ENDED, after)


def lost_holders(jobs: Collection[Job], live_workers: Mapping[str, Mapping[str, Any]]) -> list[Republish]:
    """Running jobs whose holder has no fresh heartbeat: published again so a live worker takes them
    over. Read the records before the heartbeats: a job claimed meanwhile has a holder whose heartbeat
    named it before the claim, so it is never reported by mistake."""
    return [
        Republish(job.id, job.attempts, "its worker stopped heartbeating", job.worker)
        for job in jobs
        if job.status == "running" and (job.worker or "") not in live_workers
    ]


def stranded(
    queued: Collection[Job],
    broker: BrokerView,
    absent_since: dict[str, float],
    *,
    now: float,
    after: float,
) -> list[Republish]:
    """Queued jobs whose broker message is lost or stuck with a dead worker, to publish again.

    A queued job's message is fine while it waits in the queue, or was delivered less than ``after``
    seconds ago (the worker that took it claims the job at once: it takes no message before its model
    is loaded). Stranded: delivered longer ago than that and still not claimed (its worker died
    between taking the message and the claim), or in the broker nowhere for ``after`` seconds as seen
    by this scan (``absent_since``, kept by the caller: lost between the broker's pop and its write to
    ``unacked``, or never published). A duplicate is harmless: the claim decides who runs the job.
    ``now`` is epoch seconds, as the broker's delivery times are.
    """
    ids = {job.id for job in queued}
    for job_id in [i for i in absent_since if i not in ids]:
        del absent_since[job_id]
    due: list[Republish] = []
    for job in queued:
        if job.status != "queued" or job.id in broker.waiting:
            absent_since.pop(job.id, None)
            continue
        delivered = broker.delivered.get(job.id)
        if delivered is not None:
            absent_since.pop(job.id, None)
            if now - delivered >= after:
                due.append(
                    Republish(
                        job.id,
                        job.attempts,
                        f"its message was delivered {now - delivered:.0f} s ago and never claimed",
                    )
                )
            continue
        if now - absent_since.setdefault(job.id, now) >= after:
            due.append(
                Republish(job.id, job.attempts, f"its message is missing from the broker for {after:.0f} s")
            )
    return due


# --- the run


def stop_reason(job: Job | None, worker: str | None, attempt: int) -> StopReason | None:
    """Why a run of ``job`` by ``worker`` (its ``attempt``-th) must stop, or None to go on."""
    if job is None:
        return StopReason.ERASED
    if job.cancel_requested:
        return StopReason.CANCELED
    if job.status != "running" or job.worker != worker or job.attempts != attempt:
        return StopReason.LOST
    return None


def why_stopped(kept: StopReason | None, interrupted: bool) -> StopReason:
    """The reason of a stopped run: the one its checks kept, else a shutdown if the process is
    stopping, else the record no longer names it."""
    if kept is not None:
        return kept
    return StopReason.SHUTDOWN if interrupted else StopReason.LOST


def over_time_limit(elapsed: float, settings: Settings) -> StopReason | None:
    """The soft time limit of a run, counted from the claim, in both modes."""
    return StopReason.TIME_LIMIT if elapsed > settings.job_time_limit else None


#: The error of a run stopped at QALIGN_JOB_TIME_LIMIT (the runner's check or Celery's soft limit).
TIME_LIMIT_ERROR: tuple[ErrorType, str] = (
    "time_limit",
    "the job ran longer than QALIGN_JOB_TIME_LIMIT and was stopped",
)


def failure(
    exc: BaseException, time_limit_errors: tuple[type[BaseException], ...] = ()
) -> tuple[ErrorType, str]:
    """(error type, caller-facing detail) of a run that raised ``exc``. Only the library's deliberate
    errors carry their text; anything else is an internal error whose text stays in the worker logs."""
    if time_limit_errors and isinstance(exc, time_limit_errors):
        return TIME_LIMIT_ERROR
    if isinstance(exc, InvalidImageError):
        return "invalid_image", str(exc)
    if isinstance(exc, ModelLoadError):
        return "model_load_error", str(exc)
    if isinstance(exc, ValidationError):
        return "invalid_parameters", str(exc)
    if isinstance(exc, QAlignError):
        return "invalid_request", str(exc)
    if isinstance(exc, BlobNotFound):
        return "input_missing", f"an input image is missing from the store: {exc}"
    if isinstance(exc, (BlobStoreDown, JobStoreDown)):
        return "storage_unavailable", str(exc)
    return "internal_error", f"the worker failed unexpectedly ({type(exc).__name__}); see the worker logs"


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
    return back_to_queue(job, attempts)


def on_stop(reason: StopReason, max_attempts: int) -> Mutation | None:
    """The record change a stopped run writes (None: nothing, the record is gone or another run's).

    A shutdown requeues without using an attempt; the time limit fails; a cancel request cancels.
    """
    if reason is StopReason.SHUTDOWN:
        return lambda job: requeue(job, "the worker stopped during the run", max_attempts, refund=True)
    if reason is StopReason.TIME_LIMIT:
        kind, detail = TIME_LIMIT_ERROR
        return lambda job: fail(job, kind, detail)
    if reason is StopReason.CANCELED:
        return canceled
    return None


def ran(final: Job | None, worker: str, attempt: int) -> Run:
    """How a run by ``worker`` (its ``attempt``-th) ended, from the record it left (None: erased)."""
    if final is None:
        return Run(RunKind.ERASED, None)
    if final.status == "queued":
        return Run(RunKind.REQUEUED, final)
    if superseded(final, worker, attempt) or not final.finished:
        return Run(RunKind.LOST, final)
    return Run(RunKind.FINISHED, final)


def not_run(outcome: Claim) -> Run:
    return Run(RunKind.HELD if outcome.kind is ClaimKind.HELD else RunKind.NOT_RUN, outcome.job)


def delivery(run: Run, settings: Settings) -> MessageOutcome:
    """What the Celery task does with the job's message once its run (or non-run) is over.

    The message is acknowledged only once its job is final or another run's; a job stopped by a
    shutdown goes back to the queue; a job held by another worker that may still be alive is looked
    at again later instead of being dropped (the holder's hard time limit bounds the wait).
    """
    if run.kind is RunKind.REQUEUED:
        return MessageOutcome(Delivery.REQUEUE, "worker shutting down; job requeued")
    if run.kind is RunKind.HELD:
        countdown = max(settings.heartbeat_ttl, 1.0)
        retries = math.ceil(settings.job_hard_time_limit / countdown) + 2
        holder = run.job.worker if run.job is not None else None
        return MessageOutcome(Delivery.RETRY_LATER, f"job held by {holder}", countdown, retries)
    return MessageOutcome(
        Delivery.ACK, run.kind.value, status=run.job.status if run.job is not None else None
    )


def store_unreachable(settings: Settings, exc: BaseException) -> MessageOutcome:
    """The record could not be read or finished (Redis away): keep the message. Requeued now, or, if
    Redis cannot take even that, redelivered after the visibility timeout. The pause keeps a worker
    from spinning on the same message while Redis is away."""
    return MessageOutcome(Delivery.REQUEUE, str(exc), pause=min(settings.heartbeat_interval, 5.0))


# --- ends from outside


def recover(me: str, max_attempts: int) -> Mutation:
    """Embedded start, with the data directory's lock held: a ``running`` record names a process that
    is gone (requeued, or failed once out of attempts), unless it names this one (its runner puts its
    job back itself when it stops)."""

    def change(job: Job) -> Job | None:
        if job.worker == me:
            return None
        return requeue(job, "the service stopped during the run", max_attempts)

    return change


def hard_time_limit(hard_limit_s: float, parent_pid: int) -> Mutation:
    """Celery's hard time limit killed the pool child running a job (the message is acked): the job
    fails with ``time_limit``, unless it was taken over meanwhile (the record names a process that is
    not, or was not, a child of ``parent_pid``): its new run is not ours to end."""
    detail = f"the job ran past the hard time limit ({hard_limit_s} s) and was killed"
    running = frozenset({"running"})

    def change(job: Job) -> Job | None:
        if job.worker is None or not was_child_of(job.worker, parent_pid):
            return None
        return fail(job, "time_limit", detail, only_from=running)

    return change


def was_child_of(worker: str, parent_pid: int) -> bool:
    """Whether ``worker`` (a record's ``hostname:pid`` holder) is, or was, a child of ``parent_pid``.

    The hard time limit fires in the pool's main process after it killed the child that ran the job.
    If the job was taken over meanwhile (the whole host froze, say), the record names another worker,
    possibly on this same host; failing it would end a healthy run.
    """
    host, _, pid_text = worker.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True  # gone: the child the pool killed (a live worker's process would exist)
    except PermissionError:
        return False  # another user's process: not our child
    try:
        status = Path(f"/proc/{pid_text}/status").read_text()
    except OSError:
        return True  # no procfs (not Linux): keep the plain behaviour
    parent = next((line.split()[1] for line in status.splitlines() if line.startswith("PPid:")), "")
    return parent == str(parent_pid)
