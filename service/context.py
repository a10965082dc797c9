"""What one app instance holds: settings, stores, dispatcher, metrics and the readiness check.

Built without connecting anywhere (import and create_app stay cheap); connections open on use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
import threading
import time
from dataclasses import dataclass, field

from service.auth import AuthError, KeyRing
from service.cleanup import Sweeper
from service.embedded import EmbeddedRunner
from service.execution import webhook_sender
from service.intake import Submission
from service.jobs import Job, JobError, JobStore, StoreUnavailable, make_job_store, new_job_id, utcnow
from service.logs import job_context
from service.metrics import ServiceMetrics
from service.problems import ApiProblem
from service.schemas import JobOut
from service.settings import Settings
from service.storage import ObjectStore, StorageUnavailable, make_object_store
from service.views import job_json, job_out

logger = logging.getLogger("qalign.api")
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
#: How long an Idempotency-Key reservation lives before its job record exists (a crashed request
#: frees the key after this); once the job exists the key lives as long as the job.
RESERVATION_TTL = 60
#: How long a duplicate request waits for the job of the request that reserved its key.
REPLAY_WAIT_S = 10.0
#: Finished jobs whose durations estimate Retry-After.
RECENT_JOBS = 20


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
    keys: KeyRing = field(default_factory=lambda: KeyRing.from_settings(None, None))
    sweeper: Sweeper | None = None
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
            settings=settings,
            jobs=jobs,
            store=store,
            dispatcher=dispatcher,
            metrics=ServiceMetrics(jobs),
            keys=KeyRing.from_settings(settings.api_keys, settings.revoked_api_keys),
            sweeper=Sweeper(jobs, store, settings),
        )

    def start(self) -> None:
        if self.keys.open:
            logger.warning(
                "open mode: no API keys configured (QALIGN_API_KEYS), anyone who can reach the API can use it"
            )
        self.dispatcher.start()
        if self.sweeper is not None:
            self.sweeper.start()

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
        if self.sweeper is not None:
            self.sweeper.stop()
        self.dispatcher.stop()
        self.jobs.close()

    # ------------------------------------------------------------------ operations the routes call
    def authenticate(self, authorization: str | None) -> str | None:
        """The caller's key name (owner of its jobs); None in open mode; 401/403 as ApiProblem."""
        try:
            return self.keys.owner(authorization)
        except AuthError as exc:
            headers = {"WWW-Authenticate": 'Bearer realm="qalign"'} if exc.status == 401 else None
            kind = "unauthorized" if exc.status == 401 else "forbidden"
            raise ApiProblem(exc.status, exc.detail, kind=kind, headers=headers) from exc

    def submit(self, submission: Submission, owner: str | None = None) -> tuple[Job, bool]:
        """(job, created): store the inputs, create the record, hand the id to the runner.

        With an Idempotency-Key already used by this owner, the earlier job is returned (created
        False) when the request is the same, and 409 when it differs. Refusals raise ApiProblem.
        """
        scope = fingerprint = None
        if submission.idempotency_key is not None:
            scope = idempotency_scope(owner, submission.idempotency_key)
            fingerprint = request_fingerprint(submission)
            existing = self._store_call(self.jobs.idempotency_get, scope)
            if existing is not None:
                return self._replay(existing, fingerprint, owner), False
        self._check_ready()
        self._check_capacity(owner)
        job = Job(
            id=new_job_id(),
            created_at=utcnow(),
            params=submission.params.model_dump(mode="json"),
            structure_key="",
            appearance_key="",
            webhook_url=submission.webhook_url,
            owner=owner,
            idempotency_key=submission.idempotency_key,
        )
        keys = self._store_call(
            lambda: {
                name: self.store.put_input(data, content_type)
                for name, (data, content_type) in submission.images.items()
            }
        )
        job = job.model_copy(
            update={"structure_key": keys["structure"], "appearance_key": keys["appearance"]}
        )
        if scope is not None:
            record = {"job_id": job.id, "fingerprint": fingerprint}
            existing = self._store_call(self.jobs.idempotency_reserve, scope, record, RESERVATION_TTL)
            if existing is not None:  # a concurrent request with the same key won the reservation
                return self._replay(existing, fingerprint, owner), False
        try:
            self._store_call(self.jobs.create, job)
            if scope is not None:
                self._store_call(self.jobs.idempotency_confirm, scope, self.settings.job_ttl)
        except ApiProblem:
            if scope is not None:
                with contextlib.suppress(StoreUnavailable):
                    self.jobs.idempotency_release(scope, job.id)
            raise
        with job_context(job.id):
            try:
                self.dispatcher.submit(job.id)
            except Exception as exc:  # broker down between readiness and publish
                self._not_enqueued(job, scope)
                logger.warning("could not queue job: %s", exc)
                raise ApiProblem(
                    503,
                    f"the job queue (broker) is unavailable: {exc}; nothing was queued, retry later",
                    kind="not-ready",
                    headers={"Retry-After": "5"},
                ) from exc
            self.metrics.submitted.inc()
            logger.info("job submitted", extra={"params": job.params, "owner": owner})
        return job, True

    def _store_call(self, fn, *args):
        """Run a job-store or object-store call; unreachable stores become a 503 that says which."""
        try:
            return fn(*args)
        except StoreUnavailable as exc:
            raise ApiProblem(
                503, f"the job store is unavailable: {exc}", kind="not-ready", headers={"Retry-After": "5"}
            ) from exc
        except StorageUnavailable as exc:
            raise ApiProblem(
                503, f"the object store is unavailable: {exc}", kind="not-ready", headers={"Retry-After": "5"}
            ) from exc

    def _check_ready(self) -> None:
        verdict = self.readiness()
        if not verdict["ready"]:
            failing = {name: c.get("detail", "down") for name, c in verdict["checks"].items() if not c["ok"]}
            raise ApiProblem(
                503,
                "the service is not ready: " + "; ".join(f"{k}: {v}" for k, v in failing.items()),
                kind="not-ready",
                headers={"Retry-After": "5"},
            )

    def _check_capacity(self, owner: str | None) -> None:
        """429 when the queue is full, or when this key has its maximum of unfinished jobs."""
        queued = self._store_call(self.jobs.count_by_status).get("queued", 0)
        limit = self.settings.max_queue_depth
        if queued >= limit:
            wait = self.retry_after(queued - limit + 1)
            raise ApiProblem(
                429,
                f"{queued} jobs are waiting (limit {limit}); retry in about {wait} s",
                kind="queue-full",
                headers={"Retry-After": str(wait)},
            )
        per_key = self.settings.max_inflight_per_key
        if per_key is not None and owner is not None:
            ids = self._store_call(
                lambda: self.jobs.ids_by_status("queued") + self.jobs.ids_by_status("running")
            )
            mine = sum(1 for job in self._store_call(self.jobs.get_many, ids) if job.owner == owner)
            if mine >= per_key:
                wait = self.retry_after(1)
                raise ApiProblem(
                    429,
                    f"this API key has {mine} unfinished jobs (limit {per_key}); retry in about {wait} s",
                    kind="too-many-jobs",
                    headers={"Retry-After": str(wait)},
                )

    def retry_after(self, jobs_ahead: int) -> int:
        """Seconds until ``jobs_ahead`` jobs have finished: the mean total_s of the last finished
        jobs x jobs_ahead / live workers (at least 1 s, at most an hour; 30 s per job with no history)."""
        try:
            recent = self.jobs.get_many(self.jobs.recent_ids("succeeded", RECENT_JOBS))
            workers = max(len(self.jobs.live_workers()), 1)
        except StoreUnavailable:
            return 30
        durations = [float(j.metrics["total_s"]) for j in recent if j.metrics.get("total_s")]
        mean = sum(durations) / len(durations) if durations else 30.0
        return int(min(max(math.ceil(mean * max(jobs_ahead, 1) / workers), 1), 3600))

    def _replay(self, existing: dict, fingerprint: str | None, owner: str | None) -> Job:
        """The job an earlier request with the same Idempotency-Key made, or 409 if the body differs."""
        if existing.get("fingerprint") != fingerprint:
            raise ApiProblem(
                409,
                "this Idempotency-Key was already used with a different request (other images, parameters "
                "or webhook_url); use a new key for a new request",
                kind="idempotency-key-reused",
            )
        job_id = existing["job_id"]
        deadline = time.monotonic() + REPLAY_WAIT_S
        while True:  # the request that reserved the key may still be writing the record
            job = self._store_call(self.jobs.get, job_id)
            if job is not None and job.owner == owner:
                return job
            if time.monotonic() > deadline:
                raise ApiProblem(
                    409,
                    "a request with this Idempotency-Key is still being processed; retry shortly",
                    kind="idempotency-key-in-progress",
                    headers={"Retry-After": "1"},
                )
            time.sleep(0.05)

    def _not_enqueued(self, job: Job, scope: str | None) -> None:
        """The broker refused the job: fail its record and free its Idempotency-Key for a retry."""
        try:
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
            if scope is not None:
                self.jobs.idempotency_release(scope, job.id)
        except StoreUnavailable:
            logger.warning("could not mark the unqueued job failed: job store unreachable")

    def get_job(self, job_id: str, owner: str | None = None) -> Job:
        """The record if it exists and belongs to ``owner``; another key's job is a 404 like no job."""
        try:
            job = self.jobs.get(job_id) if JOB_ID.match(job_id) else None
        except StoreUnavailable as exc:
            raise ApiProblem(
                503, f"the job store is unavailable: {exc}", kind="not-ready", headers={"Retry-After": "5"}
            ) from exc
        if job is None or job.owner != owner:
            raise ApiProblem(404, f"no job with id {job_id!r}", kind="job-not-found")
        return job

    def cancel(self, job_id: str, owner: str | None = None) -> Job:
        before = self.get_job(job_id, owner)
        job = self._store_call(self.jobs.request_cancel, job_id)
        if job is None:
            raise ApiProblem(404, f"no job with id {job_id!r}", kind="job-not-found")
        with job_context(job_id):
            logger.info("cancel requested: job is %s", job.status)
            if before.status == "queued" and job.status == "canceled":
                # It never reaches a worker, so its terminal webhook goes from here.
                sender = webhook_sender(job, self.settings)
                if sender is not None:
                    sender.send(job_json(job, self.store, self.settings))
                    sender.close()
        return job

    def view(self, job: Job) -> JobOut:
        return job_out(job, self.store, self.settings)


def idempotency_scope(owner: str | None, key: str) -> str:
    """Keys are per owner: two API keys may use the same Idempotency-Key independently."""
    return hashlib.sha256(f"{owner or ''}\0{key}".encode()).hexdigest()


def request_fingerprint(submission: Submission) -> str:
    """Digest of the canonical request: effective parameters, input digests and webhook_url."""
    canonical = {
        "params": submission.params.model_dump(mode="json"),
        "inputs": {name: hashlib.sha256(data).hexdigest() for name, (data, _) in submission.images.items()},
        "webhook_url": submission.webhook_url,
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()
