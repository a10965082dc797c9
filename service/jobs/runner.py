"""Running one job: the single code path of the Celery task and the embedded worker thread.

claim the record -> read inputs from the store -> pipeline.transfer (progress and cancel checks
through the job record) -> upload the result -> final record. Failures become a ``failed`` record
with a typed error; nothing a job does can take the worker down. Webhooks go out through the
injected ``events`` publisher, so this module needs neither HTTP nor Celery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from pydantic import ValidationError

from qalign_core.errors import InvalidImageError, ModelLoadError, QAlignError, TransferCanceled
from qalign_core.params import TransferParams
from service.jobs import transitions
from service.jobs.model import Job, JobResult, worker_name
from service.jobs.store import JobStores, StoreUnavailable
from service.logs import job_context
from service.settings import Settings
from service.storage import ObjectNotFound, ObjectStore, StorageUnavailable, StoreInversionCache, result_key

logger = logging.getLogger("qalign.job")
T = TypeVar("T")


class JobEvents(Protocol):
    """Where status changes are announced (webhooks); must never raise."""

    def publish(self, job: Job) -> None: ...


class NoEvents:
    def publish(self, job: Job) -> None:
        return None


@dataclass
class JobContext:
    """What a run needs besides the job id: stores, settings, the loaded pipeline and hooks.

    ``interrupted`` says the process is shutting down (the run stops at its next step and the job
    goes back to the queue); ``time_limit_errors`` are the exceptions the host raises when a run
    is over its time limit (Celery's soft limit), which fail the job with ``time_limit``.
    """

    stores: JobStores
    store: ObjectStore
    settings: Settings
    pipeline: object
    events: JobEvents = NoEvents()
    worker: str | None = None
    interrupted: Callable[[], bool] | None = None
    time_limit_errors: tuple[type[BaseException], ...] = ()


class JobTracker:
    """Turns pipeline callbacks into throttled job-record writes, stage timings and cancel checks."""

    def __init__(self, ctx: JobContext, job: Job) -> None:
        self.ctx, self.job_id = ctx, job.id
        #: This run's claim; every write is guarded by it (transitions.as_holder).
        self.worker, self.attempt = job.worker or "", job.attempts
        self.stage: str | None = None
        self.stage_started = time.monotonic()
        self.last_write = 0.0
        self.last_check = 0.0
        self.cancel_seen = False
        self.taken_over = False

    def held(self, change: transitions.Mutation) -> transitions.Mutation:
        return transitions.as_holder(change, self.worker, self.attempt)

    def write(self, change: transitions.Mutation, *, wait: bool = True) -> Job | None:
        """A final write of this run, waited through a job-store outage (up to the deadline) if ``wait``."""

        def modify() -> Job | None:
            return self.ctx.stores.records.modify(self.job_id, self.held(change))

        return through_outage(self.ctx, "record the outcome", modify) if wait else modify()

    def still_holder(self) -> bool:
        """Read the record: False (and the run stops) once another worker has taken the job over."""
        job = through_outage(self.ctx, "read the record", lambda: self.ctx.stores.records.get(self.job_id))
        self.taken_over = self.taken_over or transitions.superseded(job, self.worker, self.attempt)
        return not self.taken_over

    def progress(self, stage: str, fraction: float) -> None:
        now = time.monotonic()
        changed = stage != self.stage
        if changed:
            self.end_stage(now)
            self.stage, self.stage_started = stage, now
            logger.info("stage %s", stage, extra={"stage": stage})
        if not changed and now - self.last_write < self.ctx.settings.progress_interval:
            return
        self.last_write = now
        try:
            self.ctx.stores.records.modify(
                self.job_id, self.held(lambda job: transitions.progress(job, stage, fraction))
            )
        except StoreUnavailable:  # progress is best effort: a Redis blip must not cost the run
            logger.warning("could not record progress: job store unreachable")

    def end_stage(self, now: float | None = None) -> None:
        if self.stage is not None:
            elapsed = (now or time.monotonic()) - self.stage_started
            try:
                self.ctx.stores.stages.observe(self.stage, elapsed)
            except StoreUnavailable:
                logger.warning("could not record stage duration", exc_info=True)
            self.stage = None

    def should_cancel(self) -> bool:
        if self.ctx.interrupted is not None and self.ctx.interrupted():
            return True
        now = time.monotonic()
        if self.cancel_seen or now - self.last_check < self.ctx.settings.cancel_check_interval:
            return self.cancel_seen
        self.last_check = now
        try:
            job = self.ctx.stores.records.get(self.job_id)
        except StoreUnavailable:  # cannot read the cancel flag now: keep going, look again later
            return False
        self.taken_over = transitions.superseded(job, self.worker, self.attempt)
        self.cancel_seen = job is None or job.cancel_requested or job.status != "running" or self.taken_over
        return self.cancel_seen


def claim_job(ctx: JobContext, job_id: str) -> tuple[Job | None, Job | None]:
    """(claimed job or None, current record): the claim as one atomic change of the record."""
    live = ctx.stores.workers.live()
    worker = ctx.worker or worker_name()
    before: list[Job] = []

    def tracked(job: Job) -> Job | None:
        before[:] = [job]  # modify may call this again after a conflicting write
        return transitions.claim(
            job, worker=worker, live_workers=live, max_attempts=ctx.settings.max_attempts
        )

    after = ctx.stores.records.modify(job_id, tracked)
    changed = bool(before) and after is not None and after is not before[0]
    claimed = after if changed and after.status == "running" and after.worker == worker else None
    if changed and after is not None and after.finished:  # the claim ended it (attempts, cancel)
        ctx.events.publish(after)
    return claimed, after


def execute_job(ctx: JobContext, job_id: str) -> Job | None:
    """Run job ``job_id`` to a final record and return it (None for an unknown id)."""
    with job_context(job_id):
        job, current = claim_job(ctx, job_id)
        if job is None:
            logger.info("job not run: %s", current.status if current else "unknown id")
            return current
        logger.info("job started", extra={"attempt": job.attempts, "worker": job.worker})
        ctx.events.publish(job)
        final = _attempt(ctx, job)
        if final is not None and final.finished:
            ctx.events.publish(final)
        return final


def _attempt(ctx: JobContext, job: Job) -> Job | None:
    """One run of a claimed job, ending in a terminal record (or back in the queue on shutdown).

    None when another worker took the job over meanwhile (this run's holder was presumed lost): the
    run stops, and its record and result are the new attempt's to write.
    """
    tracker = JobTracker(ctx, job)
    try:
        return _run(ctx, job, tracker)
    except TransferCanceled:
        tracker.end_stage()
        if tracker.taken_over:
            return _taken_over(tracker)
        if ctx.interrupted is not None and ctx.interrupted() and not tracker.cancel_seen:
            logger.info("job interrupted by shutdown; requeued")
            reason, limit = "the worker stopped during the run", ctx.settings.max_attempts
            return tracker.write(lambda j: transitions.requeue(j, reason, limit, refund=True))
        logger.info("job canceled")
        return tracker.write(transitions.canceled)
    except Exception as exc:  # every failure must end in a record, never a crashed worker
        tracker.end_stage()
        kind, detail = classify(exc, ctx.time_limit_errors)
        if kind == "internal_error":
            logger.exception("job failed")
        else:
            logger.warning("job failed: %s", detail, extra={"error_type": kind})
        # The job store itself gave up after the deadline: one more try, then the message is requeued.
        wait = not isinstance(exc, StoreUnavailable)
        final = tracker.write(lambda j: transitions.fail(j, kind, detail), wait=wait)
        if tracker.taken_over or transitions.superseded(final, tracker.worker, tracker.attempt):
            return _taken_over(tracker)
        return final


def _taken_over(tracker: JobTracker) -> None:
    logger.warning(
        "job taken over by another worker; this run stopped without writing",
        extra={"attempt": tracker.attempt, "worker": tracker.worker},
    )
    return None


def _run(ctx: JobContext, job: Job, tracker: JobTracker) -> Job | None:
    params = TransferParams.model_validate(job.params)
    store = ctx.store
    structure = through_outage(ctx, "read the inputs", lambda: store.get(job.structure_key), tracker)
    appearance = through_outage(ctx, "read the inputs", lambda: store.get(job.appearance_key), tracker)
    result = ctx.pipeline.transfer(
        structure,
        appearance,
        params,
        progress=tracker.progress,
        should_cancel=tracker.should_cancel,
        inversion_cache=StoreInversionCache(store) if ctx.settings.inversion_cache else None,
    )
    tracker.progress("uploading", 0.0)
    if not tracker.still_holder():  # taken over meanwhile: no upload, no record write
        raise TransferCanceled("taken over by another worker")
    upload_started = time.perf_counter()
    # One object per attempt: a superseded run that uploads late never replaces the new attempt's result.
    key = result_key(job.id, result.content_type, attempt=job.attempts)
    data = result.encode()
    through_outage(ctx, "upload the result", lambda: store.put(key, data, result.content_type), tracker)
    tracker.end_stage()
    queue_s = (job.started_at - job.created_at).total_seconds() if job.started_at else 0.0
    metrics = {
        "queue_s": round(queue_s, 4),
        **{name: round(float(value), 4) for name, value in result.timings.items()},
        "upload_s": round(time.perf_counter() - upload_started, 4),
        "inversion_cache_hits": int(result.inversion_cache_hits),
        **result.diagnostics,
    }
    stored = JobResult(
        key=key, content_type=result.content_type, width=result.image.width, height=result.image.height
    )
    params_used = result.params.model_dump(mode="json")
    final = tracker.write(
        lambda j: transitions.succeed(j, result=stored, params=params_used, metrics=metrics)
    )
    if transitions.superseded(final, tracker.worker, tracker.attempt):
        tracker.taken_over = True
        raise TransferCanceled("taken over by another worker")
    logger.info("job succeeded", extra={"metrics": metrics})
    return final


#: First pause and longest pause between tries while storage is unreachable (doubling in between).
OUTAGE_FIRST_DELAY_S = 0.5
OUTAGE_MAX_DELAY_S = 5.0
_OUTAGE_ERRORS = (StorageUnavailable, StoreUnavailable)


def through_outage(ctx: JobContext, what: str, call: Callable[[], T], tracker: JobTracker | None = None) -> T:
    """``call()``, tried again with backoff while the object or job store is unreachable.

    A storage outage is waited out up to QALIGN_STORAGE_OUTAGE_DEADLINE seconds (the worker's
    heartbeat goes on meanwhile, so nobody takes the job over); only then does the error reach the
    caller (the job fails with storage_unavailable). A cancel request or a shutdown ends the wait.
    """
    deadline = time.monotonic() + ctx.settings.storage_outage_deadline
    delay, tries = OUTAGE_FIRST_DELAY_S, 0
    while True:
        try:
            result = call()
        except _OUTAGE_ERRORS as exc:
            tries += 1
            remaining = deadline - time.monotonic()
            stopping = ctx.interrupted is not None and ctx.interrupted()
            if remaining <= 0 or (stopping and tracker is None):
                # Past the deadline, or shutting down during a final write (the job goes back to the queue).
                logger.error("storage still unavailable after %s tries; giving up: %s", tries, exc)
                raise
            logger.warning(
                "storage unavailable (%s); retrying in %.1f s: %s",
                what,
                min(delay, remaining),
                exc,
                extra={"outage_tries": tries},
            )
            _pause(ctx, min(delay, remaining), tracker)
            delay = min(delay * 2, OUTAGE_MAX_DELAY_S)
            continue
        if tries:
            logger.info("storage reachable again (%s) after %s tries", what, tries)
        return result


def _pause(ctx: JobContext, seconds: float, tracker: JobTracker | None) -> None:
    """Sleep ``seconds`` in short steps; a shutdown or a cancel request ends it (TransferCanceled)."""
    until = time.monotonic() + seconds
    while (left := until - time.monotonic()) > 0:
        if tracker is not None and tracker.should_cancel():
            raise TransferCanceled("canceled while waiting for storage")
        if tracker is None and ctx.interrupted is not None and ctx.interrupted():
            return  # a final write: one more try, then the error goes up (see through_outage)
        time.sleep(min(left, 0.25))


def classify(exc: BaseException, time_limit_errors: tuple[type[BaseException], ...] = ()) -> tuple[str, str]:
    """(error type, caller-facing detail). Only the library's deliberate errors carry their text;
    anything else is an internal error whose text stays in the worker logs."""
    if time_limit_errors and isinstance(exc, time_limit_errors):
        return "time_limit", "the job ran longer than QALIGN_JOB_TIME_LIMIT and was stopped"
    if isinstance(exc, InvalidImageError):
        return "invalid_image", str(exc)
    if isinstance(exc, ModelLoadError):
        return "model_load_error", str(exc)
    if isinstance(exc, ValidationError):
        return "invalid_parameters", str(exc)
    if isinstance(exc, QAlignError):
        return "invalid_request", str(exc)
    if isinstance(exc, ObjectNotFound):
        return "input_missing", f"an input image is missing from the store: {exc}"
    if isinstance(exc, (StorageUnavailable, StoreUnavailable)):
        return "storage_unavailable", str(exc)
    return "internal_error", f"the worker failed unexpectedly ({type(exc).__name__}); see the worker logs"


def load_pipeline(settings: Settings):
    """The pipeline a worker runs, from settings; imported here so the API never pays for torch."""
    from qalign_core.pipeline import QAlignPipeline
    from service.logs import route_library_logs

    route_library_logs(load=True)  # diffusers/transformers logs into our JSON stream, no progress bars
    logger.info("loading model %s", settings.model, extra={"model": settings.model})
    started = time.perf_counter()
    pipeline = QAlignPipeline.from_pretrained(settings.model, device=settings.device, dtype=settings.dtype)
    logger.info(
        "model loaded", extra={"model": settings.model, "load_s": round(time.perf_counter() - started, 2)}
    )
    return pipeline
