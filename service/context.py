"""What one app instance holds: settings, stores, dispatcher, metrics and the readiness check.

Built without connecting anywhere (import and create_app stay cheap); connections open on use.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta

from service.embedded import EmbeddedRunner
from service.jobs import Job, JobError, JobStore, StoreUnavailable, make_job_store, new_job_id, utcnow
from service.logs import job_context
from service.metrics import ServiceMetrics
from service.problems import ApiProblem
from service.schemas import ErrorOut, JobMetricsOut, JobOut, ResultOut
from service.settings import Settings
from service.storage import ObjectStore, StorageUnavailable, make_object_store

logger = logging.getLogger("qalign.api")
JOB_ID = re.compile(r"^[0-9a-f]{32}$")


class Dispatcher:
    """Hands a stored job to whatever runs it."""

    def submit(self, job_id: str) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def check(self) -> dict[str, dict]:
        """Readiness of the runner side: {"name": {"ok": bool, ...}}."""
        return {}


class CeleryDispatcher(Dispatcher):
    def __init__(self, settings: Settings, jobs: JobStore) -> None:
        from worker.celery_app import make_celery

        self.celery, self.jobs = make_celery(settings), jobs

    def submit(self, job_id: str) -> None:
        from worker.celery_app import QUEUE, TASK_NAME

        self.celery.send_task(TASK_NAME, args=[job_id], queue=QUEUE)

    def check(self) -> dict[str, dict]:
        checks: dict[str, dict] = {}
        try:
            with self.celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=2)
            checks["broker"] = {"ok": True}
        except Exception as exc:  # kombu raises several kinds; all mean "broker unreachable"
            checks["broker"] = {"ok": False, "detail": f"broker unreachable: {exc}"}
        try:
            workers = self.jobs.live_workers()
            checks["workers"] = {"ok": bool(workers), "live": len(workers), "names": sorted(workers)}
            if not workers:
                checks["workers"]["detail"] = "no worker heartbeat in Redis"
        except StoreUnavailable as exc:
            checks["workers"] = {"ok": False, "live": 0, "detail": str(exc)}
        return checks

    def stop(self) -> None:
        self.celery.close()


class EmbeddedDispatcher(Dispatcher):
    def __init__(self, runner: EmbeddedRunner) -> None:
        self.runner = runner

    def submit(self, job_id: str) -> None:
        self.runner.submit(job_id)

    def start(self) -> None:
        self.runner.start()

    def stop(self) -> None:
        self.runner.stop()

    def check(self) -> dict[str, dict]:
        return {
            "workers": {"ok": self.runner.alive, "live": int(self.runner.alive), "detail": self.runner.state}
        }


@dataclass
class Services:
    settings: Settings
    jobs: JobStore
    store: ObjectStore
    dispatcher: Dispatcher
    metrics: ServiceMetrics
    _ready: tuple[float, dict] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, pipeline_factory=None) -> Services:
        jobs, store = make_job_store(settings), make_object_store(settings)
        if settings.embedded:
            kwargs = {"pipeline_factory": pipeline_factory} if pipeline_factory else {}
            dispatcher: Dispatcher = EmbeddedDispatcher(EmbeddedRunner(settings, jobs, store, **kwargs))
        else:
            dispatcher = CeleryDispatcher(settings, jobs)
        return cls(
            settings=settings, jobs=jobs, store=store, dispatcher=dispatcher, metrics=ServiceMetrics(jobs)
        )

    def readiness(self, *, fresh: bool = False) -> dict:
        """{"ready": bool, "mode": ..., "checks": {...}}, reused for QALIGN_READINESS_CACHE_S seconds."""
        with self._lock:
            cached = self._ready
        if cached and not fresh and time.monotonic() - cached[0] < self.settings.readiness_cache_s:
            return cached[1]
        checks: dict[str, dict] = {}
        try:
            self.jobs.ping()
            checks["jobs"] = {"ok": True}
        except StoreUnavailable as exc:
            checks["jobs"] = {"ok": False, "detail": str(exc)}
        try:
            self.store.ping()
            checks["store"] = {"ok": True}
        except StorageUnavailable as exc:
            checks["store"] = {"ok": False, "detail": str(exc)}
        checks.update(self.dispatcher.check())
        verdict = {
            "ready": all(c["ok"] for c in checks.values()),
            "mode": "embedded" if self.settings.embedded else "distributed",
            "checks": checks,
        }
        with self._lock:
            self._ready = (time.monotonic(), verdict)
        return verdict

    def close(self) -> None:
        self.dispatcher.stop()
        self.jobs.close()

    # ------------------------------------------------------------------ operations the routes call
    def submit(self, submission) -> Job:
        """Store the inputs, create the record, hand the id to the runner; refusals as ApiProblem."""
        verdict = self.readiness()
        if not verdict["ready"]:
            failing = {name: c.get("detail", "down") for name, c in verdict["checks"].items() if not c["ok"]}
            raise ApiProblem(
                503,
                "the service is not ready: " + "; ".join(f"{k}: {v}" for k, v in failing.items()),
                kind="not-ready",
                headers={"Retry-After": "5"},
            )
        try:
            queued = self.jobs.count_by_status().get("queued", 0)
            if queued >= self.settings.max_queue_depth:
                raise ApiProblem(
                    429,
                    f"{queued} jobs are waiting (limit {self.settings.max_queue_depth}); retry later",
                    kind="queue-full",
                    headers={"Retry-After": "30"},
                )
            keys = {
                name: self.store.put_input(data, content_type)
                for name, (data, content_type) in submission.images.items()
            }
            job = Job(
                id=new_job_id(),
                created_at=utcnow(),
                params=submission.params.model_dump(mode="json"),
                structure_key=keys["structure"],
                appearance_key=keys["appearance"],
                webhook_url=submission.webhook_url,
            )
            self.jobs.create(job)
        except (StoreUnavailable, StorageUnavailable) as exc:
            raise ApiProblem(
                503, f"storage is unavailable: {exc}", kind="not-ready", headers={"Retry-After": "5"}
            ) from exc
        with job_context(job.id):
            try:
                self.dispatcher.submit(job.id)
            except Exception as exc:  # broker down between readiness and publish
                self.jobs.modify(
                    job.id,
                    lambda j: j.model_copy(
                        update={
                            "status": "failed",
                            "finished_at": utcnow(),
                            "error": JobError(type="not_enqueued", detail="the job could not be queued"),
                        }
                    ),
                )
                logger.warning("could not queue job: %s", exc)
                raise ApiProblem(
                    503,
                    f"the job queue is unavailable: {exc}",
                    kind="not-ready",
                    headers={"Retry-After": "5"},
                ) from exc
            self.metrics.submitted.inc()
            logger.info("job submitted", extra={"params": job.params})
        return job

    def get_job(self, job_id: str) -> Job:
        try:
            job = self.jobs.get(job_id) if JOB_ID.match(job_id) else None
        except StoreUnavailable as exc:
            raise ApiProblem(503, f"the job store is unavailable: {exc}", kind="not-ready") from exc
        if job is None:
            raise ApiProblem(404, f"no job with id {job_id!r}", kind="job-not-found")
        return job

    def cancel(self, job_id: str) -> Job:
        self.get_job(job_id)
        try:
            job = self.jobs.request_cancel(job_id)
        except StoreUnavailable as exc:
            raise ApiProblem(503, f"the job store is unavailable: {exc}", kind="not-ready") from exc
        if job is None:
            raise ApiProblem(404, f"no job with id {job_id!r}", kind="job-not-found")
        with job_context(job_id):
            logger.info("cancel requested: job is %s", job.status)
        return job

    def view(self, job: Job) -> JobOut:
        """The public job object; result URLs are presigned per request (fresh expiry)."""
        result = None
        if job.result is not None:
            url = self.store.presigned_url(job.result.key, self.settings.result_url_ttl)
            expires = utcnow() + timedelta(seconds=self.settings.result_url_ttl) if url else None
            result = ResultOut(
                url=url or f"/jobs/{job.id}/result",
                content_type=job.result.content_type,
                width=job.result.width,
                height=job.result.height,
                expires_at=expires,
            )
        return JobOut(
            id=job.id,
            status=job.status,
            stage=job.stage,
            progress=job.progress,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            params=job.params,
            result=result,
            error=ErrorOut(**job.error.model_dump()) if job.error else None,
            metrics=JobMetricsOut(**job.metrics),
        )
