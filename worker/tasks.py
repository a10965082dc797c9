"""The transfer task and the per-process worker state (pipeline loaded once, heartbeat).

The task body is one call to service.jobs.runner.execute_job, the same code the embedded mode runs.
Around it sit the delivery guarantees (docs/service.md, "Crash recovery and shutdown"): a message is
acknowledged only once its job record is final; a job stopped by a shutdown, or whose record could
not be written, goes back to the queue; a job held by another worker that may still be alive is
retried later instead of being dropped.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from dataclasses import dataclass

from celery.exceptions import Reject, SoftTimeLimitExceeded

from service.jobs import JobStores, StoreUnavailable, open_job_stores, worker_name
from service.jobs.heartbeat import Heartbeat
from service.jobs.runner import JobContext, TransferPipeline, execute_job, load_pipeline
from service.jobs.takeover import TakeoverWatch
from service.logs import configure_logging
from service.settings import Settings
from service.storage import ObjectStore, make_object_store
from worker.celery_app import TASK_NAME, app

logger = logging.getLogger("qalign.worker")


@dataclass
class WorkerState:
    """What one worker process holds for all its tasks."""

    settings: Settings
    pipeline: TransferPipeline
    stores: JobStores
    store: ObjectStore
    name: str
    heartbeat: Heartbeat | None
    takeover: TakeoverWatch | None = None

    def context(self) -> JobContext:
        return JobContext(
            self.stores,
            self.store,
            self.settings,
            self.pipeline,
            worker=self.name,
            interrupted=interrupt.is_set,
            time_limit_errors=(SoftTimeLimitExceeded,),
        )


_state: WorkerState | None = None
_state_lock = threading.Lock()
#: Set when this process must stop its running job at the next step and requeue it (shutdown grace over).
interrupt = threading.Event()


@functools.cache
def worker_settings() -> Settings:
    """The settings of this process, read once (signal handlers and tasks share them)."""
    return Settings()


def worker_state() -> WorkerState:
    """Load the model and open the stores once per process (normally at process start)."""
    global _state
    with _state_lock:
        if _state is None:
            settings = worker_settings()
            configure_logging(settings.log_level)
            pipeline = load_pipeline(settings)
            stores, store = open_job_stores(settings), make_object_store(settings)
            name = worker_name()
            heartbeat = Heartbeat(stores.workers, name, settings, pipeline)
            _state = WorkerState(settings, pipeline, stores, store, name, heartbeat)
            heartbeat.start()
            _state.takeover = TakeoverWatch(
                stores.records,
                stores.workers,
                republish,
                interval=settings.takeover_check_interval or settings.heartbeat_interval,
                heartbeat_ttl=settings.heartbeat_ttl,
            ).start()
            logger.info("worker ready", extra={"worker": name, "model": settings.model})
        return _state


def republish(job_id: str) -> None:
    """Publish job ``job_id`` again (its worker was lost); the claim decides who runs it."""
    transfer.apply_async(args=[job_id])


@app.task(name=TASK_NAME, ignore_result=True, bind=True)
def transfer(self, job_id: str) -> str | None:
    """Run job ``job_id``; the message carries the id only, everything else is in the job record."""
    state = worker_state()
    settings = state.settings
    if state.heartbeat is not None:  # names the job before the claim does: a live holder is never taken over
        state.heartbeat.current_job = job_id
        state.heartbeat.beat()
    try:
        job = execute_job(state.context(), job_id)
    except StoreUnavailable as exc:
        # The record could not be read or finished (Redis away): keep the message. Requeued now, or,
        # if Redis cannot take even that, redelivered after the visibility timeout. The pause keeps a
        # worker from spinning on the same message while Redis is away.
        logger.warning("job store unreachable; job requeued: %s", exc, extra={"job_id": job_id})
        time.sleep(min(settings.heartbeat_interval, 5.0))
        raise Reject(str(exc), requeue=True) from exc
    finally:
        if state.heartbeat is not None:
            state.heartbeat.current_job = None
    if job is None:  # unknown id, or another worker took the job over from this run
        return None
    if job.status == "queued":  # stopped by the shutdown grace and put back in the queue
        raise Reject("worker shutting down; job requeued", requeue=True)
    if job.status == "running" and job.worker != state.name:
        # Another worker holds it and its heartbeat still names it: alive, or dead for less than
        # HEARTBEAT_TTL. Look again later; the holder's time limit bounds the wait.
        countdown = max(settings.heartbeat_ttl, 1.0)
        retries = math.ceil(settings.job_hard_time_limit / countdown) + 2
        logger.info("job held by %s; retrying in %s s", job.worker, countdown, extra={"job_id": job_id})
        raise self.retry(countdown=countdown, max_retries=retries)
    return job.status


from worker import signals as _signals  # noqa: E402,F401 - connects the worker's signal handlers
