"""The transfer task and the per-process worker state (pipeline loaded once, heartbeat).

The task body is one call to service.execution.execute_job, the same code the embedded mode runs.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from celery import signals

from service.execution import Heartbeat, execute_job, gpu_memory_bytes, load_pipeline
from service.jobs import JobStore, make_job_store, worker_name
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
    worker_state()


@signals.worker_init.connect
def _load_in_main(sender=None, **_: object) -> None:
    """Solo/threads pools run tasks in the main process, where worker_process_init never fires."""
    pool_cls = getattr(sender, "pool_cls", None)
    pool = f"{getattr(pool_cls, '__module__', '')} {pool_cls}"
    if "solo" in pool or "threads" in pool:
        worker_state()


@signals.worker_shutdown.connect
def _stop_heartbeat(**_: object) -> None:
    if _state is not None:
        _state.heartbeat.stop()


@app.task(name=TASK_NAME, ignore_result=True)
def transfer(job_id: str) -> str | None:
    """Run job ``job_id``; the message carries the id only, everything else is in the job record."""
    state = worker_state()
    state.current_job = job_id
    try:
        job = execute_job(job_id, state.pipeline, state.jobs, state.store, state.settings, worker=state.name)
    finally:
        state.current_job = None
    return job.status if job else None
