"""Narrow store protocols of the job runtime, and the bundle one process opens.

Concerns with different lifetimes and sharing needs, each with a Redis implementation
(distributed mode, shared by every process) and an embedded one (SQLite file, or process memory for
what only one process reads): job records, idempotency keys, the worker registry (heartbeats and
leases), stage statistics and event counters; plus the durable outbox of job events, which
lives with the records because ``JobRecords.apply`` writes both in one atomic operation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

from service.jobs.events import OutboxEvent
from service.jobs.model import Job
from service.jobs.transitions import Mutation

#: Stage-duration histogram buckets (seconds), shared by every backend.
STAGE_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

if TYPE_CHECKING:
    pass

Clock = Callable[[], float]
#: What a worker's heartbeat says about it (JSON: job, model, device, GPU memory, ...).
WorkerInfo = dict[str, Any]
#: An Idempotency-Key's record (JSON: the job id and the request fingerprint).
IdempotencyRecord = dict[str, Any]


class StageStats(TypedDict):
    """One stage's histogram: cumulative counts per STAGE_BUCKETS and +Inf, sum and count."""

    buckets: list[int]
    sum: float
    count: int


class JobStoreDown(Exception):
    """The job store (Redis or the SQLite file) cannot be reached; the API answers 503."""


@dataclass(frozen=True)
class AdmissionLimits:
    """What a new job must fit under: queued jobs overall, and unfinished (queued or running) jobs
    of its owner (None: no per-owner limit; jobs without an owner are never counted per owner)."""

    max_queued: int
    max_unfinished_per_owner: int | None = None

    def refusal(self, queued: int, owned: Callable[[], int] | None = None) -> AdmissionRefused | None:
        """The admission rule, in one place: refused when ``queued`` jobs fill the queue, or when
        the owner's unfinished jobs (``owned()``, counted only under a per-owner limit; None for a
        job without an owner) reach the per-owner limit. Redis's admit script makes the same two
        comparisons inside its atomic step (tests/service/backends/test_admission_store.py runs both stores
        through the same cases)."""
        if queued >= self.max_queued:
            return AdmissionRefused(per_owner=False, count=queued, limit=self.max_queued)
        if self.max_unfinished_per_owner is None or owned is None:
            return None
        mine = owned()
        if mine >= self.max_unfinished_per_owner:
            return AdmissionRefused(per_owner=True, count=mine, limit=self.max_unfinished_per_owner)
        return None


@dataclass(frozen=True)
class AdmissionRefused:
    """Why ``JobRecords.admit`` did not insert: ``count`` jobs against ``limit``, overall
    (``per_owner`` False) or for the job's owner (True)."""

    per_owner: bool
    count: int
    limit: int


class JobRecords(Protocol):
    """Job records with atomic read-modify-write, and an index by status."""

    def create(self, job: Job) -> None: ...

    def admit(self, job: Job, limits: AdmissionLimits) -> AdmissionRefused | None:
        """Insert ``job`` (queued) only if it fits ``limits``, counting and inserting in one atomic
        store operation, so concurrent admissions can never overrun a limit together. None when
        inserted, else why not (nothing written)."""
        ...

    def get(self, job_id: str) -> Job | None: ...

    def get_many(self, job_ids: list[str]) -> list[Job]:
        """The records that still exist, in the order asked."""
        ...

    def apply(self, job_id: str, transition: Mutation) -> Job | None:
        """The one place a record changes: ``transition`` (a pure function of the record, from
        ``service.jobs.transitions``; None leaves the record alone) applied atomically. In the same
        atomic store operation, the change's event (``events.event_for``) is appended to the
        outbox, so a status change is never stored without its event, nor an event without its
        change. Every write bumps ``Job.revision``, so readers can tell that a record changed.

        Returns the record after the call (changed or not), or None for an unknown id.
        """
        ...

    def delete(self, job_id: str) -> Job | None:
        """Remove the record, its index entries and its undelivered events atomically (erasure: an
        erased job sends nothing more); the record as it was at removal, or None for an unknown
        id. Later ``apply`` calls find nothing, so no late write can bring it back."""
        ...

    def ids_by_status(self, status: str) -> list[str]:
        """Ids in ``status`` in queue order: by ``enqueued_at``, then by id."""
        ...

    def ranks(self, status: str, job_ids: Collection[str]) -> dict[str, int]:
        """For each of ``job_ids`` in ``status``: how many ids in ``status`` come before it (the
        order of ``ids_by_status``); ids not in ``status`` are left out. Indexed, not a scan."""
        ...

    def recent_ids(self, status: str, limit: int) -> list[str]:
        """Up to ``limit`` ids in ``status``, the reverse of ``ids_by_status``'s order."""
        ...

    def count_by_status(self) -> dict[str, int]:
        """Records per status, read only: records past their expiry count until ``prune`` drops them."""
        ...

    def owned(
        self, owner: str | None, *, status: str | None, limit: int, before: tuple[float, str] | None
    ) -> list[Job]:
        """Up to ``limit`` records of ``owner`` (None: open mode), newest first by (created_at, id),
        optionally in ``status``; ``before`` = (created_at timestamp, id) of the last one seen."""
        ...

    def all_jobs(self) -> Iterator[Job]:
        """Every stored record (the expiry sweep reads which inputs are still referenced)."""
        ...

    def listed_by_others(self, keys: Collection[str], job_id: str) -> set[str]:
        """Those of ``keys`` (input and inversion store keys) that a stored job other than
        ``job_id`` lists: what erasing ``job_id`` must keep. Read only."""
        ...

    def prune(self) -> int:
        """Drop the records past their expiry (``expires_at``) and the index entries of records
        that are gone: the expiry sweep's work (reads never write). The number of records dropped."""
        ...

    def migrate(self) -> None:
        """Bring records and indexes that earlier versions wrote up to this version's rules, once
        per store (idempotent). Run at process start and by the sweep, never in a request."""
        ...

    def ping(self) -> None:
        """Raise JobStoreDown when the store cannot be reached."""
        ...


class IdempotencyKeys(Protocol):
    """``scope`` is a digest of (owner, Idempotency-Key); the record names the job and the request
    fingerprint. Reservation is atomic (SET NX / primary key)."""

    def reserve(self, scope: str, record: IdempotencyRecord, ttl: int) -> IdempotencyRecord | None:
        """Store ``record`` unless ``scope`` has a live one: None if stored, else the existing record."""
        ...

    def get(self, scope: str) -> IdempotencyRecord | None: ...

    def confirm(self, scope: str, ttl: int) -> None:
        """The job exists now: keep the key as long as the job's record. No expiry while the job
        is unfinished (queued or running, however long); ``ttl`` after it ended, which
        ``JobRecords.apply`` sets in the write that ends the job."""
        ...

    def release(self, scope: str, job_id: str) -> None:
        """Forget the reservation of ``job_id`` (its submission failed), so a retry can proceed."""
        ...


class WorkerRegistry(Protocol):
    """Who is alive (heartbeats with a TTL) and best-effort leases shared by API processes."""

    def heartbeat(self, name: str, info: WorkerInfo, ttl: float) -> None: ...

    def live(self) -> dict[str, WorkerInfo]: ...

    def try_lock(self, name: str, ttl: float) -> bool:
        """A lease held for ``ttl`` seconds (one expiry sweep per interval across replicas)."""
        ...

    def hold(self, name: str, holder: str, ttl: float) -> bool:
        """Take lease ``name`` for ``holder``, or renew it if ``holder`` has it, for ``ttl``
        seconds; False while another holder has it (the outbox has one drainer at a time)."""
        ...

    def uptime(self) -> float | None:
        """Seconds the shared store has been up (heartbeats older than that were lost), or None
        when it cannot forget heartbeats (process memory)."""
        ...


class Outbox(Protocol):
    """The durable outbox: events appended by ``JobRecords.apply``, removed once delivered."""

    def pending(self, limit: int) -> list[OutboxEvent]:
        """Up to ``limit`` undelivered events, oldest first (a job's events in their order)."""
        ...

    def ack(self, event_id: str) -> None:
        """Event ``event_id`` is done (delivered, or given up on and recorded): remove it."""
        ...

    def count(self) -> int:
        """Undelivered events (the backlog gauge)."""
        ...


class StageStatistics(Protocol):
    def observe(self, stage: str, seconds: float) -> None: ...

    def snapshot(self) -> dict[str, StageStats]:
        """stage -> {"buckets": [cumulative counts per STAGE_BUCKETS and +Inf], "sum": s, "count": n}."""
        ...


class EventCounters(Protocol):
    """Counts of events that any process records and every API replica reports (Prometheus
    counters without an open port on the workers), e.g. webhooks given up on, by reason."""

    def add(self, name: str, label: str) -> None: ...

    def snapshot(self, name: str) -> dict[str, int]:
        """label -> count, for counter ``name``."""
        ...


class RateWindows(Protocol):
    """Request counts per key in fixed time windows, shared by every API replica (the per-key
    request rate limit, service.usecases.admission.RateLimiter)."""

    def hit(self, key: str, window_s: int) -> tuple[int, float]:
        """Count one request of ``key`` in the current ``window_s`` window (windows start at
        multiples of ``window_s`` in epoch seconds): (requests in it so far, this one included;
        seconds until it ends)."""
        ...


def window_of(now: float, window_s: int) -> tuple[int, float]:
    """(index of the fixed window holding ``now``, seconds until it ends)."""
    index = int(now // window_s)
    return index, (index + 1) * window_s - now


#: EventCounters name of the webhook events given up on (labels: refused, failed).
WEBHOOKS_UNDELIVERED = "webhooks_undelivered"


@dataclass
class JobStores:
    """The stores of one backend, opened together; closing closes the shared connection."""

    records: JobRecords
    idempotency: IdempotencyKeys
    workers: WorkerRegistry
    stages: StageStatistics
    counters: EventCounters
    outbox: Outbox
    rates: RateWindows
    close: Callable[[], None] = lambda: None


def enqueued_at(job: Job) -> float:
    """A job's place in the queue, and in every status index: the time it was submitted (epoch
    seconds). A requeued job (an interrupted run: shutdown, lost worker, store outage) keeps it, so it
    goes back to where it was, ahead of the jobs submitted after it, instead of losing its turn."""
    return job.created_at.timestamp()


def expires_at(job: Job, ttl: float) -> float | None:
    """When a record expires (epoch seconds): ``ttl`` after the job ended. An unfinished job never
    expires by time, however long it waits (the queue limit bounds how many there are); a finished
    record without ``finished_at`` (no transition writes one) counts from its creation."""
    if not job.finished:
        return None
    return (job.finished_at or job.created_at).timestamp() + ttl


def idempotency_scope(owner: str | None, key: str) -> str:
    """Where an Idempotency-Key's record is kept. Keys are per owner: two API keys may use the same
    Idempotency-Key independently. The stores derive it from a record (``Job.owner``,
    ``Job.idempotency_key``) to let the key expire with the job."""
    return hashlib.sha256(f"{owner or ''}\0{key}".encode()).hexdigest()


def listed_keys(job: Job) -> set[str]:
    """The shared objects a job lists: its inputs and the cached inversions its runs used."""
    return {*job.input_keys, *job.inversion_keys}


def empty_stats() -> StageStats:
    return {"buckets": [0] * (len(STAGE_BUCKETS) + 1), "sum": 0.0, "count": 0}


def add_observation(stats: StageStats, seconds: float) -> None:
    for i, bound in enumerate((*STAGE_BUCKETS, float("inf"))):
        if seconds <= bound:
            stats["buckets"][i] += 1
    stats["sum"] += seconds
    stats["count"] += 1
