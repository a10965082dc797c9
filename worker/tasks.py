"""The transfer task and the per-process worker state (pipeline loaded once, heartbeat).

The task body is one call to service.jobs.runner.run_job, the same code the embedded mode runs; what
then happens to the message (acked, requeued, retried later) is service.jobs.lifecycle.delivery's
answer, mapped to Celery here (docs/service.md, "Crash recovery and shutdown").
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass

import redis
from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded

from service.backends import open_job_stores
from service.backends.blobs import BlobStore, open_blob_store
from service.backends.celery_queue import broker_view
from service.jobs import JobStoreDown, JobStores, lifecycle, worker_name
from service.jobs.heartbeat import Heartbeat
from service.jobs.runner import JobContext, TransferPipeline, load_pipeline, run_job
from service.jobs.takeover import TakeoverWatch
from service.logs import configure_logging
from service.settings import Settings
from worker.celery_app import TASK_NAME, app

logger = logging.getLogger("qalign.worker")


@dataclass
class WorkerState:
    """What one worker process holds for all its tasks."""

    settings: Settings
    pipeline: TransferPipeline
    stores: JobStores
    blobs: BlobStore
    name: str
    heartbeat: Heartbeat | None
    takeover: TakeoverWatch | None = None

    def context(self) -> JobContext:
        return JobContext(
            self.stores,
            self.blobs,
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
            stores, blobs = open_job_stores(settings), open_blob_store(settings)
            name = worker_name()
            heartbeat = Heartbeat(stores.workers, name, settings, pipeline)
            _state = WorkerState(settings, pipeline, stores, blobs, name, heartbeat)
            heartbeat.start()
            _state.takeover = TakeoverWatch(
                stores.records,
                stores.workers,
                republish,
                interval=settings.takeover_check_interval or settings.heartbeat_interval,
                heartbeat_ttl=settings.heartbeat_ttl,
                broker=functools.partial(broker_view, broker_client(settings)),
                stranded_after=settings.stranded_message_after,
            ).start()
            logger.info("worker ready", extra={"worker": name, "model": settings.model})
        return _state


def broker_client(settings: Settings) -> redis.Redis:
    """A client of the broker's Redis, to read which jobs have a message there (the takeover scan)."""
    url = settings.redis_url or "redis://127.0.0.1:6379/0"
    return redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10)


def republish(job_id: str) -> None:
    """Publish job ``job_id`` again (its worker was lost); the claim decides who runs it."""
    transfer.apply_async(args=[job_id])


def _transfer(self: Task, job_id: str) -> str | None:
    """Run job ``job_id``; the message carries the id only, everything else is in the job record.

    The message's fate is ``lifecycle.delivery`` of the run's outcome, mapped to Celery: acked by
    returning, requeued by Reject, looked at again later by retry.
    """
    state = worker_state()
    fault_point("before_claim", job_id)
    if state.heartbeat is not None:  # names the job before the claim does: a live holder is never taken over
        state.heartbeat.current_job = job_id
        state.heartbeat.beat()
    try:
        outcome = lifecycle.delivery(run_job(state.context(), job_id), state.settings)
    except JobStoreDown as exc:
        outcome = lifecycle.store_unreachable(state.settings, exc)
        logger.warning("job store unreachable; job requeued: %s", exc, extra={"job_id": job_id})
    finally:
        if state.heartbeat is not None:
            state.heartbeat.current_job = None
    if outcome.action is lifecycle.Delivery.REQUEUE:
        time.sleep(outcome.pause)
        raise Reject(outcome.reason, requeue=True)
    if outcome.action is lifecycle.Delivery.RETRY_LATER:
        logger.info("%s; retrying in %s s", outcome.reason, outcome.countdown, extra={"job_id": job_id})
        raise self.retry(countdown=outcome.countdown, max_retries=outcome.max_retries)
    return outcome.status


#: The Celery task (``_transfer`` bound to it), registered by call: Celery's decorator is untyped.
transfer = app.task(name=TASK_NAME, ignore_result=True, bind=True)(_transfer)


#: Test-only fault injection, read from the environment at each fault point: the name of the point
#: where this worker dies (SIGKILL to its whole process group: main process and pool, as a lost host).
#: ``before_claim``: holding a job's message, before the claim (tests/integration/test_faults.py).
FAULT_ENV = "QALIGN_TEST_FAULT"


def fault_point(name: str, job_id: str) -> None:
    if os.environ.get(FAULT_ENV) == name:
        logger.warning("fault injection: killing this worker at %s", name, extra={"job_id": job_id})
        os.killpg(os.getpgid(0), signal.SIGKILL)
