"""Handing a stored job to whatever runs it: the Celery queue, or the embedded worker thread."""

from __future__ import annotations

from typing import Protocol, Required, TypedDict

from service.jobs import JobStoreDown, JobStores
from service.jobs.embedded import EmbeddedRunner
from service.settings import Settings


class Check(TypedDict, total=False):
    """One dependency's readiness, as GET /readyz shows it under ``checks``."""

    ok: Required[bool]
    detail: str
    live: int
    names: list[str]
    loading: bool
    waiting_for_worker: bool


#: Readiness by dependency name.
Checks = dict[str, Check]


class JobQueue(Protocol):
    def submit(self, job_id: str) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def check(self) -> Checks:
        """Readiness of the runner side: {"name": {"ok": bool, ...}}."""
        ...


class CeleryJobQueue:
    """Publishes job ids on the broker (``service.backends.celery_queue``: the worker's app configuration)."""

    def __init__(self, settings: Settings, stores: JobStores) -> None:
        from service.backends.celery_queue import make_celery

        self.celery, self.stores = make_celery(settings), stores
        self.accept_without_workers = settings.accept_without_workers

    def submit(self, job_id: str) -> None:
        from service.backends.celery_queue import QUEUE, TASK_NAME

        self.celery.send_task(TASK_NAME, args=[job_id], queue=QUEUE)

    def start(self) -> None:
        return None

    def check(self) -> Checks:
        checks: Checks = {}
        try:
            with self.celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=2)
            checks["broker"] = {"ok": True}
        except Exception as exc:  # kombu raises several kinds; all mean "broker unreachable"
            checks["broker"] = {"ok": False, "detail": f"broker unreachable: {exc}"}
        try:
            workers = self.stores.workers.live()
            checks["workers"] = {"ok": bool(workers), "live": len(workers), "names": sorted(workers)}
            if not workers and self.accept_without_workers:
                # Scale to zero: the autoscaler starts a worker once jobs are queued; refusing them
                # here would keep the fleet at zero forever.
                checks["workers"].update(
                    {
                        "ok": True,
                        "waiting_for_worker": True,
                        "detail": "no worker live; jobs wait for one to start",
                    }
                )
            elif not workers:
                checks["workers"]["detail"] = "no worker heartbeat in Redis"
        except JobStoreDown as exc:
            checks["workers"] = {"ok": False, "live": 0, "detail": str(exc)}
        return checks

    def stop(self) -> None:
        self.celery.close()


class EmbeddedJobQueue:
    def __init__(self, runner: EmbeddedRunner) -> None:
        self.runner = runner

    def submit(self, job_id: str) -> None:
        self.runner.submit(job_id)

    def start(self) -> None:
        self.runner.start()

    def stop(self) -> None:
        self.runner.stop()

    def check(self) -> Checks:
        """Ready once the model is loaded; while it loads ``loading`` is true: not ready (GET /readyz
        answers 503), but POST /transfer still queues jobs, which start once the model is in."""
        alive, loading = self.runner.alive, self.runner.loading
        ready = alive and not loading
        return {"workers": {"ok": ready, "live": int(ready), "loading": loading, "detail": self.runner.state}}
