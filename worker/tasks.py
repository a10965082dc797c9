"""The transfer task and the per-process worker state (pipeline loaded once, heartbeat).

The task body is one call to service.execution.execute_job, the same code the embedded mode runs.
Around it sit the delivery guarantees (docs/service.md, "Crash recovery and shutdown"): a message is
acknowledged only once its job record is final; a job stopped by a shutdown, or whose record could
not be written, goes back to the queue; a job held by another worker that may still be alive is
retried later instead of being dropped.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass

from celery import signals
from celery.exceptions import Reject, TimeLimitExceeded

from service.execution import Heartbeat, execute_job, gpu_memory_bytes, load_pipeline
from service.jobs import JobError, JobStore, StoreUnavailable, make_job_store, utcnow, worker_name
from service.logs import configure_logging
from service.settings import Settings
from service.storage import ObjectStore, make_object_store
from worker.celery_app import TASK_NAME, app

logger = logging.getLogger("qalign.worker")


@dataclass
class WorkerState:
    settings: Settings
    pipeline: object
    jobs: JobStore
    store: ObjectStore
    name: str
    heartbeat: Heartbeat
    current_job: str | None = None


_state: WorkerState | None = None
_state_lock = threading.Lock()
#: Set when this process must stop its running job at the next step and requeue it (shutdown grace over).
_interrupt = threading.Event()
#: The WorkController of this worker (main process), to reach the prefork pool's children at shutdown.
_controller: object | None = None
#: Signal the main process sends a prefork child to interrupt its job (SIGUSR1 is the soft time limit).
INTERRUPT_SIGNAL = signal.SIGUSR2


def worker_state() -> WorkerState:
    """Load the model and open the stores once per process (normally at process start)."""
    global _state
    with _state_lock:
        if _state is None:
            settings = Settings()
            configure_logging(settings.log_level)
            pipeline = load_pipeline(settings)
            jobs, store = make_job_store(settings), make_object_store(settings)
            name = worker_name()
            holder: dict = {}

            def info() -> dict:
                current = holder.get("state")
                return {
                    "model": settings.model,
                    "job": current.current_job if current else None,
                    "gpu_memory_bytes": gpu_memory_bytes(pipeline),
                }

            heartbeat = Heartbeat(jobs, name, info, settings)
            _state = WorkerState(settings, pipeline, jobs, store, name, heartbeat)
            holder["state"] = _state
            heartbeat.start()
            logger.info("worker ready", extra={"worker": name, "model": settings.model})
        return _state


@signals.setup_logging.connect
def _setup_logging(**_: object) -> None:
    """Connecting here stops Celery from installing its own (non-JSON) log handlers."""
    configure_logging(Settings().log_level)


@signals.worker_process_init.connect
def _load_in_child(**_: object) -> None:
    """Prefork pool: each child process loads the pipeline once, before taking a task."""
    signal.signal(INTERRUPT_SIGNAL, lambda *_: _interrupt.set())
    worker_state()


@signals.worker_init.connect
def _load_in_main(sender=None, **_: object) -> None:
    """Solo/threads pools run tasks in the main process, where worker_process_init never fires."""
    global _controller
    _controller = sender
    pool_cls = getattr(sender, "pool_cls", None)
    pool = f"{getattr(pool_cls, '__module__', '')} {pool_cls}"
    if "solo" in pool or "threads" in pool:
        worker_state()


@signals.worker_shutdown.connect
def _stop_heartbeat(**_: object) -> None:
    if _state is not None:
        _state.heartbeat.stop()


@signals.worker_shutting_down.connect
def _shutdown_grace(sig: str | None = None, how: str | None = None, **_: object) -> None:
    """Warm shutdown (SIGTERM): Celery lets the running job finish; after WORKER_SHUTDOWN_GRACE s the
    job is stopped at its next step and requeued instead, so an orchestrator's kill loses nothing."""
    grace = Settings().worker_shutdown_grace
    timer = threading.Timer(grace, _interrupt_running_jobs)
    timer.daemon = True
    timer.start()
    logger.info("shutdown: the running job has %s s to finish before it is requeued", grace)


def _interrupt_running_jobs() -> None:
    """Solo/threads pool: the job runs in this process. Prefork: signal each pool child."""
    _interrupt.set()
    pool = getattr(_controller, "pool", None)
    try:
        pids = list((getattr(pool, "info", None) or {}).get("processes", []))
    except Exception:  # the pool may be closing; the message comes back anyway (see docs)
        pids = []
    for pid in pids:
        if isinstance(pid, int) and pid != os.getpid():
            with contextlib.suppress(OSError):
                os.kill(pid, INTERRUPT_SIGNAL)


@signals.task_failure.connect
def _hard_time_limit(sender=None, exception=None, args=None, **_: object) -> None:
    """The hard time limit killed the process running a job: fail its record (the message is acked)."""
    if getattr(sender, "name", None) != TASK_NAME or not isinstance(exception, TimeLimitExceeded) or not args:
        return
    settings = Settings()
    error = JobError(
        type="time_limit",
        detail=f"the job ran past the hard time limit ({settings.job_hard_time_limit} s) and was killed",
    )
    jobs = make_job_store(settings)
    try:
        jobs.modify(
            str(args[0]),
            lambda job: (
                job.model_copy(update={"status": "failed", "finished_at": utcnow(), "error": error})
                if job.status == "running"
                else None
            ),
        )
    except StoreUnavailable:
        logger.warning("could not record the hard time limit of job %s", args[0], exc_info=True)
    finally:
        jobs.close()


@app.task(name=TASK_NAME, ignore_result=True, bind=True)
def transfer(self, job_id: str) -> str | None:
    """Run job ``job_id``; the message carries the id only, everything else is in the job record."""
    state = worker_state()
    settings = state.settings
    state.current_job = job_id
    if state.heartbeat is not None:  # names the job before the claim does: a live holder is never taken over
        state.heartbeat.beat()
    try:
        job = execute_job(
            job_id,
            state.pipeline,
            state.jobs,
            state.store,
            settings,
            worker=state.name,
            interrupted=_interrupt.is_set,
        )
    except StoreUnavailable as exc:
        # The record could not be read or finished (Redis away): keep the message. Requeued now, or,
        # if Redis cannot take even that, redelivered after the visibility timeout.
        logger.warning("job store unreachable; job requeued: %s", exc, extra={"job_id": job_id})
        time.sleep(min(settings.heartbeat_interval, 5.0))
        raise Reject(str(exc), requeue=True) from exc
    finally:
        state.current_job = None
    if job is None:
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
