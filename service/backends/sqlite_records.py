"""Embedded-mode stores: records and idempotency keys in one SQLite file in DATA_DIR (jobs survive a
restart); heartbeats, leases and stage statistics in process memory (embedded mode is one process).

The same rules as Redis: status order by enqueue time, then id (the enqueue time is the submission
time, ``records.enqueued_at``: the ``created`` column); a finished record expires JOB_TTL after the
job ended (``records.expires_at``; ``prune`` reads the record's ``finished_at``); an unfinished one
does not expire.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import TypeVar

from service.jobs.events import OutboxEvent, event_for
from service.jobs.model import STATUSES, TERMINAL, Job
from service.jobs.records import (
    AdmissionLimits,
    AdmissionRefused,
    Clock,
    IdempotencyRecord,
    JobStoreDown,
    JobStores,
    StageStats,
    WorkerInfo,
    add_observation,
    empty_stats,
    expires_at,
    idempotency_scope,
    window_of,
)
from service.jobs.transitions import Mutation

#: When a finished record's job ended, in epoch seconds: its ``finished_at`` (ISO 8601 in the JSON),
#: else its creation (``records.expires_at``'s rule).
_ENDED = "COALESCE((julianday(json_extract(data, '$.finished_at')) - 2440587.5) * 86400.0, created)"

T = TypeVar("T")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, "
    "created REAL NOT NULL, data TEXT NOT NULL)",
    # Status order: enqueue time, then id (what Redis's sorted sets do with equal scores).
    "DROP INDEX IF EXISTS jobs_status",
    "CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, created, id)",
    # GET /jobs: an owner's jobs newest first (the owner lives in the JSON: no column to migrate).
    "CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (json_extract(data, '$.owner'), created, id)",
    "CREATE TABLE IF NOT EXISTS idempotency (scope TEXT PRIMARY KEY, data TEXT NOT NULL, "
    "expires REAL NOT NULL)",
    # The durable outbox: seq orders the events; written in the transaction of the record change.
    "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, "
    "job_id TEXT NOT NULL, data TEXT NOT NULL)",
)


class SqliteDatabase:
    """One connection (opened on first use, not at import), serialised by a lock; ``clock`` gives
    the epoch seconds that TTLs compare against (tests inject one instead of sleeping)."""

    def __init__(self, path: Path, *, ttl: int, clock: Clock = time.time) -> None:
        self.path, self.ttl, self.clock = Path(path), ttl, clock
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, check_same_thread=False, timeout=10, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                # Erased and expired rows are overwritten, not left readable in free pages.
                conn.execute("PRAGMA secure_delete=ON")
                for statement in _SCHEMA:
                    conn.execute(statement)
                self.prune(conn)
            except (sqlite3.Error, OSError) as exc:
                raise JobStoreDown(f"cannot open the job database {str(self.path)!r}: {exc}") from exc
            self._conn = conn
        return self._conn

    def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                return fn(self._db())
            except sqlite3.Error as exc:
                raise JobStoreDown(f"job database error: {exc}") from exc

    def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` inside BEGIN IMMEDIATE: committed when it returns, rolled back when it raises."""

        def run(db: sqlite3.Connection) -> T:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(db)
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

        return self.run(run)

    def prune(self, db: sqlite3.Connection) -> int:
        """Jobs that ended more than the TTL ago, and expired idempotency keys (unfinished jobs are
        kept, however old)."""
        now = self.clock()
        terminal = sorted(TERMINAL)
        dropped = db.execute(
            f"DELETE FROM jobs WHERE status IN ({', '.join('?' * len(terminal))}) AND {_ENDED} < ?",
            (*terminal, now - self.ttl),
        ).rowcount
        db.execute("DELETE FROM idempotency WHERE expires < ?", (now,))
        return dropped

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _insert(db: sqlite3.Connection, job: Job) -> None:
    db.execute(
        "INSERT INTO jobs (id, status, created, data) VALUES (?, ?, ?, ?)",
        (job.id, job.status, job.created_at.timestamp(), job.model_dump_json()),
    )


class SqliteOutbox:
    """Undelivered events in the ``outbox`` table of the job database, oldest (lowest seq) first."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    @staticmethod
    def append(db: sqlite3.Connection, event: OutboxEvent) -> None:
        """Inside the caller's transaction (``SqliteJobRecords.apply``)."""
        db.execute(
            "INSERT INTO outbox (id, job_id, data) VALUES (?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET data = excluded.data",
            (event.id, event.job_id, event.model_dump_json()),
        )

    def pending(self, limit: int) -> list[OutboxEvent]:
        rows = self.db.run(
            lambda db: db.execute("SELECT data FROM outbox ORDER BY seq LIMIT ?", (limit,)).fetchall()
        )
        return [OutboxEvent.model_validate_json(data) for (data,) in rows]

    def ack(self, event_id: str) -> None:
        self.db.run(lambda db: db.execute("DELETE FROM outbox WHERE id = ?", (event_id,)))

    def count(self) -> int:
        (count,) = self.db.run(lambda db: db.execute("SELECT COUNT(*) FROM outbox").fetchone())
        return int(count)


class SqliteJobRecords:
    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    def create(self, job: Job) -> None:
        self.db.run(lambda db: _insert(db, job))

    def admit(self, job: Job, limits: AdmissionLimits) -> AdmissionRefused | None:
        def run(db: sqlite3.Connection) -> AdmissionRefused | None:  # one BEGIN IMMEDIATE transaction
            (queued,) = db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()

            def owned() -> int:
                (mine,) = db.execute(
                    "SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')"
                    " AND json_extract(data, '$.owner') = ?",
                    (job.owner,),
                ).fetchone()
                return int(mine)

            refused = limits.refusal(queued, owned if job.owner is not None else None)
            if refused is None:
                _insert(db, job)
            return refused

        return self.db.transaction(run)

    def get(self, job_id: str) -> Job | None:
        row = self.db.run(lambda db: db.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone())
        return Job.model_validate_json(row[0]) if row else None

    def get_many(self, job_ids: list[str]) -> list[Job]:
        jobs = (self.get(job_id) for job_id in job_ids)
        return [job for job in jobs if job is not None]

    def apply(self, job_id: str, transition: Mutation) -> Job | None:
        def run(db: sqlite3.Connection) -> Job | None:
            row = db.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            job = Job.model_validate_json(row[0])
            new = transition(job)
            if new is None:
                return job
            new = new.model_copy(update={"revision": job.revision + 1})
            db.execute(
                "UPDATE jobs SET status = ?, data = ? WHERE id = ?",
                (new.status, new.model_dump_json(), job_id),
            )
            if (event := event_for(job, new)) is not None:
                SqliteOutbox.append(db, event)
            if new.finished and not job.finished and new.idempotency_key is not None:
                # Its Idempotency-Key, kept while the job was unfinished, now expires with the record.
                scope = idempotency_scope(new.owner, new.idempotency_key)
                db.execute(
                    "UPDATE idempotency SET expires = ?"
                    " WHERE scope = ? AND json_extract(data, '$.job_id') = ?",
                    (expires_at(new, self.db.ttl), scope, job_id),
                )
            return new

        return self.db.transaction(run)

    def delete(self, job_id: str) -> Job | None:
        def run(db: sqlite3.Connection) -> Job | None:
            row = db.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            db.execute("DELETE FROM outbox WHERE job_id = ?", (job_id,))
            return Job.model_validate_json(row[0])

        return self.db.transaction(run)

    def ids_by_status(self, status: str) -> list[str]:
        query = "SELECT id FROM jobs WHERE status = ? ORDER BY created, id"
        return [r[0] for r in self.db.run(lambda db: db.execute(query, (status,)).fetchall())]

    def ranks(self, status: str, job_ids: Collection[str]) -> dict[str, int]:
        # Counted on the (status, created, id) index, from the row's own enqueue time and id.
        query = (
            "SELECT (SELECT COUNT(*) FROM jobs AS ahead WHERE ahead.status = me.status"
            " AND (ahead.created < me.created OR (ahead.created = me.created AND ahead.id < me.id)))"
            " FROM jobs AS me WHERE me.id = ? AND me.status = ?"
        )

        def run(db: sqlite3.Connection) -> dict[str, int]:
            found = ((job_id, db.execute(query, (job_id, status)).fetchone()) for job_id in job_ids)
            return {job_id: row[0] for job_id, row in found if row is not None}

        return self.db.run(run)

    def recent_ids(self, status: str, limit: int) -> list[str]:
        query = "SELECT id FROM jobs WHERE status = ? ORDER BY created DESC, id DESC LIMIT ?"
        return [r[0] for r in self.db.run(lambda db: db.execute(query, (status, limit)).fetchall())]

    def count_by_status(self) -> dict[str, int]:
        query = "SELECT status, COUNT(*) FROM jobs GROUP BY status"
        counts = dict.fromkeys(STATUSES, 0)
        counts.update(dict(self.db.run(lambda db: db.execute(query).fetchall())))
        return counts

    def owned(
        self, owner: str | None, *, status: str | None, limit: int, before: tuple[float, str] | None
    ) -> list[Job]:
        query = "SELECT data FROM jobs WHERE json_extract(data, '$.owner') IS ?"
        args: list[str | float | int | None] = [owner]
        if status is not None:
            query, args = query + " AND status = ?", [*args, status]
        if before is not None:
            query += " AND (created < ? OR (created = ? AND id < ?))"
            args += [before[0], before[0], before[1]]
        query, args = query + " ORDER BY created DESC, id DESC LIMIT ?", [*args, limit]
        rows = self.db.run(lambda db: db.execute(query, args).fetchall())
        return [Job.model_validate_json(row[0]) for row in rows]

    def all_jobs(self) -> Iterator[Job]:
        rows = self.db.run(lambda db: db.execute("SELECT data FROM jobs").fetchall())
        return (Job.model_validate_json(row[0]) for row in rows)

    def listed_by_others(self, keys: Collection[str], job_id: str) -> set[str]:
        # One pass over the rows inside SQLite (no index needed for an embedded store's jobs).
        keys = list(dict.fromkeys(keys))
        if not keys:
            return set()
        wanted = ", ".join("?" * len(keys))
        query = (
            "SELECT DISTINCT listed FROM ("
            " SELECT json_extract(data, '$.structure_key') AS listed, id FROM jobs"
            " UNION ALL SELECT app.value, jobs.id FROM jobs, json_each(jobs.data, '$.appearance_keys') AS app"
            " UNION ALL SELECT inv.value, jobs.id FROM jobs, json_each(jobs.data, '$.inversion_keys') AS inv"
            f") WHERE id != ? AND listed IN ({wanted})"
        )
        rows = self.db.run(lambda db: db.execute(query, (job_id, *keys)).fetchall())
        return {row[0] for row in rows}

    def prune(self) -> int:
        return self.db.run(self.db.prune)

    def migrate(self) -> None:
        """Open the file now: the schema is brought up to date (idempotent statements) when the
        connection opens, so at process start rather than in the first request."""
        self.db.run(lambda db: None)

    def ping(self) -> None:
        self.db.run(lambda db: db.execute("SELECT 1").fetchone())


#: ``idempotency.expires`` of a key whose job is unfinished: it does not expire.
NEVER = float("inf")


class SqliteIdempotencyKeys:
    """The ``idempotency`` table: ``expires`` is the reservation's end, then NEVER while its job is
    unfinished (``confirm``), then the record's expiry (set by ``SqliteJobRecords.apply`` in the
    transaction that ends the job)."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    def reserve(self, scope: str, record: IdempotencyRecord, ttl: int) -> IdempotencyRecord | None:
        def run(db: sqlite3.Connection) -> IdempotencyRecord | None:
            now = self.db.clock()
            row = db.execute(
                "SELECT data FROM idempotency WHERE scope = ? AND expires >= ?", (scope, now)
            ).fetchone()
            if row is not None:
                existing: IdempotencyRecord = json.loads(row[0])
                return existing
            # The primary key makes a second live reservation impossible; an expired one is replaced.
            db.execute(
                "INSERT OR REPLACE INTO idempotency (scope, data, expires) VALUES (?, ?, ?)",
                (scope, json.dumps(record), now + ttl),
            )
            return None

        return self.db.transaction(run)

    def get(self, scope: str) -> IdempotencyRecord | None:
        query = "SELECT data FROM idempotency WHERE scope = ? AND expires >= ?"
        row = self.db.run(lambda db: db.execute(query, (scope, self.db.clock())).fetchone())
        record: IdempotencyRecord | None = json.loads(row[0]) if row else None
        return record

    def confirm(self, scope: str, ttl: int) -> None:
        def run(db: sqlite3.Connection) -> None:
            row = db.execute("SELECT data FROM idempotency WHERE scope = ?", (scope,)).fetchone()
            if row is None:
                return
            record = db.execute(
                "SELECT data FROM jobs WHERE id = ?", (json.loads(row[0]).get("job_id"),)
            ).fetchone()
            if record is None:  # erased already: the key lives its ttl, as before its job
                expires: float = self.db.clock() + ttl
            else:
                ends = expires_at(Job.model_validate_json(record[0]), ttl)
                expires = NEVER if ends is None else ends
            db.execute("UPDATE idempotency SET expires = ? WHERE scope = ?", (expires, scope))

        self.db.transaction(run)

    def release(self, scope: str, job_id: str) -> None:
        query = "DELETE FROM idempotency WHERE scope = ? AND json_extract(data, '$.job_id') = ?"
        self.db.run(lambda db: db.execute(query, (scope, job_id)))


class MemoryWorkerRegistry:
    """Heartbeats in process memory: in embedded mode the only worker is a thread of this process."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._workers: dict[str, tuple[float, WorkerInfo]] = {}

    def heartbeat(self, name: str, info: WorkerInfo, ttl: float) -> None:
        with self._lock:
            self._workers[name] = (self.clock() + ttl, info)

    def live(self) -> dict[str, WorkerInfo]:
        now = self.clock()
        with self._lock:
            return {name: info for name, (until, info) in self._workers.items() if until > now}

    def try_lock(self, name: str, ttl: float) -> bool:
        return True  # one process: nobody to share the lease with

    def hold(self, name: str, holder: str, ttl: float) -> bool:
        return True  # one process: nobody to share the lease with

    def uptime(self) -> float | None:
        return None  # heartbeats live as long as this process


class MemoryStageStatistics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stages: dict[str, StageStats] = {}

    def observe(self, stage: str, seconds: float) -> None:
        with self._lock:
            add_observation(self._stages.setdefault(stage, empty_stats()), seconds)

    def snapshot(self) -> dict[str, StageStats]:
        with self._lock:
            return {
                stage: {**stats, "buckets": list(stats["buckets"])} for stage, stats in self._stages.items()
            }


class MemoryEventCounters:
    """Embedded mode: the only process that counts is the one that reports."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, Counter[str]] = {}

    def add(self, name: str, label: str) -> None:
        with self._lock:
            self._counts.setdefault(name, Counter())[label] += 1

    def snapshot(self, name: str) -> dict[str, int]:
        with self._lock:
            return dict(self._counts.get(name, {}))


class MemoryRateWindows:
    """Embedded mode: one process takes every request, so its memory holds the counts (the current
    window's only: an older one is dropped when a key's next window starts)."""

    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, int]] = {}  # key -> (window index, count)

    def hit(self, key: str, window_s: int) -> tuple[int, float]:
        index, left = window_of(self.clock(), window_s)
        with self._lock:
            current, count = self._counts.get(key, (index, 0))
            count = count + 1 if current == index else 1
            self._counts[key] = (index, count)
        return count, left


def open_sqlite_stores(path: Path, *, ttl: int, clock: Clock = time.time) -> JobStores:
    db = SqliteDatabase(path, ttl=ttl, clock=clock)
    return JobStores(
        records=SqliteJobRecords(db),
        idempotency=SqliteIdempotencyKeys(db),
        workers=MemoryWorkerRegistry(),
        stages=MemoryStageStatistics(),
        counters=MemoryEventCounters(),
        outbox=SqliteOutbox(db),
        rates=MemoryRateWindows(clock),
        close=db.close,
    )
