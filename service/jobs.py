"""The job record shared by API, Celery worker and embedded runner, and where records live.

Two stores with one interface: Redis (distributed mode, shared by every API and worker process)
and SQLite (embedded mode, one file in DATA_DIR so jobs survive a restart). Every state change goes
through ``modify``, an atomic read-modify-write, so a cancel can never race a worker's claim.
Worker heartbeats and stage-duration aggregates live here too: they are what readiness and
/metrics read, and they must be visible to every API process in distributed mode.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
JobStage = Literal["queued", "loading", "inverting", "denoising", "decoding", "uploading", "done"]
STATUSES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "canceled")
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})
#: Stage-duration histogram buckets (seconds), shared by every backend.
STAGE_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class StoreUnavailable(Exception):
    """The job store (Redis or the SQLite file) cannot be reached; the API answers 503."""


class JobError(BaseModel):
    type: str
    detail: str


class JobResult(BaseModel):
    key: str
    content_type: str
    width: int
    height: int


class Job(BaseModel):
    """One transfer request and everything known about its run."""

    id: str
    status: JobStatus = "queued"
    stage: JobStage = "queued"
    progress: float = 0.0
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    params: dict = Field(default_factory=dict)
    structure_key: str
    appearance_key: str
    result: JobResult | None = None
    error: JobError | None = None
    metrics: dict[str, float | int | bool | str | None] = Field(default_factory=dict)
    cancel_requested: bool = False
    attempts: int = 0
    worker: str | None = None
    owner: str | None = None
    webhook_url: str | None = None
    idempotency_key: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


def new_job_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


def worker_name() -> str:
    """hostname:pid, unique per worker process; what heartbeats and job records name."""
    return f"{socket.gethostname()}:{os.getpid()}"


Mutation = Callable[[Job], Job | None]


class JobStore(ABC):
    """Atomic job records plus worker heartbeats and stage statistics."""

    @abstractmethod
    def create(self, job: Job) -> None: ...

    @abstractmethod
    def get(self, job_id: str) -> Job | None: ...

    @abstractmethod
    def modify(self, job_id: str, change: Mutation) -> Job | None:
        """Apply ``change`` atomically; it returns the new job or None to leave the record alone.

        Returns the record after the call (changed or not), or None for an unknown id.
        """

    @abstractmethod
    def ids_by_status(self, status: str) -> list[str]:
        """Ids in ``status``, oldest first."""

    @abstractmethod
    def count_by_status(self) -> dict[str, int]: ...

    @abstractmethod
    def heartbeat(self, name: str, info: dict, ttl: float) -> None: ...

    @abstractmethod
    def live_workers(self) -> dict[str, dict]: ...

    @abstractmethod
    def observe_stage(self, stage: str, seconds: float) -> None: ...

    @abstractmethod
    def stage_stats(self) -> dict[str, dict]:
        """stage -> {"buckets": [cumulative counts per STAGE_BUCKETS and +Inf], "sum": s, "count": n}."""

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable when the store cannot be reached."""

    @abstractmethod
    def get_many(self, job_ids: list[str]) -> list[Job]:
        """The records that still exist, in the order asked."""

    @abstractmethod
    def recent_ids(self, status: str, limit: int) -> list[str]:
        """Up to ``limit`` ids in ``status``, newest first."""

    @abstractmethod
    def all_jobs(self) -> Iterator[Job]:
        """Every stored record (the expiry sweep reads which inputs are still referenced)."""

    @abstractmethod
    def prune(self) -> int:
        """Drop expired records and index entries; the number dropped."""

    # Idempotency keys: ``scope`` is a digest of (owner, Idempotency-Key); the value names the job
    # and the fingerprint of the request that made it. Reservation is atomic (SET NX / primary key).
    @abstractmethod
    def idempotency_reserve(self, scope: str, record: dict, ttl: int) -> dict | None:
        """Store ``record`` unless ``scope`` has a live one: None if stored, else the existing record."""

    @abstractmethod
    def idempotency_get(self, scope: str) -> dict | None: ...

    @abstractmethod
    def idempotency_confirm(self, scope: str, ttl: int) -> None:
        """The job exists now: keep the key as long as the job (``ttl`` seconds)."""

    @abstractmethod
    def idempotency_release(self, scope: str, job_id: str) -> None:
        """Forget the reservation of ``job_id`` (its submission failed), so a retry can proceed."""

    @abstractmethod
    def try_lock(self, name: str, ttl: float) -> bool:
        """A best-effort lease shared by all API processes (one expiry sweep per interval)."""

    def close(self) -> None:  # noqa: B027 - optional hook, most stores hold nothing to release
        """Release connections; the default has nothing to release."""

    # ------------------------------------------------------------ state transitions (shared)
    def update(self, job_id: str, **fields: object) -> Job | None:
        return self.modify(job_id, lambda job: job.model_copy(update=fields))

    def claim(self, job_id: str, worker: str, max_attempts: int) -> Job | None:
        """Mark a queued job running for ``worker``; None if it must not run (canceled, taken, gone).

        A job left ``running`` by a worker whose heartbeat has expired is taken over (the broker
        redelivered it after that worker died), up to ``max_attempts`` runs; then it is failed.
        """
        return self.claim_outcome(job_id, worker, max_attempts)[0]

    def claim_outcome(self, job_id: str, worker: str, max_attempts: int) -> tuple[Job | None, Job | None]:
        """(claimed job or None, job this call ended or None): claim, also saying whether the claim
        itself made the job terminal (out of attempts, or cancel requested), so callers can notify."""
        live = self.live_workers()
        claimed = False
        ended = False

        def change(job: Job) -> Job | None:
            nonlocal claimed, ended
            claimed = ended = False  # modify may retry this function after a conflicting write
            takeover = job.status == "running" and _holder_lost(job, live, worker)
            if job.status != "queued" and not takeover:
                return None
            ended = True
            if job.attempts >= max_attempts and takeover:
                return _failed(
                    job,
                    "worker_lost",
                    f"the worker running this job stopped without finishing it (crash, kill or lost host) "
                    f"in each of its {job.attempts} attempts; giving up (QALIGN_MAX_ATTEMPTS={max_attempts})",
                )
            if job.attempts >= max_attempts:
                return _failed(job, "interrupted", f"the job was interrupted {job.attempts} times; giving up")
            if job.cancel_requested:
                return _canceled(job)
            ended, claimed = False, True
            return job.model_copy(
                update={
                    "status": "running",
                    "stage": "loading",
                    "progress": 0.0,
                    "started_at": utcnow(),
                    "worker": worker,
                    "attempts": job.attempts + 1,
                }
            )

        job = self.modify(job_id, change)
        return (job if claimed else None), (job if ended else None)

    def request_cancel(self, job_id: str) -> Job | None:
        """Queued: canceled now. Running: flagged; the runner stops at its next step. Finished: unchanged."""

        def change(job: Job) -> Job | None:
            if job.status == "queued":
                return _canceled(job)
            if job.status == "running" and not job.cancel_requested:
                return job.model_copy(update={"cancel_requested": True})
            return None

        return self.modify(job_id, change)

    def requeue(self, job_id: str, reason: str, max_attempts: int, *, refund: bool = False) -> Job | None:
        """Put an interrupted running job back in the queue, or fail it when out of attempts.

        ``refund``: the run was stopped on purpose (graceful shutdown), so it does not count as an attempt.
        """

        def change(job: Job) -> Job | None:
            if job.status != "running":
                return None
            if job.cancel_requested:
                return _canceled(job)
            attempts = job.attempts - 1 if refund else job.attempts
            if attempts >= max_attempts:
                return _failed(job, "interrupted", f"{reason}; gave up after {job.attempts} attempts")
            return job.model_copy(
                update={
                    "status": "queued",
                    "stage": "queued",
                    "progress": 0.0,
                    "started_at": None,
                    "worker": None,
                    "attempts": max(attempts, 0),
                }
            )

        return self.modify(job_id, change)


def _holder_lost(job: Job, live: dict[str, dict], claimer: str) -> bool:
    """Whether the worker named by a running record no longer runs it, so a redelivery may take it over.

    Lost: no fresh heartbeat; or its heartbeat names the job it runs and that is another job (or none);
    or it is the claimer itself (one job at a time per worker process: a record naming it is left
    over from a run that ended without its final write, e.g. while Redis was down).
    """
    if job.worker == claimer:
        return True
    info = live.get(job.worker or "")
    if info is None:
        return True
    return "job" in info and info["job"] != job.id


def _canceled(job: Job) -> Job:
    return job.model_copy(update={"status": "canceled", "finished_at": utcnow(), "cancel_requested": True})


def _failed(job: Job, kind: str, detail: str) -> Job:
    return job.model_copy(
        update={"status": "failed", "finished_at": utcnow(), "error": JobError(type=kind, detail=detail)}
    )


def _empty_stats() -> dict:
    return {"buckets": [0] * (len(STAGE_BUCKETS) + 1), "sum": 0.0, "count": 0}


def _add_observation(stats: dict, seconds: float) -> None:
    for i, bound in enumerate((*STAGE_BUCKETS, float("inf"))):
        if seconds <= bound:
            stats["buckets"][i] += 1
    stats["sum"] += seconds
    stats["count"] += 1


# ---------------------------------------------------------------------------------------------- Redis
class RedisJobStore(JobStore):
    """Records as JSON strings with a TTL; one sorted set per status (score = time entered)."""

    def __init__(self, url: str, *, ttl: int, prefix: str = "qalign:") -> None:
        import redis

        self._redis_errors = (redis.RedisError, OSError)
        self.client = redis.Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30, decode_responses=True
        )
        self.ttl, self.prefix = ttl, prefix

    def _key(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def _status_key(self, status: str) -> str:
        return f"{self.prefix}status:{status}"

    def _call(self, fn: Callable, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except self._redis_errors as exc:
            raise StoreUnavailable(f"Redis is unreachable: {exc}") from exc

    def create(self, job: Job) -> None:
        def run() -> None:
            pipe = self.client.pipeline()
            pipe.set(self._key(job.id), job.model_dump_json(), ex=self.ttl)
            pipe.zadd(self._status_key(job.status), {job.id: time.time()})
            pipe.execute()

        self._call(run)

    def get(self, job_id: str) -> Job | None:
        raw = self._call(self.client.get, self._key(job_id))
        return Job.model_validate_json(raw) if raw else None

    def modify(self, job_id: str, change: Mutation) -> Job | None:
        import redis

        key = self._key(job_id)

        def run() -> Job | None:
            with self.client.pipeline() as pipe:
                while True:
                    try:
                        pipe.watch(key)
                        raw = pipe.get(key)
                        if not raw:
                            return None
                        job = Job.model_validate_json(raw)
                        new = change(job)
                        if new is None:
                            pipe.unwatch()
                            return job
                        pipe.multi()
                        pipe.set(key, new.model_dump_json(), ex=self.ttl)
                        if new.status != job.status:
                            pipe.zrem(self._status_key(job.status), job_id)
                            pipe.zadd(self._status_key(new.status), {job_id: time.time()})
                        pipe.execute()
                        return new
                    except redis.WatchError:
                        continue

        return self._call(run)

    def ids_by_status(self, status: str) -> list[str]:
        return list(self._call(self.client.zrange, self._status_key(status), 0, -1))

    def count_by_status(self) -> dict[str, int]:
        def run() -> dict[str, int]:
            pipe = self.client.pipeline()
            for status in STATUSES:
                # Terminal records expire with their TTL; forget their ids in the index as well.
                if status in TERMINAL:
                    pipe.zremrangebyscore(self._status_key(status), "-inf", time.time() - self.ttl)
                pipe.zcard(self._status_key(status))
            replies = pipe.execute()
            counts = [r for s, r in zip(_expand_statuses(), replies, strict=True) if s is not None]
            return dict(zip(STATUSES, counts, strict=True))

        return self._call(run)

    def heartbeat(self, name: str, info: dict, ttl: float) -> None:
        self._call(self.client.set, f"{self.prefix}worker:{name}", json.dumps(info), px=int(ttl * 1000))

    def live_workers(self) -> dict[str, dict]:
        def run() -> dict[str, dict]:
            keys = list(self.client.scan_iter(match=f"{self.prefix}worker:*", count=100))
            values = self.client.mget(keys) if keys else []
            start = len(self.prefix) + len("worker:")
            return {k[start:]: json.loads(v) for k, v in zip(keys, values, strict=True) if v}

        return self._call(run)

    def observe_stage(self, stage: str, seconds: float) -> None:
        def run() -> None:
            key = f"{self.prefix}stage:{stage}"
            pipe = self.client.pipeline()
            for i, bound in enumerate((*STAGE_BUCKETS, float("inf"))):
                if seconds <= bound:
                    pipe.hincrby(key, f"b{i}", 1)
            pipe.hincrbyfloat(key, "sum", seconds)
            pipe.hincrby(key, "count", 1)
            pipe.sadd(f"{self.prefix}stages", stage)
            pipe.execute()

        self._call(run)

    def stage_stats(self) -> dict[str, dict]:
        def run() -> dict[str, dict]:
            result = {}
            for stage in sorted(self.client.smembers(f"{self.prefix}stages")):
                raw = self.client.hgetall(f"{self.prefix}stage:{stage}")
                stats = _empty_stats()
                stats["buckets"] = [int(raw.get(f"b{i}", 0)) for i in range(len(STAGE_BUCKETS) + 1)]
                stats["sum"], stats["count"] = float(raw.get("sum", 0)), int(raw.get("count", 0))
                result[stage] = stats
            return result

        return self._call(run)

    def ping(self) -> None:
        self._call(self.client.ping)

    def get_many(self, job_ids: list[str]) -> list[Job]:
        if not job_ids:
            return []
        raws = self._call(self.client.mget, [self._key(i) for i in job_ids])
        return [Job.model_validate_json(raw) for raw in raws if raw]

    def recent_ids(self, status: str, limit: int) -> list[str]:
        return list(self._call(self.client.zrevrange, self._status_key(status), 0, max(limit - 1, 0)))

    def all_jobs(self) -> Iterator[Job]:
        keys = list(self._call(lambda: list(self.client.scan_iter(match=f"{self.prefix}job:*", count=500))))
        for start in range(0, len(keys), 200):
            for raw in self._call(self.client.mget, keys[start : start + 200]):
                if raw:
                    yield Job.model_validate_json(raw)

    def prune(self) -> int:
        """Record keys expire by TTL; drop index entries whose record has expired."""
        dropped = 0
        for status in STATUSES:
            ids = self.ids_by_status(status)
            for start in range(0, len(ids), 200):
                chunk = ids[start : start + 200]
                exists = self._call(self.client.mget, [self._key(i) for i in chunk])
                gone = [i for i, raw in zip(chunk, exists, strict=True) if not raw]
                if gone:
                    dropped += int(self._call(self.client.zrem, self._status_key(status), *gone))
        return dropped

    def _idem_key(self, scope: str) -> str:
        return f"{self.prefix}idem:{scope}"

    def idempotency_reserve(self, scope: str, record: dict, ttl: int) -> dict | None:
        key = self._idem_key(scope)
        if self._call(self.client.set, key, json.dumps(record), nx=True, ex=ttl):
            return None
        existing = self.idempotency_get(scope)
        # Expired between SET and GET: try once more, then report the (new) holder.
        if existing is None and self._call(self.client.set, key, json.dumps(record), nx=True, ex=ttl):
            return None
        return existing or record

    def idempotency_get(self, scope: str) -> dict | None:
        raw = self._call(self.client.get, self._idem_key(scope))
        return json.loads(raw) if raw else None

    def idempotency_confirm(self, scope: str, ttl: int) -> None:
        self._call(self.client.expire, self._idem_key(scope), ttl)

    def idempotency_release(self, scope: str, job_id: str) -> None:
        import redis

        key = self._idem_key(scope)

        def run() -> None:
            with self.client.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw and json.loads(raw).get("job_id") == job_id:
                        pipe.multi()
                        pipe.delete(key)
                        pipe.execute()
                except redis.WatchError:
                    pass  # someone else changed it: it is no longer ours to release

        self._call(run)

    def try_lock(self, name: str, ttl: float) -> bool:
        return bool(
            self._call(
                self.client.set, f"{self.prefix}lock:{name}", worker_name(), nx=True, px=int(ttl * 1000)
            )
        )

    def close(self) -> None:
        self.client.close()


def _expand_statuses() -> list[str | None]:
    """Reply layout of count_by_status's pipeline: a None for each pruning reply."""
    layout: list[str | None] = []
    for status in STATUSES:
        if status in TERMINAL:
            layout.append(None)
        layout.append(status)
    return layout


# ---------------------------------------------------------------------------------------------- SQLite
class SqliteJobStore(JobStore):
    """One table of JSON records in DATA_DIR/jobs.sqlite3; opened on first use, not at import."""

    def __init__(self, path: Path, *, ttl: int) -> None:
        self.path, self.ttl = Path(path), ttl
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._workers: dict[str, tuple[float, dict]] = {}
        self._stages: dict[str, dict] = {}

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, check_same_thread=False, timeout=10, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, "
                    "created REAL NOT NULL, data TEXT NOT NULL)"
                )
                conn.execute("CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created)")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS idempotency (scope TEXT PRIMARY KEY, data TEXT NOT NULL, "
                    "expires REAL NOT NULL)"
                )
                self._prune(conn)
            except (sqlite3.Error, OSError) as exc:
                raise StoreUnavailable(f"cannot open the job database {str(self.path)!r}: {exc}") from exc
            self._conn = conn
        return self._conn

    def _run(self, fn: Callable[[sqlite3.Connection], object]):
        with self._lock:
            try:
                return fn(self._db())
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"job database error: {exc}") from exc

    def create(self, job: Job) -> None:
        self._run(
            lambda db: db.execute(
                "INSERT INTO jobs (id, status, created, data) VALUES (?, ?, ?, ?)",
                (job.id, job.status, job.created_at.timestamp(), job.model_dump_json()),
            )
        )

    def get(self, job_id: str) -> Job | None:
        row = self._run(lambda db: db.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone())
        return Job.model_validate_json(row[0]) if row else None

    def modify(self, job_id: str, change: Mutation) -> Job | None:
        def run(db: sqlite3.Connection) -> Job | None:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is None:
                    return None
                job = Job.model_validate_json(row[0])
                new = change(job)
                if new is None:
                    return job
                db.execute(
                    "UPDATE jobs SET status = ?, data = ? WHERE id = ?",
                    (new.status, new.model_dump_json(), job_id),
                )
                return new
            finally:
                db.execute("COMMIT")

        return self._run(run)

    def ids_by_status(self, status: str) -> list[str]:
        rows = self._run(
            lambda db: db.execute(
                "SELECT id FROM jobs WHERE status = ? ORDER BY created", (status,)
            ).fetchall()
        )
        return [r[0] for r in rows]

    def count_by_status(self) -> dict[str, int]:
        rows = self._run(
            lambda db: db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        )
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({status: n for status, n in rows})
        return counts

    # Embedded mode is one process, so heartbeats and stage statistics need no persistence.
    def heartbeat(self, name: str, info: dict, ttl: float) -> None:
        with self._lock:
            self._workers[name] = (time.monotonic() + ttl, info)

    def live_workers(self) -> dict[str, dict]:
        now = time.monotonic()
        with self._lock:
            return {name: info for name, (until, info) in self._workers.items() if until > now}

    def observe_stage(self, stage: str, seconds: float) -> None:
        with self._lock:
            _add_observation(self._stages.setdefault(stage, _empty_stats()), seconds)

    def stage_stats(self) -> dict[str, dict]:
        with self._lock:
            return json.loads(json.dumps(self._stages))

    def ping(self) -> None:
        self._run(lambda db: db.execute("SELECT 1").fetchone())

    def get_many(self, job_ids: list[str]) -> list[Job]:
        jobs = (self.get(job_id) for job_id in job_ids)
        return [job for job in jobs if job is not None]

    def recent_ids(self, status: str, limit: int) -> list[str]:
        rows = self._run(
            lambda db: db.execute(
                "SELECT id FROM jobs WHERE status = ? ORDER BY created DESC LIMIT ?", (status, limit)
            ).fetchall()
        )
        return [r[0] for r in rows]

    def all_jobs(self) -> Iterator[Job]:
        rows = self._run(lambda db: db.execute("SELECT data FROM jobs").fetchall())
        return (Job.model_validate_json(row[0]) for row in rows)

    def _prune(self, db: sqlite3.Connection) -> int:
        """Finished jobs older than the TTL and expired idempotency keys (unfinished jobs are kept)."""
        now = time.time()
        dropped = db.execute(
            "DELETE FROM jobs WHERE status IN ('succeeded', 'failed', 'canceled') AND created < ?",
            (now - self.ttl,),
        ).rowcount
        db.execute("DELETE FROM idempotency WHERE expires < ?", (now,))
        return dropped

    def prune(self) -> int:
        return self._run(self._prune)

    def idempotency_reserve(self, scope: str, record: dict, ttl: int) -> dict | None:
        def run(db: sqlite3.Connection) -> dict | None:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    "SELECT data FROM idempotency WHERE scope = ? AND expires >= ?", (scope, time.time())
                ).fetchone()
                if row is not None:
                    return json.loads(row[0])
                # The primary key makes a second live reservation impossible; an expired one is replaced.
                db.execute(
                    "INSERT OR REPLACE INTO idempotency (scope, data, expires) VALUES (?, ?, ?)",
                    (scope, json.dumps(record), time.time() + ttl),
                )
                return None
            finally:
                db.execute("COMMIT")

        return self._run(run)

    def idempotency_get(self, scope: str) -> dict | None:
        row = self._run(
            lambda db: db.execute(
                "SELECT data FROM idempotency WHERE scope = ? AND expires >= ?", (scope, time.time())
            ).fetchone()
        )
        return json.loads(row[0]) if row else None

    def idempotency_confirm(self, scope: str, ttl: int) -> None:
        self._run(
            lambda db: db.execute(
                "UPDATE idempotency SET expires = ? WHERE scope = ?", (time.time() + ttl, scope)
            )
        )

    def idempotency_release(self, scope: str, job_id: str) -> None:
        self._run(
            lambda db: db.execute(
                "DELETE FROM idempotency WHERE scope = ? AND json_extract(data, '$.job_id') = ?",
                (scope, job_id),
            )
        )

    def try_lock(self, name: str, ttl: float) -> bool:
        return True  # embedded mode is one process

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def make_job_store(settings) -> JobStore:
    """Redis when QALIGN_REDIS_URL is set, else the embedded SQLite file in DATA_DIR."""
    if settings.redis_url:
        return RedisJobStore(settings.redis_url, ttl=settings.job_ttl)
    return SqliteJobStore(Path(settings.data_dir) / "jobs.sqlite3", ttl=settings.job_ttl)
