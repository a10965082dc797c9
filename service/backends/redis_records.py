"""Redis implementations of the job-runtime stores (distributed mode: shared by every process).

Records are JSON strings; a finished one expires JOB_TTL after the job ended (a key expiry at that
time, ``records.expires_at``), an unfinished one does not expire. One sorted set per status (score =
enqueue time, ``records.enqueued_at``) indexes them, and one per owner (score = created_at) lists an
API key's jobs newest first. One set per shared object (an input or a cached inversion) holds the
ids of the jobs that list it, for erasure. The index sets have no TTL of their own: reads skip the
ids of records that are gone, and the expiry sweep (``prune``) drops them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterator
from typing import Any, TypeVar, cast

import redis

from service.jobs.events import OutboxEvent, event_for, event_id_prefix
from service.jobs.model import STATUSES, Job, worker_name
from service.jobs.records import (
    STAGE_BUCKETS,
    AdmissionLimits,
    AdmissionRefused,
    IdempotencyRecord,
    JobStoreDown,
    JobStores,
    StageStats,
    WorkerInfo,
    empty_stats,
    enqueued_at,
    expires_at,
    idempotency_scope,
    listed_keys,
    window_of,
)
from service.jobs.transitions import Mutation

_ERRORS = (redis.RedisError, OSError)
T = TypeVar("T")


class RedisConnection:
    """One client and key prefix, shared by the four stores; every call maps errors to JobStoreDown."""

    def __init__(self, url: str, *, prefix: str = "qalign:") -> None:
        self.client = redis.Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30, decode_responses=True
        )
        self.prefix = prefix

    def job_key(self, job_id: str) -> str:
        """The key of job ``job_id``'s record."""
        return f"{self.prefix}job:{job_id}"

    def idempotency_key(self, scope: str) -> str:
        """The key of an Idempotency-Key's record (``scope``: see ``records.idempotency_scope``)."""
        return f"{self.prefix}idem:{scope}"

    def run(self, fn: Callable[[], T]) -> T:
        """``fn()``, a function of Redis calls; a Redis error becomes JobStoreDown (503)."""
        try:
            return fn()
        except _ERRORS as exc:
            raise JobStoreDown(f"Redis is unreachable: {exc}") from exc

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``run`` for one client method. Any: redis-py types replies as bytes or str whatever
        ``decode_responses`` says, so each caller states the type it reads."""
        return self.run(lambda: fn(*args, **kwargs))

    def transaction(self, fn: Callable[[redis.client.Pipeline], T], *watches: str) -> T:
        """``fn(pipe)``'s value, with ``watches`` watched, and what it queued after ``pipe.multi()``
        executed atomically; all of it run again when a watched key changed meanwhile (redis-py's
        ``transaction``; ``fn`` may watch more keys before its MULTI). A Redis error becomes
        JobStoreDown."""
        # redis-py types ``func`` as returning None, though value_from_callable returns its value.
        func = cast(Callable[[redis.client.Pipeline], None], fn)
        return self.run(lambda: cast(T, self.client.transaction(func, *watches, value_from_callable=True)))

    def close(self) -> None:
        self.client.close()


def unwatched(pipe: redis.client.Pipeline, value: T) -> T:
    """``value``, with the pipe's watches dropped: a transaction that writes nothing sends no
    (empty) MULTI/EXEC, so no change by another writer makes it run again."""
    pipe.reset()
    return value


#: Admission in one atomic step: count the queued jobs (KEYS[1]) and, when ARGV[2] >= 0, the
#: owner's unfinished ones (members of KEYS[1] and KEYS[2] in the owner index KEYS[3]); refuse
#: with {'queue'|'owner', count}, else write what ``create`` writes for a queued job (no expiry)
#: and return {'ok', 0}. KEYS[4] the record, KEYS[5..] the lister sets; ARGV: max queued, max per
#: owner (-1: none), record JSON, job id, enqueue time, created_at.
_ADMIT = """
local queued = redis.call('ZCARD', KEYS[1])
if queued >= tonumber(ARGV[1]) then return {'queue', queued} end
local per_owner = tonumber(ARGV[2])
if per_owner >= 0 then
  local mine = 0
  for i = 1, 2 do
    for _, id in ipairs(redis.call('ZRANGE', KEYS[i], 0, -1)) do
      if redis.call('ZSCORE', KEYS[3], id) then mine = mine + 1 end
    end
  end
  if mine >= per_owner then return {'owner', mine} end
end
redis.call('SET', KEYS[4], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[5], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[4])
for i = 5, #KEYS do
  redis.call('SADD', KEYS[i], ARGV[4])
end
return {'ok', 0}
"""

#: Layout of the records and their indexes, kept in ``records-version`` (``migrate``): 1, the
#: listers index (older marker: ``listed-by-indexed``); 2, expiry from the job's end, status
#: indexes by enqueue time, index sets without a TTL.
RECORDS_VERSION = 2


#: Append one event to the outbox: its id into the order (KEYS[1]) scored by the next number of the
#: sequence (KEYS[3]), its JSON into the events hash (KEYS[2]); ARGV: id, JSON. The number comes
#: from Redis, inside the writer's MULTI, so the order is the order Redis applied the changes in,
#: whatever the clocks of the hosts that wrote them. An outbox scored by time (before 0.1.0) starts
#: the sequence above its newest score, so its pending events still go first.
_APPEND_EVENT = """
if redis.call('EXISTS', KEYS[3]) == 0 then
  local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if newest[2] then redis.call('SET', KEYS[3], math.floor(tonumber(newest[2])) + 1) end
end
local seq = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[1], seq, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return seq
"""


class RedisOutbox:
    """Undelivered events: a sorted set of ids in append order (``outbox``, scored by the
    ``outbox:seq`` counter) and a hash of the events by id (``outbox:events``). ``append`` and
    ``remove`` join the caller's MULTI, so an event is written with its record change and removed
    with an erased record."""

    def __init__(self, conn: RedisConnection) -> None:
        self.conn, self.client = conn, conn.client
        self._order, self._events = f"{conn.prefix}outbox", f"{conn.prefix}outbox:events"
        self._seq = f"{conn.prefix}outbox:seq"

    def append(self, pipe: redis.client.Pipeline, event: OutboxEvent) -> None:
        # EVAL, not EVALSHA: a script in a pipeline would cost a SCRIPT EXISTS round trip per write.
        pipe.eval(_APPEND_EVENT, 3, self._order, self._events, self._seq, event.id, event.model_dump_json())

    def ids_of(self, job_id: str) -> list[str]:
        """The ids of job ``job_id``'s pending events (a scan of the outbox, which a running
        drainer keeps short; only erasure asks)."""
        match = f"{event_id_prefix(job_id)}*"
        return [str(i) for i, _ in self.client.zscan_iter(self._order, match=match, count=500)]

    def remove(self, pipe: redis.client.Pipeline, event_ids: list[str]) -> None:
        pipe.zrem(self._order, *event_ids)
        pipe.hdel(self._events, *event_ids)

    def pending(self, limit: int) -> list[OutboxEvent]:
        def run() -> list[OutboxEvent]:
            ids = cast(list[str], self.client.zrange(self._order, 0, limit - 1))
            raws = cast(list[str | None], self.client.hmget(self._events, ids) if ids else [])
            return [OutboxEvent.model_validate_json(raw) for raw in raws if raw]

        return self.conn.run(run)

    def ack(self, event_id: str) -> None:
        def run() -> None:
            pipe = self.client.pipeline()
            self.remove(pipe, [event_id])
            pipe.execute()

        self.conn.run(run)

    def count(self) -> int:
        return int(self.conn.call(self.client.zcard, self._order))


class RedisJobRecords:
    def __init__(self, conn: RedisConnection, *, ttl: int, outbox: RedisOutbox) -> None:
        self.conn, self.client, self.ttl, self.outbox = conn, conn.client, ttl, outbox
        self._admit = self.client.register_script(_ADMIT)

    def _key(self, job_id: str) -> str:
        return self.conn.job_key(job_id)

    def _status_key(self, status: str) -> str:
        return f"{self.conn.prefix}status:{status}"

    def _owner_key(self, owner: str | None) -> str:
        return f"{self.conn.prefix}owner:{json.dumps(owner)}"  # "alice" or null: no name can collide

    def _listers_key(self, object_key: str) -> str:
        return f"{self.conn.prefix}listed-by:{object_key}"

    def _add_listers(self, pipe: redis.client.Pipeline, job_id: str, object_keys: set[str]) -> None:
        """Record that ``job_id`` lists ``object_keys`` (the sets have no TTL: ``prune`` drops the
        ids of records that are gone)."""
        for object_key in object_keys:
            pipe.sadd(self._listers_key(object_key), job_id)

    def _expiry_ms(self, job: Job) -> int | None:
        """SET's ``pxat`` for ``job``'s record: at its end plus the TTL (``expires_at``); None
        while it is unfinished (a SET without one also clears an earlier expiry)."""
        at = expires_at(job, self.ttl)
        return None if at is None else int(at * 1000)

    def create(self, job: Job) -> None:
        def run() -> None:
            pipe = self.client.pipeline()
            pipe.set(self._key(job.id), job.model_dump_json(), pxat=self._expiry_ms(job))
            pipe.zadd(self._status_key(job.status), {job.id: enqueued_at(job)})
            pipe.zadd(self._owner_key(job.owner), {job.id: job.created_at.timestamp()})
            self._add_listers(pipe, job.id, listed_keys(job))
            pipe.execute()

        self.conn.run(run)

    def admit(self, job: Job, limits: AdmissionLimits) -> AdmissionRefused | None:
        if job.status != "queued":
            raise ValueError(f"only a queued job is admitted, not a {job.status} one")
        per_owner = limits.max_unfinished_per_owner
        if job.owner is None or per_owner is None:
            per_owner = -1
        keys = [
            self._status_key("queued"),
            self._status_key("running"),
            self._owner_key(job.owner),
            self._key(job.id),
            *(self._listers_key(k) for k in sorted(listed_keys(job))),
        ]
        args = [
            limits.max_queued,
            per_owner,
            job.model_dump_json(),
            job.id,
            repr(enqueued_at(job)),
            repr(job.created_at.timestamp()),
        ]
        verdict, count = self.conn.call(self._admit, keys=keys, args=args)
        if verdict == "ok":
            return None
        per_owner_refusal = verdict == "owner"
        limit = per_owner if per_owner_refusal else limits.max_queued
        return AdmissionRefused(per_owner=per_owner_refusal, count=int(count), limit=limit)

    def get(self, job_id: str) -> Job | None:
        raw = self.conn.call(self.client.get, self._key(job_id))
        return Job.model_validate_json(raw) if raw else None

    def get_many(self, job_ids: list[str]) -> list[Job]:
        if not job_ids:
            return []
        raws = self.conn.call(self.client.mget, [self._key(i) for i in job_ids])
        return [Job.model_validate_json(raw) for raw in raws if raw]

    def apply(self, job_id: str, transition: Mutation) -> Job | None:
        key = self._key(job_id)

        def change(pipe: redis.client.Pipeline) -> Job | None:
            # Optimistic: run again when another writer changed the record meanwhile.
            raw = pipe.get(key)
            if not raw:
                return unwatched(pipe, None)
            job = Job.model_validate_json(raw)
            new = transition(job)
            if new is None:
                return unwatched(pipe, job)
            new = new.model_copy(update={"revision": job.revision + 1})
            keep_key = self._idempotency_key_to_end(pipe, job, new)
            pipe.multi()
            pipe.set(key, new.model_dump_json(), pxat=self._expiry_ms(new))
            if keep_key is not None:
                pipe.pexpireat(keep_key, cast(int, self._expiry_ms(new)))
            if new.status != job.status:
                pipe.zrem(self._status_key(job.status), job_id)
                pipe.zadd(self._status_key(new.status), {job_id: enqueued_at(new)})
            self._add_listers(pipe, job_id, listed_keys(new) - listed_keys(job))
            if (event := event_for(job, new)) is not None:
                self.outbox.append(pipe, event)
            return new

        return self.conn.transaction(change, key)

    def _idempotency_key_to_end(self, pipe: redis.client.Pipeline, job: Job, new: Job) -> str | None:
        """When ``job`` ends with this change and its Idempotency-Key still names it: that key,
        watched, to expire with the record (it had no expiry while the job was unfinished)."""
        if job.finished or not new.finished or new.idempotency_key is None:
            return None
        key = self.conn.idempotency_key(idempotency_scope(new.owner, new.idempotency_key))
        pipe.watch(key)
        raw = pipe.get(key)
        return key if raw and json.loads(raw).get("job_id") == new.id else None

    def delete(self, job_id: str) -> Job | None:
        key = self._key(job_id)

        def erase(pipe: redis.client.Pipeline) -> Job | None:
            # Run again when a writer changed the record between read and delete.
            raw = pipe.get(key)
            if not raw:
                return unwatched(pipe, None)
            job = Job.model_validate_json(raw)
            # Events appended later change the record too: this transaction runs again.
            pending = self.outbox.ids_of(job_id)
            pipe.multi()
            pipe.delete(key)
            for status in STATUSES:
                pipe.zrem(self._status_key(status), job_id)
            pipe.zrem(self._owner_key(job.owner), job_id)
            for object_key in listed_keys(job):
                pipe.srem(self._listers_key(object_key), job_id)
            if pending:
                self.outbox.remove(pipe, pending)
            return job

        return self.conn.transaction(erase, key)

    def ids_by_status(self, status: str) -> list[str]:
        return list(self.conn.call(self.client.zrange, self._status_key(status), 0, -1))

    def ranks(self, status: str, job_ids: Collection[str]) -> dict[str, int]:
        job_ids = list(job_ids)
        if not job_ids:
            return {}

        def run() -> list[int | None]:
            pipe = self.client.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.zrank(self._status_key(status), job_id)
            return pipe.execute()

        ranks = self.conn.run(run)
        return {job_id: rank for job_id, rank in zip(job_ids, ranks, strict=True) if rank is not None}

    def recent_ids(self, status: str, limit: int) -> list[str]:
        return list(self.conn.call(self.client.zrevrange, self._status_key(status), 0, max(limit - 1, 0)))

    def count_by_status(self) -> dict[str, int]:
        def run() -> dict[str, int]:
            pipe = self.client.pipeline(transaction=False)
            for status in STATUSES:
                pipe.zcard(self._status_key(status))
            return dict(zip(STATUSES, pipe.execute(), strict=True))

        return self.conn.run(run)

    def owned(
        self, owner: str | None, *, status: str | None, limit: int, before: tuple[float, str] | None
    ) -> list[Job]:
        found: list[Job] = []
        for chunk in self._owned_ids(self._owner_key(owner), before):
            for job in self.get_many(chunk):  # records expired or erased are skipped
                if status is None or job.status == status:
                    found.append(job)
                    if len(found) >= limit:
                        return found
        return found

    def _owned_ids(self, key: str, before: tuple[float, str] | None, chunk: int = 100) -> Iterator[list[str]]:
        """Ids of the owner index in (score, id) descending order after ``before``, in chunks.

        Members with equal scores come in descending id order from ZREVRANGEBYSCORE; a chunk that
        ends inside a group of equal scores is completed by reading that group alone, so paging by
        score never skips or repeats a member.
        """
        top = "+inf"
        if before is not None:
            ties = self.conn.call(self.client.zrangebyscore, key, before[0], before[0])
            yield sorted((i for i in ties if i < before[1]), reverse=True)
            top = f"({before[0]!r}"
        while True:
            rows = self.conn.call(
                self.client.zrevrangebyscore, key, top, "-inf", start=0, num=chunk, withscores=True
            )
            if not rows:
                return
            yield [member for member, _ in rows]
            last_id, last_score = rows[-1]
            ties = self.conn.call(self.client.zrangebyscore, key, last_score, last_score)
            yield sorted((i for i in ties if i < last_id), reverse=True)
            top = f"({last_score!r}"

    def _record_keys(self) -> list[str]:
        pattern = f"{self.conn.prefix}job:*"
        keys: list[str] = self.conn.call(lambda: list(self.client.scan_iter(match=pattern, count=500)))
        return keys

    def all_jobs(self) -> Iterator[Job]:
        keys = self._record_keys()
        for start in range(0, len(keys), 200):
            for raw in self.conn.call(self.client.mget, keys[start : start + 200]):
                if raw:
                    yield Job.model_validate_json(raw)

    def listed_by_others(self, keys: Collection[str], job_id: str) -> set[str]:
        keys = list(dict.fromkeys(keys))
        if not keys:
            return set()

        def run() -> set[str]:
            pipe = self.client.pipeline(transaction=False)
            for object_key in keys:
                pipe.smembers(self._listers_key(object_key))
            listers = {key: set(ids) - {job_id} for key, ids in zip(keys, pipe.execute(), strict=True)}
            candidates = sorted(set().union(*listers.values()))
            for candidate in candidates:
                pipe.exists(self._key(candidate))
            # Ids whose record has expired are skipped here and dropped by ``prune``.
            alive = {cid for cid, found in zip(candidates, pipe.execute(), strict=True) if found}
            return {key for key, ids in listers.items() if ids & alive}

        return self.conn.run(run)

    def prune(self) -> int:
        """Records expire by themselves (key expiry, from the job's end); this drops the ids of the
        records that are gone from the status, owner and lister indexes. The number of records
        forgotten (each had one status index entry)."""
        dropped = sum(self._forget_gone(self._status_key(status), ordered=True) for status in STATUSES)
        for pattern, ordered in (("owner:*", True), ("listed-by:*", False)):
            keys = self.conn.call(lambda p=pattern: list(self.client.scan_iter(match=self.conn.prefix + p)))
            for key in keys:
                self._forget_gone(key, ordered=ordered)
        return dropped

    def _forget_gone(self, index_key: str, *, ordered: bool) -> int:
        """Remove from the index (a sorted set when ``ordered``, else a set) the ids whose record
        is gone; how many were removed. A gone record never comes back (ids are never reused)."""
        if ordered:
            ids, remove = self.conn.call(self.client.zrange, index_key, 0, -1), self.client.zrem
        else:
            ids, remove = sorted(self.conn.call(self.client.smembers, index_key)), self.client.srem
        removed = 0
        for start in range(0, len(ids), 200):
            chunk = ids[start : start + 200]
            records = self.conn.call(self.client.mget, [self._key(i) for i in chunk])
            gone = [i for i, raw in zip(chunk, records, strict=True) if not raw]
            if gone:
                removed += int(self.conn.call(remove, index_key, *gone))
        return removed

    def migrate(self) -> None:
        """Rewrite what earlier versions left under ``RECORDS_VERSION``'s rules, once per Redis
        database (``records-version`` says it was done; concurrent runs write the same values)."""
        marker = f"{self.conn.prefix}records-version"
        if int(self.conn.call(self.client.get, marker) or 0) >= RECORDS_VERSION:
            return
        for key in self._record_keys():
            self._migrate_record(key)
        self.conn.call(self.client.set, marker, RECORDS_VERSION)

    def _migrate_record(self, key: str) -> None:
        """One record under this version's rules: its expiry, its status index entry scored by its
        enqueue time, its owner and lister entries, and no TTL on those index sets. Watched like
        ``apply``: a write that lands meanwhile makes it read the record again, never undone."""

        def rewrite(pipe: redis.client.Pipeline) -> None:
            raw = pipe.get(key)
            if not raw:
                return unwatched(pipe, None)
            job = Job.model_validate_json(raw)
            at = expires_at(job, self.ttl)
            pipe.multi()
            if at is None:
                pipe.persist(key)
            else:
                pipe.pexpireat(key, int(at * 1000))
            pipe.zadd(self._status_key(job.status), {job.id: enqueued_at(job)})
            owner_key = self._owner_key(job.owner)
            pipe.zadd(owner_key, {job.id: job.created_at.timestamp()})
            pipe.persist(owner_key)
            self._add_listers(pipe, job.id, listed_keys(job))
            for object_key in listed_keys(job):
                pipe.persist(self._listers_key(object_key))

        self.conn.transaction(rewrite, key)

    def ping(self) -> None:
        self.conn.call(self.client.ping)


class RedisIdempotencyKeys:
    """A key's record is a string key: the reservation's TTL, then no expiry while its job is
    unfinished (``confirm``), then the record's expiry from the job's end (set by
    ``RedisJobRecords.apply`` in the transaction that ends the job)."""

    def __init__(self, conn: RedisConnection) -> None:
        self.conn, self.client = conn, conn.client

    def _key(self, scope: str) -> str:
        return self.conn.idempotency_key(scope)

    def reserve(self, scope: str, record: IdempotencyRecord, ttl: int) -> IdempotencyRecord | None:
        key = self._key(scope)
        if self.conn.call(self.client.set, key, json.dumps(record), nx=True, ex=ttl):
            return None
        existing = self.get(scope)
        # Expired between SET and GET: try once more, then report the (new) holder.
        if existing is None and self.conn.call(self.client.set, key, json.dumps(record), nx=True, ex=ttl):
            return None
        return existing or record

    def get(self, scope: str) -> IdempotencyRecord | None:
        raw = self.conn.call(self.client.get, self._key(scope))
        return json.loads(raw) if raw else None

    def confirm(self, scope: str, ttl: int) -> None:
        key = self._key(scope)

        def extend(pipe: redis.client.Pipeline) -> None:
            # Run again when the key or its job changed meanwhile (the job ended).
            raw = pipe.get(key)
            if not raw:
                return unwatched(pipe, None)
            job_key = self.conn.job_key(json.loads(raw)["job_id"])
            pipe.watch(job_key)
            record = pipe.get(job_key)
            pipe.multi()
            if not record:  # erased already: the key lives its ttl, as before its job
                pipe.expire(key, ttl)
            elif (at := expires_at(Job.model_validate_json(record), ttl)) is None:
                pipe.persist(key)
            else:
                pipe.pexpireat(key, int(at * 1000))

        self.conn.transaction(extend, key)

    def release(self, scope: str, job_id: str) -> None:
        key = self._key(scope)

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

        self.conn.run(run)


#: The live workers and their heartbeats in one atomic step: every name in the set (KEYS[1]) whose
#: heartbeat key (ARGV[1] .. name) still exists, with its info; names whose key expired are removed.
_LIVE_WORKERS = """
local found = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local info = redis.call('GET', ARGV[1] .. name)
  if info then
    table.insert(found, name)
    table.insert(found, info)
  else
    redis.call('SREM', KEYS[1], name)
  end
end
return found
"""


#: Take the lease KEYS[1] for ARGV[1], or renew it when ARGV[1] holds it, for ARGV[2] ms.
_HOLD_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


class RedisWorkerRegistry:
    """Heartbeats are keys with a TTL (``worker:<name>``); a set of the names that heartbeated
    indexes them, so finding the live workers never scans the keyspace (which holds every job
    record: a SCAN per poll would grow with them)."""

    def __init__(self, conn: RedisConnection) -> None:
        self.conn, self.client = conn, conn.client
        self._names_key = f"{conn.prefix}workers"
        self._live = self.client.register_script(_LIVE_WORKERS)
        self._hold = self.client.register_script(_HOLD_LEASE)

    def heartbeat(self, name: str, info: WorkerInfo, ttl: float) -> None:
        def run() -> None:
            pipe = self.client.pipeline()  # atomic: a heartbeat key always has its name in the set
            pipe.set(f"{self.conn.prefix}worker:{name}", json.dumps(info), px=int(ttl * 1000))
            pipe.sadd(self._names_key, name)
            pipe.execute()

        self.conn.run(run)

    def live(self) -> dict[str, WorkerInfo]:
        flat = self.conn.call(self._live, keys=[self._names_key], args=[f"{self.conn.prefix}worker:"])
        return {name: json.loads(info) for name, info in zip(flat[::2], flat[1::2], strict=True)}

    def try_lock(self, name: str, ttl: float) -> bool:
        key = f"{self.conn.prefix}lock:{name}"
        return bool(self.conn.call(self.client.set, key, worker_name(), nx=True, px=int(ttl * 1000)))

    def hold(self, name: str, holder: str, ttl: float) -> bool:
        key = f"{self.conn.prefix}lease:{name}"
        return bool(self.conn.call(self._hold, keys=[key], args=[holder, int(ttl * 1000)]))

    def uptime(self) -> float | None:
        return float(self.conn.call(self.client.info, "server")["uptime_in_seconds"])


class RedisStageStatistics:
    def __init__(self, conn: RedisConnection) -> None:
        self.conn, self.client = conn, conn.client

    def observe(self, stage: str, seconds: float) -> None:
        def run() -> None:
            key = f"{self.conn.prefix}stage:{stage}"
            pipe = self.client.pipeline()
            for i, bound in enumerate((*STAGE_BUCKETS, float("inf"))):
                if seconds <= bound:
                    pipe.hincrby(key, f"b{i}", 1)
            pipe.hincrbyfloat(key, "sum", seconds)
            pipe.hincrby(key, "count", 1)
            pipe.sadd(f"{self.conn.prefix}stages", stage)
            pipe.execute()

        self.conn.run(run)

    def snapshot(self) -> dict[str, StageStats]:
        def run() -> dict[str, StageStats]:
            result: dict[str, StageStats] = {}
            for stage in sorted(cast(set[str], self.client.smembers(f"{self.conn.prefix}stages"))):
                raw = cast(dict[str, str], self.client.hgetall(f"{self.conn.prefix}stage:{stage}"))
                stats = empty_stats()
                stats["buckets"] = [int(raw.get(f"b{i}", 0)) for i in range(len(STAGE_BUCKETS) + 1)]
                stats["sum"], stats["count"] = float(raw.get("sum", 0)), int(raw.get("count", 0))
                result[stage] = stats
            return result

        return self.conn.run(run)


class RedisEventCounters:
    def __init__(self, conn: RedisConnection) -> None:
        self.conn, self.client = conn, conn.client

    def _key(self, name: str) -> str:
        return f"{self.conn.prefix}count:{name}"

    def add(self, name: str, label: str) -> None:
        self.conn.call(self.client.hincrby, self._key(name), label, 1)

    def snapshot(self, name: str) -> dict[str, int]:
        return {label: int(n) for label, n in self.conn.call(self.client.hgetall, self._key(name)).items()}


class RedisRateWindows:
    """One counter per key and window (INCR), expiring a second after its window ends; the window
    is read from Redis's clock, so API replicas with skewed clocks share it."""

    def __init__(self, conn: RedisConnection) -> None:
        self.conn, self.client = conn, conn.client

    def hit(self, key: str, window_s: int) -> tuple[int, float]:
        def run() -> tuple[int, float]:
            seconds, micros = self.client.time()
            index, left = window_of(seconds + micros / 1e6, window_s)
            counter = f"{self.conn.prefix}rate:{window_s}:{key}:{index}"
            pipe = self.client.pipeline()
            pipe.incr(counter)
            pipe.expire(counter, window_s + 1)
            count, _ = pipe.execute()
            return int(count), left

        return self.conn.run(run)


def open_redis_stores(url: str, *, ttl: int, prefix: str = "qalign:") -> JobStores:
    """The stores over one connection pool (nothing connects until the first call)."""
    conn = RedisConnection(url, prefix=prefix)
    outbox = RedisOutbox(conn)
    return JobStores(
        records=RedisJobRecords(conn, ttl=ttl, outbox=outbox),
        idempotency=RedisIdempotencyKeys(conn),
        workers=RedisWorkerRegistry(conn),
        stages=RedisStageStatistics(conn),
        counters=RedisEventCounters(conn),
        outbox=outbox,
        rates=RedisRateWindows(conn),
        close=conn.close,
    )
