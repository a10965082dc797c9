"""Running one job: the single code path of the Celery task and the embedded worker thread.

claim the record -> read inputs from the store -> pipeline.transfer (the structure and every
appearance in one call; progress and cancel checks through the job record) -> upload one result per
appearance -> final record. Failures become a ``failed`` record
with a typed error; nothing a job does can take the worker down. Every record change goes through
``JobRecords.apply``, which writes the change's event (webhooks) to the durable outbox in the same
store operation: this module announces nothing itself and needs neither HTTP nor Celery.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential

from qalign_core.errors import TransferCanceled
from qalign_core.params import TransferParams
from service.backends.blobs import (
    EXTENSIONS,
    BlobInversionCache,
    BlobNotFound,
    BlobStore,
    BlobStoreDown,
    inversion_store_key,
    result_key,
)
from service.jobs import lifecycle, transitions
from service.jobs.lifecycle import StopReason
from service.jobs.model import Job, JobResult, OutputRecord, worker_name
from service.jobs.records import JobStoreDown, JobStores
from service.logs import job_context
from service.settings import Settings

if TYPE_CHECKING:  # the API process never imports torch: the pipeline is loaded by load_pipeline
    from qalign_core.pipeline import QAlignPipeline, TransferResult

logger = logging.getLogger("qalign.job")
T = TypeVar("T")


class TransferPipeline(Protocol):
    """What a run needs of ``qalign_core.pipeline.QAlignPipeline`` (tests pass a small fake)."""

    def transfer(
        self,
        structure: bytes,
        appearances: Sequence[bytes],
        params: TransferParams,
        *,
        progress: Callable[[str, float], None],
        should_cancel: Callable[[], bool],
        inversion_cache: BlobInversionCache | None,
    ) -> TransferResult: ...


#: Builds the pipeline a worker runs from settings (``load_pipeline``; tests pass a fake's).
PipelineFactory = Callable[[Settings], TransferPipeline]


@dataclass
class JobContext:
    """What a run needs besides the job id: stores, settings, the loaded pipeline and hooks.

    ``interrupted`` says the process is shutting down (the run stops at its next step and the job
    goes back to the queue); ``time_limit_errors`` are the exceptions the host raises when a run
    is over its time limit (Celery's soft limit), which fail the job with ``time_limit`` like the
    runner's own check of QALIGN_JOB_TIME_LIMIT at every step.
    """

    stores: JobStores
    blobs: BlobStore
    settings: Settings
    pipeline: TransferPipeline
    worker: str | None = None
    interrupted: Callable[[], bool] | None = None
    time_limit_errors: tuple[type[BaseException], ...] = ()


class TrackedInversionCache(BlobInversionCache):
    """The store's inversion cache, remembering which entries this run read and which it wrote:
    the record lists them for erasure, and a run whose job was erased meanwhile deletes its own."""

    def __init__(self, blobs: BlobStore) -> None:
        super().__init__(blobs)
        self.used: list[str] = []
        self.written: list[str] = []

    def get(self, key: str) -> bytes | None:
        data = super().get(key)
        if data is not None:
            self.used.append(inversion_store_key(key))
        return data

    def put(self, key: str, data: bytes) -> None:
        super().put(key, data)
        self.used.append(inversion_store_key(key))
        self.written.append(inversion_store_key(key))


class JobTracker:
    """Turns pipeline callbacks into throttled job-record writes, stage timings and stop checks.

    The run stops (``should_cancel``) for a ``StopReason``, kept in ``stop_reason``: a shutdown, the
    time limit (QALIGN_JOB_TIME_LIMIT, counted from the claim, in both modes), a cancel request on
    the record, the record gone (erased), or the record no longer naming this run (lost). Only a
    cancel request ends the job ``canceled``: a job nobody canceled never becomes canceled.
    """

    def __init__(self, ctx: JobContext, job: Job) -> None:
        self.ctx, self.job_id = ctx, job.id
        self.claimed_by, self.attempt = job.worker, job.attempts
        self.started = time.monotonic()
        self.stage: str | None = None
        self.stage_started = self.started
        self.last_write = 0.0
        self.last_check = 0.0
        self.stop_reason: StopReason | None = None
        self.cache = TrackedInversionCache(ctx.blobs) if ctx.settings.inversion_cache else None

    def held(self, change: transitions.Mutation) -> transitions.Mutation:
        """``change`` applied only while the record still names this run (transitions.as_holder)."""
        return transitions.as_holder(change, self.claimed_by or "", self.attempt)

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
            self.ctx.stores.records.apply(
                self.job_id, self.held(lambda job: transitions.progress(job, stage, fraction))
            )
        except JobStoreDown:  # progress is best effort: a Redis blip must not cost the run
            logger.warning("could not record progress: job store unreachable")

    def end_stage(self, now: float | None = None) -> None:
        if self.stage is not None:
            elapsed = (now or time.monotonic()) - self.stage_started
            try:
                self.ctx.stores.stages.observe(self.stage, elapsed)
            except JobStoreDown:
                logger.warning("could not record stage duration", exc_info=True)
            self.stage = None

    def should_cancel(self) -> bool:
        if self.stop_reason is not None:
            return True
        if self.ctx.interrupted is not None and self.ctx.interrupted():
            return True  # not kept: an outage wait at shutdown still tells a final write from a step
        now = time.monotonic()
        self.stop_reason = lifecycle.over_time_limit(now - self.started, self.ctx.settings)
        if self.stop_reason is not None:
            return True
        if now - self.last_check < self.ctx.settings.cancel_check_interval:
            return False
        self.last_check = now
        try:
            job = self.ctx.stores.records.get(self.job_id)
        except JobStoreDown:  # cannot read the cancel flag now: keep going, look again later
            return False
        self.stop_reason = lifecycle.stop_reason(job, self.claimed_by, self.attempt)
        return self.stop_reason is not None


def claim_job(ctx: JobContext, job_id: str) -> lifecycle.Claim:
    """The claim (``lifecycle.claim``) as one atomic change of the record, and what it came to."""
    live = ctx.stores.workers.live()
    worker = ctx.worker or worker_name()
    before: list[Job] = []

    def tracked(job: Job) -> Job | None:
        before[:] = [job]  # apply may call this again after a conflicting write
        return lifecycle.claim(job, worker=worker, live_workers=live, max_attempts=ctx.settings.max_attempts)

    after = ctx.stores.records.apply(job_id, tracked)
    return lifecycle.claimed(before[0] if before else None, after, worker)


def run_job(ctx: JobContext, job_id: str) -> lifecycle.Run:
    """Claim job ``job_id`` and run it to a final record: how it ended (``lifecycle.Run``)."""
    with job_context(job_id):
        claim = claim_job(ctx, job_id)
        if claim.kind is not lifecycle.ClaimKind.CLAIMED or claim.job is None:
            logger.info("job not run: %s", claim.kind.value)
            return lifecycle.not_run(claim)
        job = claim.job
        logger.info("job started", extra={"attempt": job.attempts, "worker": job.worker})
        return lifecycle.ran(_attempt(ctx, job), job.worker or "", job.attempts)


def execute_job(ctx: JobContext, job_id: str) -> Job | None:
    """Run job ``job_id`` to a final record and return it (None for an unknown id)."""
    return run_job(ctx, job_id).job


def _attempt(ctx: JobContext, job: Job) -> Job | None:
    """One run of a claimed job, ending in a terminal record (or back in the queue on shutdown).

    None when the record is gone: the job was erased during the run, and what the run wrote (its
    result, the inversions it cached) is deleted again, so erasure is not undone by a late write.
    """
    tracker = JobTracker(ctx, job)
    final = _outcome(ctx, job, tracker)
    if final is None:
        _discard_writes(ctx, job, tracker)
    return final


def _outcome(ctx: JobContext, job: Job, tracker: JobTracker) -> Job | None:
    records = ctx.stores.records
    try:
        return _run(ctx, job, tracker)
    except TransferCanceled:
        tracker.end_stage()
        reason = lifecycle.why_stopped(tracker.stop_reason, ctx.interrupted is not None and ctx.interrupted())
        logger.info(_STOPPED[reason], extra={"stop_reason": reason.value})
        change = lifecycle.on_stop(reason, ctx.settings.max_attempts)
        if change is not None:
            return _noting(ctx, tracker, change)
        if reason is StopReason.ERASED:
            return None
        return _lost(records.get(job.id))
    except Exception as exc:  # every failure must end in a record, never a crashed worker
        tracker.end_stage()
        kind, detail = lifecycle.failure(exc, ctx.time_limit_errors)
        if kind == "internal_error":
            logger.exception("job failed")
        else:
            logger.warning("job failed: %s", detail, extra={"error_type": kind})
        # The job store itself gave up after the deadline: one more try, then the message is requeued.
        wait = not isinstance(exc, JobStoreDown)
        final = _noting(ctx, tracker, lambda j: transitions.fail(j, kind, detail), wait=wait)
        if final is not None and transitions.superseded(final, tracker.claimed_by or "", tracker.attempt):
            return _lost(final)
        return final


#: The log line of each stop (operators and the fault tests read them).
_STOPPED = {
    StopReason.SHUTDOWN: "job interrupted by shutdown; requeued",
    StopReason.TIME_LIMIT: "job stopped at its time limit",
    StopReason.CANCELED: "job canceled",
    StopReason.ERASED: "job erased during the run; stopped",
    StopReason.LOST: "job no longer held by this run",
}


def _lost(current: Job | None) -> Job | None:
    logger.warning("job no longer held by this run (taken over or re-queued); stopped without writing")
    return current


def _noting(
    ctx: JobContext, tracker: JobTracker, change: Callable[[Job], Job | None], *, wait: bool = True
) -> Job | None:
    """``change`` applied with the inversion keys this run used added to the record, only while the
    record still names this run (a run whose job was taken over writes nothing), and waited through
    a job-store outage (up to STORAGE_OUTAGE_DEADLINE) if ``wait``."""
    used = tracker.cache.used if tracker.cache is not None else []

    def with_inversions(job: Job) -> Job | None:
        new = change(job)
        missing = [key for key in dict.fromkeys(used) if key not in job.inversion_keys]
        if not missing:
            return new
        return (new or job).model_copy(update={"inversion_keys": [*job.inversion_keys, *missing]})

    def write() -> Job | None:
        return ctx.stores.records.apply(tracker.job_id, tracker.held(with_inversions))

    return through_outage(ctx, "record the outcome", write) if wait else write()


def _discard_writes(ctx: JobContext, job: Job, tracker: JobTracker) -> None:
    """The job was erased during this run: delete the results and inversions this run wrote."""
    keys = [
        result_key(job.id, ctype, job.attempts, index)
        for index in range(len(job.appearance_keys))
        for ctype in EXTENSIONS
    ]
    keys += tracker.cache.written if tracker.cache is not None else []
    for key in keys:
        try:
            ctx.blobs.delete(key)
        except (BlobStoreDown, BlobNotFound):
            logger.warning("could not delete %s written for an erased job; the expiry sweep will", key)


def _run(ctx: JobContext, job: Job, tracker: JobTracker) -> Job | None:
    params = TransferParams.model_validate(job.params)
    blobs = ctx.blobs
    structure = through_outage(ctx, "read the inputs", lambda: blobs.get(job.structure_key), tracker)
    appearances = [
        through_outage(ctx, "read the inputs", functools.partial(blobs.get, key), tracker)
        for key in job.appearance_keys
    ]
    result = ctx.pipeline.transfer(
        structure,
        appearances,
        params,
        progress=tracker.progress,
        should_cancel=tracker.should_cancel,
        inversion_cache=tracker.cache,
    )
    current = _noting(ctx, tracker, lambda j: None)
    if current is None:
        tracker.end_stage()
        logger.info("job erased during the run; its results are not uploaded")
        return None
    if transitions.superseded(current, tracker.claimed_by or "", tracker.attempt):  # taken over
        tracker.stop_reason = StopReason.LOST
        raise TransferCanceled("the job is no longer held by this run")
    tracker.progress("uploading", 0.0)
    upload_started = time.perf_counter()
    encoded = result.encode_all()
    if len(encoded) != len(job.appearance_keys):  # the pipeline's contract: one image per appearance
        raise RuntimeError(
            f"the pipeline returned {len(encoded)} images for {len(job.appearance_keys)} appearances"
        )
    keys = []
    for index, data in enumerate(encoded):
        # One object per image and attempt: a superseded run that uploads late never replaces the
        # new attempt's results.
        key = result_key(job.id, result.content_type, attempt=job.attempts, index=index)
        through_outage(
            ctx,
            "upload the result",
            functools.partial(blobs.put, key, data, result.content_type),
            tracker,
        )
        keys.append(key)
        tracker.progress("uploading", (index + 1) / len(encoded))
    tracker.end_stage()
    stored, output, metrics = describe_result(job, result, keys)
    metrics["upload_s"] = round(time.perf_counter() - upload_started, 4)
    params_used = result.params.model_dump(mode="json")
    final = _noting(
        ctx,
        tracker,
        lambda j: transitions.succeed(j, results=stored, params=params_used, metrics=metrics, output=output),
    )
    if final is None:
        logger.info("job erased during the upload; its results are deleted again")
    elif transitions.superseded(final, tracker.claimed_by or "", tracker.attempt):
        tracker.stop_reason = StopReason.LOST
        raise TransferCanceled("the job is no longer held by this run")
    else:
        logger.info("job succeeded", extra={"metrics": metrics})
    return final


def describe_result(
    job: Job, result: TransferResult, keys: list[str]
) -> tuple[list[JobResult], OutputRecord, dict[str, Any]]:
    """(stored results in order, output shape, metrics) of a pipeline result.

    The pipeline's diagnostics give AdaIN per image (lists); each stored result keeps its own, and
    the metrics keep the first image's (their v1.1 meaning) next to the rows and the output shape.
    """
    diagnostics = dict(result.diagnostics)
    count = len(keys)
    adain = _per_image(diagnostics.pop("adain_applied", None), count)
    masks = _per_image(diagnostics.pop("object_masks_found", None), count)
    diagnostics.pop("crop", None)  # a box, in the output (not a metric)
    shape = result.shape
    stored = [
        JobResult(
            key=key,
            content_type=result.content_type,
            width=image.width,
            height=image.height,
            adain_applied=adain[index],
            object_masks_found=masks[index],
        )
        for index, (key, image) in enumerate(zip(keys, result.images, strict=True))
    ]
    crop = None
    if shape.crop is not None:
        crop = dict(zip(("left", "top", "right", "bottom"), map(int, shape.crop), strict=True))
    output = {
        "width": int(shape.result_width),
        "height": int(shape.result_height),
        "aspect_clamped": bool(shape.clamped),
        "grid_width": int(shape.width),
        "grid_height": int(shape.height),
        "crop": crop,
    }
    queue_s = (job.started_at - job.created_at).total_seconds() if job.started_at else 0.0
    rows = getattr(result, "unet_rows", None) or {}
    metrics = {
        "queue_s": round(queue_s, 4),
        **{name: round(float(value), 4) for name, value in result.timings.items()},
        "inversion_cache_hits": int(result.inversion_cache_hits),
        **{name: value for name, value in diagnostics.items() if _scalar(value)},
        "adain_applied": adain[0],
        "object_masks_found": masks[0],
        "appearances": count,
        "rows_per_step": int(result.rows_per_step),
        **{f"unet_rows_{name}": int(value) for name, value in rows.items()},
        "output_width": output["width"],
        "output_height": output["height"],
        "aspect_clamped": output["aspect_clamped"],
        "grid_width": output["grid_width"],
        "grid_height": output["grid_height"],
    }
    return stored, output, metrics


def _per_image(value: object, count: int) -> list[Any]:
    """A diagnostic as one value per image: a list as given, a single value repeated."""
    if isinstance(value, (list, tuple)):
        return [*value, *[None] * (count - len(value))][:count]
    return [value] * count


def _scalar(value: object) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


#: First pause and longest pause between tries while storage is unreachable (doubling in between).
OUTAGE_FIRST_DELAY_S = 0.5
OUTAGE_MAX_DELAY_S = 5.0
_OUTAGE_ERRORS = (BlobStoreDown, JobStoreDown)


def through_outage(ctx: JobContext, what: str, call: Callable[[], T], tracker: JobTracker | None = None) -> T:
    """``call()``, tried again with backoff while the object or job store is unreachable.

    A storage outage is waited out up to QALIGN_STORAGE_OUTAGE_DEADLINE seconds (the worker's
    heartbeat goes on meanwhile, so nobody takes the job over); only then does the error reach the
    caller (the job fails with storage_unavailable). A cancel request or a shutdown ends the wait.
    """
    deadline = time.monotonic() + ctx.settings.storage_outage_deadline
    backoff = wait_exponential(multiplier=OUTAGE_FIRST_DELAY_S, max=OUTAGE_MAX_DELAY_S)

    def give_up(state: RetryCallState) -> bool:
        # Past the deadline, or shutting down during a final write (the job goes back to the queue).
        stopping = ctx.interrupted is not None and ctx.interrupted()
        return deadline - time.monotonic() <= 0 or (stopping and tracker is None)

    def warn(state: RetryCallState) -> None:
        logger.warning(
            "storage unavailable (%s); retrying in %.1f s: %s",
            what,
            state.upcoming_sleep,
            _error(state),
            extra={"outage_tries": state.attempt_number},
        )

    def fail(state: RetryCallState) -> NoReturn:
        logger.error(
            "storage still unavailable after %s tries; giving up: %s", state.attempt_number, _error(state)
        )
        raise _error(state)  # the outage error itself: the caller fails the job with storage_unavailable

    retrying = Retrying(
        retry=retry_if_exception_type(_OUTAGE_ERRORS),
        stop=give_up,
        wait=lambda state: max(min(backoff(state), deadline - time.monotonic()), 0.0),
        sleep=lambda seconds: _pause(ctx, seconds, tracker),
        before_sleep=warn,
        retry_error_callback=fail,
    )
    result = retrying(call)
    if (tries := retrying.statistics["attempt_number"] - 1) > 0:
        logger.info("storage reachable again (%s) after %s tries", what, tries)
    return result


def _error(state: RetryCallState) -> BaseException:
    """The exception the last attempt raised (only a failed attempt is tried again)."""
    error = state.outcome.exception() if state.outcome is not None else None
    assert error is not None
    return error


def _pause(ctx: JobContext, seconds: float, tracker: JobTracker | None) -> None:
    """Sleep ``seconds`` in short steps; a shutdown or a cancel request ends it (TransferCanceled)."""
    until = time.monotonic() + seconds
    while (left := until - time.monotonic()) > 0:
        if tracker is not None and tracker.should_cancel():
            raise TransferCanceled("stopped while waiting for storage")
        if tracker is None and ctx.interrupted is not None and ctx.interrupted():
            return  # a final write: one more try, then the error goes up (see through_outage)
        time.sleep(min(left, 0.25))


def load_pipeline(settings: Settings) -> QAlignPipeline:
    """The pipeline a worker runs, from settings; imported here so the API never pays for torch."""
    from qalign_core.pipeline import QAlignPipeline
    from service.logs import route_library_logs

    route_library_logs(load=True)  # diffusers/transformers logs into our JSON stream, no progress bars
    logger.info("loading model %s", settings.model, extra={"model": settings.model})
    started = time.perf_counter()
    pipeline = QAlignPipeline.from_pretrained(
        settings.model,
        device=settings.device,
        dtype=settings.dtype,
        allow_pickle=settings.allow_pickle_weights,
        model_config_dir=settings.model_config_dir,
    )
    logger.info(
        "model loaded", extra={"model": settings.model, "load_s": round(time.perf_counter() - started, 2)}
    )
    return pipeline
