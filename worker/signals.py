"""Celery signal handlers of the worker: logging, model loading per process, shutdown grace,
and the hard time limit. Settings come from worker.tasks.worker_settings (read once per process).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Sequence
from typing import Any

from celery import signals
from celery.exceptions import TimeLimitExceeded

from service.backends import open_job_stores
from service.jobs import JobStoreDown, lifecycle
from service.logs import configure_logging
from worker import tasks
from worker.celery_app import TASK_NAME

logger = logging.getLogger("qalign.worker")

#: Signal the main process sends a prefork child to interrupt its job (SIGUSR1 is the soft time limit).
INTERRUPT_SIGNAL = signal.SIGUSR2
#: The WorkController of this worker (main process), to reach the prefork pool's children at shutdown.
_controller: object | None = None


def _setup_logging(**_: object) -> None:
    """Connecting here stops Celery from installing its own (non-JSON) log handlers."""
    configure_logging(tasks.worker_settings().log_level)


def _no_banner(sender: object = None, instance: Any = None, **_: object) -> None:
    """Celery prints a multi-line ASCII banner to stdout at start; one JSON log line says the same."""
    if instance is not None:
        instance.quiet = True
        logger.info(
            "celery worker starting",
            extra={"node": sender, "concurrency": getattr(instance, "concurrency", None)},
        )


def _load_in_child(**_: object) -> None:
    """Prefork pool: each child process loads the pipeline once, before taking a task."""
    signal.signal(INTERRUPT_SIGNAL, lambda *_: tasks.interrupt.set())
    tasks.worker_state()


def _load_in_main(sender: object = None, **_: object) -> None:
    """Solo/threads pools run tasks in the main process, where worker_process_init never fires."""
    global _controller
    _controller = sender
    pool_cls = getattr(sender, "pool_cls", None)
    pool = f"{getattr(pool_cls, '__module__', '')} {pool_cls}"
    if "solo" in pool or "threads" in pool:
        tasks.worker_state()


def _stop_heartbeat(**_: object) -> None:
    state = tasks._state
    if state is not None and state.heartbeat is not None:
        state.heartbeat.stop()
    if state is not None and state.takeover is not None:
        state.takeover.stop()


def _shutdown_grace(sig: str | None = None, how: str | None = None, **_: object) -> None:
    """Warm shutdown (SIGTERM): Celery lets the running job finish; after WORKER_SHUTDOWN_GRACE s the
    job is stopped at its next step and requeued instead, so an orchestrator's kill loses nothing."""
    grace = tasks.worker_settings().worker_shutdown_grace
    timer = threading.Timer(grace, _interrupt_running_jobs)
    timer.daemon = True
    timer.start()
    logger.info("shutdown: the running job has %s s to finish before it is requeued", grace)


def _interrupt_running_jobs() -> None:
    """Solo/threads pool: the job runs in this process. Prefork: signal each pool child."""
    tasks.interrupt.set()
    pool = getattr(_controller, "pool", None)
    try:
        pids = list((getattr(pool, "info", None) or {}).get("processes", []))
    except Exception:  # the pool may be closing; the message comes back anyway (see docs)
        pids = []
    for pid in pids:
        if isinstance(pid, int) and pid != os.getpid():
            with contextlib.suppress(OSError):
                os.kill(pid, INTERRUPT_SIGNAL)


def _hard_time_limit(
    sender: object = None,
    exception: BaseException | None = None,
    args: Sequence[object] | None = None,
    **_: object,
) -> None:
    """The hard time limit killed the process running a job: its record ends as
    ``lifecycle.hard_time_limit`` says (the message is acked)."""
    if getattr(sender, "name", None) != TASK_NAME or not isinstance(exception, TimeLimitExceeded) or not args:
        return
    settings = tasks.worker_settings()
    stores = open_job_stores(settings)
    try:
        stores.records.apply(
            str(args[0]), lifecycle.hard_time_limit(settings.job_hard_time_limit, os.getpid())
        )
    except JobStoreDown:
        logger.warning("could not record the hard time limit of job %s", args[0], exc_info=True)
    finally:
        stores.close()


# Connected by call, not by decorator: Celery's decorators are untyped and would erase the types.
signals.setup_logging.connect(_setup_logging)
signals.celeryd_after_setup.connect(_no_banner)
signals.worker_process_init.connect(_load_in_child)
signals.worker_init.connect(_load_in_main)
signals.worker_shutdown.connect(_stop_heartbeat)
signals.worker_shutting_down.connect(_shutdown_grace)
signals.task_failure.connect(_hard_time_limit)
