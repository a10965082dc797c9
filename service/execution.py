"""Running one job: the single code path of the Celery task and the embedded worker thread.

claim the record -> read inputs from the store -> pipeline.transfer (progress and cancel checks
through the job record) -> upload the result -> final record. Failures become a ``failed`` record
with a typed error; nothing a job does can take the worker down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pydantic import ValidationError

from qalign_core.errors import InvalidImageError, ModelLoadError, QAlignError, TransferCanceled
from qalign_core.params import TransferParams
from service.jobs import Job, JobError, JobResult, JobStore, StoreUnavailable, utcnow, worker_name
from service.logs import job_context
from service.settings import Settings
from service.storage import (
    ObjectNotFound,
    ObjectStore,
    StorageUnavailable,
    StoreInversionCache,
    result_key,
)
from service.views import job_json
from service.webhooks import EventSender

logger = logging.getLogger("qalign.job")

#: Share of the overall progress bar each pipeline stage covers.
STAGE_SPANS: dict[str, tuple[float, float]] = {
    "loading": (0.0, 0.05),
    "inverting": (0.05, 0.35),
    "denoising": (0.35, 0.93),
    "decoding": (0.93, 0.97),
    "uploading": (0.97, 1.0),
}


class JobTracker:
    """Turns pipeline callbacks into throttled job-record writes, stage timings and cancel checks."""

    def __init__(
        self, jobs: JobStore, job_id: str, settings: Settings, interrupted: Callable[[], bool] | None = None
    ) -> None:
        self.jobs, self.job_id, self.settings = jobs, job_id, settings
        self.interrupted = interrupted
        self.stage: str | None = None
        self.stage_started = time.monotonic()
        self.last_write = 0.0
        self.last_check = 0.0
        self.cancel_seen = False

    def progress(self, stage: str, fraction: float) -> None:
        now = time.monotonic()
        changed = stage != self.stage
        if changed:
            self.end_stage(now)
            self.stage, self.stage_started = stage, now
            logger.info("stage %s", stage, extra={"stage": stage})
        if not changed and now - self.last_write < self.settings.progress_interval:
            return
        low, high = STAGE_SPANS.get(stage, (0.0, 1.0))
        overall = round(low + (high - low) * min(max(fraction, 0.0), 1.0), 4)
        self.last_write = now
        try:
            self.jobs.modify(
                self.job_id,
                lambda job: (
                    job.model_copy(update={"stage": stage, "progress": max(overall, job.progress)})
                    if job.status == "running"
                    else None
                ),
            )
        except StoreUnavailable:  # progress is best effort: a Redis blip must not cost the run
            logger.warning("could not record progress: job store unreachable")

    def end_stage(self, now: float | None = None) -> None:
        if self.stage is not None:
            elapsed = (now or time.monotonic()) - self.stage_started
            try:
                self.jobs.observe_stage(self.stage, elapsed)
            except StoreUnavailable:
                logger.warning("could not record stage duration", exc_info=True)
            self.stage = None

    def should_cancel(self) -> bool:
        if self.interrupted is not None and self.interrupted():
            return True
        now = time.monotonic()
        if self.cancel_seen or now - self.last_check < self.settings.cancel_check_interval:
            return self.cancel_seen
        self.last_check = now
        try:
            job = self.jobs.get(self.job_id)
        except StoreUnavailable:  # cannot read the cancel flag now: keep going, look again later
            return False
        self.cancel_seen = job is None or job.cancel_requested or job.status != "running"
        return self.cancel_seen


def execute_job(
    job_id: str,
    pipeline,
    jobs: JobStore,
    store: ObjectStore,
    settings: Settings,
    *,
    worker: str | None = None,
    interrupted: Callable[[], bool] | None = None,
) -> Job | None:
    """Run job ``job_id`` to a final record and return it (None for an unknown id).

    ``pipeline`` is a loaded QAlignPipeline. ``interrupted`` says the process is shutting down: the
    run stops at its next step and the job goes back to the queue instead of being canceled.
    """
    with job_context(job_id):
        job, ended = jobs.claim_outcome(job_id, worker or worker_name(), settings.max_attempts)
        if job is None:
            current = jobs.get(job_id)
            logger.info("job not run: %s", current.status if current else "unknown id")
            if ended is not None:  # the claim itself ended it (out of attempts, or cancel requested)
                sender = webhook_sender(ended, settings)
                if sender is not None:
                    sender.send(job_json(ended, store, settings))
                    sender.close()
            return current
        logger.info("job started", extra={"attempt": job.attempts, "worker": job.worker})
        sender = webhook_sender(job, settings)
        if sender is not None:
            sender.send(job_json(job, store, settings))
        final = None
        try:
            final = _attempt(job, pipeline, jobs, store, settings, interrupted)
            return final
        finally:
            if sender is not None:
                if final is not None and final.finished:
                    try:
                        sender.send(job_json(final, store, settings))
                    except Exception:  # e.g. presigning failed: the job's outcome stands regardless
                        logger.warning("could not build the webhook body", exc_info=True)
                sender.close()


def webhook_sender(job: Job, settings: Settings) -> EventSender | None:
    """A background sender of this job's webhook events, or None when it has no webhook_url."""
    if not job.webhook_url:
        return None
    if not settings.webhook_secret:
        logger.warning("job has a webhook_url but QALIGN_WEBHOOK_SECRET is unset; not delivered")
        return None
    return EventSender(
        job.webhook_url,
        settings.webhook_secret,
        allow_hosts=settings.allowed_webhook_hosts,
        attempts=settings.webhook_attempts,
        backoff_s=settings.webhook_backoff_s,
        timeout_s=settings.webhook_timeout_s,
    )


def _attempt(
    job: Job,
    pipeline,
    jobs: JobStore,
    store: ObjectStore,
    settings: Settings,
    interrupted: Callable[[], bool] | None,
) -> Job | None:
    """One run of a claimed job, ending in a terminal record (or back in the queue on shutdown)."""
    job_id = job.id
    tracker = JobTracker(jobs, job_id, settings, interrupted)
    try:
        return _run(job, pipeline, jobs, store, settings, tracker)
    except TransferCanceled:
        tracker.end_stage()
        if interrupted is not None and interrupted() and not tracker.cancel_seen:
            logger.info("job interrupted by shutdown; requeued")
            return jobs.requeue(
                job_id, "the worker stopped during the run", settings.max_attempts, refund=True
            )
        logger.info("job canceled")
        return _finish(jobs, job_id, status="canceled")
    except Exception as exc:  # every failure must end in a record, never a crashed worker
        tracker.end_stage()
        kind, detail = _classify(exc)
        if kind == "internal_error":
            logger.exception("job failed")
        else:
            logger.warning("job failed: %s", detail, extra={"error_type": kind})
        return _finish(jobs, job_id, status="failed", error=JobError(type=kind, detail=detail))


def _run(
    job: Job, pipeline, jobs: JobStore, store: ObjectStore, settings: Settings, tracker: JobTracker
) -> Job:
    params = TransferParams.model_validate(job.params)
    structure, appearance = store.get(job.structure_key), store.get(job.appearance_key)
    cache = StoreInversionCache(store) if settings.inversion_cache else None
    result = pipeline.transfer(
        structure,
        appearance,
        params,
        progress=tracker.progress,
        should_cancel=tracker.should_cancel,
        inversion_cache=cache,
    )
    tracker.progress("uploading", 0.0)
    upload_started = time.perf_counter()
    key = result_key(job.id, result.content_type)
    store.put(key, result.encode(), result.content_type)
    tracker.end_stage()
    queue_s = (job.started_at - job.created_at).total_seconds() if job.started_at else 0.0
    metrics = {
        "queue_s": round(queue_s, 4),
        **{name: round(float(value), 4) for name, value in result.timings.items()},
        "upload_s": round(time.perf_counter() - upload_started, 4),
        "inversion_cache_hits": int(result.inversion_cache_hits),
        **result.diagnostics,
    }
    final = _finish(
        jobs,
        job.id,
        status="succeeded",
        result=JobResult(
            key=key, content_type=result.content_type, width=result.image.width, height=result.image.height
        ),
        params=result.params.model_dump(mode="json"),
        metrics=metrics,
    )
    logger.info("job succeeded", extra={"metrics": metrics})
    return final


def _finish(jobs: JobStore, job_id: str, *, status: str, **fields: object) -> Job | None:
    """Write the terminal state unless the record already is terminal (e.g. canceled meanwhile)."""
    update = {"status": status, "finished_at": utcnow(), **fields}
    if status == "succeeded":
        update.update(stage="done", progress=1.0)

    def change(job: Job) -> Job | None:
        if job.finished:
            return None
        return job.model_copy(update=update)

    return jobs.modify(job_id, change)


def _classify(exc: Exception) -> tuple[str, str]:
    """(error type, caller-facing detail); internals are not leaked in the detail."""
    if isinstance(exc, InvalidImageError):
        return "invalid_image", str(exc)
    if isinstance(exc, ModelLoadError):
        return "model_load_error", str(exc)
    if isinstance(exc, ValidationError):
        return "invalid_parameters", str(exc)
    if isinstance(exc, (QAlignError, ValueError)):
        return "invalid_request", str(exc)
    if isinstance(exc, ObjectNotFound):
        return "input_missing", f"an input image is missing from the store: {exc}"
    if isinstance(exc, (StorageUnavailable, StoreUnavailable)):
        return "storage_unavailable", str(exc)
    if type(exc).__name__ == "SoftTimeLimitExceeded":  # Celery's soft limit; no celery import here
        return "time_limit", "the job ran longer than QALIGN_JOB_TIME_LIMIT and was stopped"
    return "internal_error", f"the worker failed unexpectedly ({type(exc).__name__}); see the worker logs"


def load_pipeline(settings: Settings):
    """The pipeline a worker runs, from settings; imported here so the API never pays for torch."""
    from qalign_core.pipeline import QAlignPipeline

    logger.info("loading model %s", settings.model, extra={"model": settings.model})
    started = time.perf_counter()
    pipeline = QAlignPipeline.from_pretrained(settings.model, device=settings.device, dtype=settings.dtype)
    logger.info(
        "model loaded", extra={"model": settings.model, "load_s": round(time.perf_counter() - started, 2)}
    )
    return pipeline


def gpu_memory_bytes(pipeline) -> int | None:
    device = getattr(pipeline, "device", None)
    if device is None or getattr(device, "type", None) != "cuda":
        return None
    import torch

    return int(torch.cuda.memory_allocated(device))


class Heartbeat:
    """Refreshes this worker's heartbeat record in a daemon thread, also while a job runs.

    Readiness counts a worker as live while its record is fresher than QALIGN_HEARTBEAT_TTL.
    """

    def __init__(self, jobs: JobStore, name: str, info: Callable[[], dict], settings: Settings) -> None:
        import threading

        self.jobs, self.name, self.info, self.settings = jobs, name, info, settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="qalign-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def beat(self) -> None:
        try:
            self.jobs.heartbeat(self.name, {"ts": time.time(), **self.info()}, self.settings.heartbeat_ttl)
        except StoreUnavailable:
            logger.warning("heartbeat failed: job store unreachable")

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_interval):
            self.beat()

    def stop(self) -> None:
        self._stop.set()
