"""The Celery application of the GPU worker (``celery -A worker.celery_app worker``).

Configured in one place, ``service.backends.celery_queue``, which the API also uses to publish;
this module adds the task module and the step that keeps the worker off the queue until its model
is loaded. Importing it is cheap (no torch, no connection).
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

from celery import bootsteps

from service.backends.celery_queue import MODEL_LOAD_TIMEOUT_S, QUEUE, TASK_NAME, make_celery
from service.logs import configure_logging
from service.settings import Settings

__all__ = ["QUEUE", "TASK_NAME", "app", "make_celery"]

logger = logging.getLogger("qalign.worker")


class ConsumeAfterModelLoad(bootsteps.StartStopStep):  # type: ignore[misc]  # celery ships no types
    """The main process takes no message before every pool child has loaded the model.

    Prefork children load the model in worker_process_init, but Celery's main process consumes as
    soon as it starts: it would take a message (prefetch 1) and hold it unclaimed for the whole load,
    stranded in the broker's ``unacked`` hash if the worker dies meanwhile. This step runs after the
    task consumer is set up and before the event loop that fetches messages, and waits until each
    child's heartbeat (written once its model is loaded) is in the registry. The solo and threads
    pools load in the main process before the consumer starts: nothing to wait for.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)
    label = "wait for the model"

    def start(self, consumer: Any) -> None:
        pids = _pool_pids(consumer)
        if not pids:
            return
        from service.backends import open_job_stores

        stores = open_job_stores(Settings())
        host, started = socket.gethostname(), time.monotonic()
        logger.info("waiting for the pool to load the model before taking jobs")
        try:
            while time.monotonic() - started < MODEL_LOAD_TIMEOUT_S:
                try:
                    live = stores.workers.live()
                except Exception:  # the store is away: the children's heartbeats cannot land either
                    live = {}
                pids = _pool_pids(consumer)
                if pids and all(f"{host}:{pid}" in live for pid in pids):
                    logger.info(
                        "model loaded: taking jobs", extra={"wait_s": round(time.monotonic() - started, 2)}
                    )
                    return
                time.sleep(0.2)
            logger.warning(
                "the pool did not report a loaded model in %s s; taking jobs anyway", MODEL_LOAD_TIMEOUT_S
            )
        finally:
            stores.close()


def _pool_pids(consumer: Any) -> list[int]:
    """The prefork pool's child pids; empty for the solo and threads pools."""
    try:
        info = consumer.pool.info if consumer.pool is not None else {}
        return [pid for pid in info.get("processes", []) if isinstance(pid, int)]
    except Exception:  # a pool without process info
        return []


_settings = Settings()
# JSON from the first line: Celery warns (e.g. about running as root) before its logging signals fire.
configure_logging(_settings.log_level)
# worker.signals connects the handlers (logging, model load, shutdown, hard time limit) on import.
app = make_celery(_settings, imports=("worker.tasks", "worker.signals"))
app.steps["consumer"].add(ConsumeAfterModelLoad)
