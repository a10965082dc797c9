"""Redis implementations of the job-runtime stores (distributed mode: shared by every process).

Records are JSON strings with a TTL; one sorted set per status (score = time entered) indexes them,
and one per owner (score = created_at) lists an API key's jobs newest first. One set per shared
object (an input or a cached inversion) holds the ids of the jobs that list it, for erasure.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Iterator

import redis

from service.jobs.model import STATUSES, TERMINAL, Job, worker_name
from service.jobs.store import (
    STAGE_BUCKETS,
    AdmissionLimits,
    AdmissionRefused,
    JobStores,
    StoreUnavailable,
    empty_stats,
    listed_keys,
)
from service.jobs.transitions import Mutation

_ERRORS = (redis.RedisError, OSError)


class RedisConnection:
    """One client and key prefix, shared by the four stores; every call maps errors to StoreUnavailable."""

    def __init__(self, url: str, *, prefix: str = "qalign:") -> None:
        self.client = redis.Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30, decode_responses=True
        )
        self.prefix = prefix

    def call(self, fn: Callable, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _ERRORS as exc:
            raise StoreUnavailable(f"Redis is unreachable: {exc}") from exc

    def close(self) -> None:
        self.client.close()


#: Admission in one atomic step: count the queued jobs (KEYS[1]) and, when ARGV[2] >= 0, the
#: owner's unfinished ones (members of KEYS[1] and KEYS[2] in the owner index KEYS[3]); refuse
#: with {'queue'|'owner', count}, else write what ``create`` writes and return {'ok', 0}.
#: KEYS[4] the record, KEYS[5..] the lister sets; ARGV: max queued, max per owner (-1: none),
#: record JSON, TTL, job id, now, created_at.
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
local ttl = tonumber(ARGV[4])
redis.call('SET', KEYS[4], ARGV[3], 'EX', ttl)
redis.call('ZADD', KEYS[1], ARGV[6], ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[5])
redis.call('EXPIRE', KEYS[3], 2 * ttl)
for i = 5, #KEYS do
  redis.call('SADD', KEYS[i], ARGV[5])
  redis.call('EXPIRE', KEYS[i], 2 * ttl)
end
return {'ok', 0}
"""


class RedisJobRecords:
    def __init__(self, conn: RedisConnection, *, ttl: int) -> None:
        self.conn, self.client, self.ttl = conn, conn.client, ttl
        self._admit = self.client.register_script(_ADMIT)

    def _key(self, job_id: str) -> str:
        return f"{self.conn.prefix}job:{job_id}"

    def _status_key(self, status: str) -> str:
        return f"{self.conn.prefix}status:{status}"

    def _owner_key(self, owner: str | None) -> str:
        return f"{self.conn.prefix}owner:{json.dumps(owner)}"  # "alice" or null: no name can collide

    def _listers_key(self, object_key: str) -> str:
        return f"{self.conn.prefix}listed-by:{object_key}"

    def _add_listers(self, pipe: redis.client.Pipeline, job_id: str, object_keys: set[str]) -> None:
        """Record that ``job_id`` lists ``object_keys``. The sets outlive their newest member's
        record (it lives a TTL from its last change, and a job ends well within a TTL of its
        creation); ids of expired records are dropped when read."""
        for object_key in object_keys:
            pipe.sadd(self._listers_key(object_key), job_id)
            pipe.expire(self._listers_key(object_key), 2 * self.ttl)

    def create(self, job: Job) -> None:
        def run() -> None:
            pipe = self.client.pipeline()
            pipe.set(self._key(job.id), job.model_dump_json(), ex=self.ttl)
            pipe.zadd(self._status_key(job.status), {job.id: time.time()})
            owner_key = self._owner_key(job.owner)
            pipe.zadd(owner_key, {job.id: job.created_at.timestamp()})
            # The index outlives the owner's newest record by a TTL; older entries are pruned.
            pipe.expire(owner_key, 2 * self.ttl)
            self._add_listers(pipe, job.id, listed_keys(job))
            pipe.execute()

        self.conn.call(run)

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
            self.ttl,
            job.id,
            repr(time.time()),
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

    def modify(self, job_id: str, change: Mutation) -> Job | None:
        key = self._key(job_id)

        def run() -> Job | None:
            with self.client.pipeline() as pipe:
                while True:  # optimistic: retried when another writer changed the record meanwhile
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
                        new = new.model_copy(update={"revision": job.revision + 1})
                        pipe.multi()
                        pipe.set(key, new.model_dump_json(), ex=self.ttl)
                        if new.status != job.status:
                            pipe.zrem(self._status_key(job.status), job_id)
                            pipe.zadd(self._status_key(new.status), {job_id: time.time()})
                        self._add_listers(pipe, job_id, listed_keys(new) - listed_keys(job))
                        pipe.execute()
                        return new
                    except redis.WatchError:
                        continue

        return self.conn.call(run)

    def delete(self, job_id: str) -> Job | None:
        key = self._key(job_id)

        def run() -> Job | None:
            with self.client.pipeline() as pipe:
                while True:  # retried when a writer changed the record between read and delete
                    try:
                        pipe.watch(key)
                        raw = pipe.get(key)
                        if not raw:
                            pipe.unwatch()
                            return None
                        job = Job.model_validate_json(raw)
                        pipe.multi()
                        pipe.delete(key)
                        for status in STATUSES:
                            pipe.zrem(self._status_key(status), job_id)
                        pipe.zrem(self._owner_key(job.owner), job_id)
                        for object_key in listed_keys(job):
                            pipe.srem(self._listers_key(object_key), job_id)
                        pipe.execute()
                        return job
                    except redis.WatchError:
                        continue

        return self.conn.call(run)

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

        ranks = self.conn.call(run)
        return {job_id: rank for job_id, rank in zip(job_ids, ranks, strict=True) if rank is not None}

    def recent_ids(self, status: str, limit: int) -> list[str]:
        return list(self.conn.call(self.client.zrevrange, self._status_key(status), 0, max(limit - 1, 0)))

    def count_by_status(self) -> dict[str, int]:
        def run() -> dict[str, int]:
            pipe = self.client.pipeline()
            for status in STATUSES:
                # Terminal records expire with their TTL; forget their ids in the index as well.
                if status in TERMINAL:
                    pipe.zremrangebyscore(self._status_key(status), "-inf", time.time() - self.ttl)
                pipe.zcard(self._status_key(status))
            replies = iter(pipe.execute())
            counts = {}
            for status in STATUSES:
                if status in TERMINAL:
                    next(replies)  # the pruning reply
                counts[status] = next(replies)
            return counts

        return self.conn.call(run)

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

    def all_jobs(self) -> Iterator[Job]:
        pattern = f"{self.conn.prefix}job:*"
        keys = self.conn.call(lambda: list(self.client.scan_iter(match=pattern, count=500)))
        for start in range(0, len(keys), 200):
            for raw in self.conn.call(self.client.mget, keys[start : start + 200]):
                if raw:
                    yield Job.model_validate_json(raw)

    def listed_by_others(self, keys: Collection[str], job_id: str) -> set[str]:
        keys = list(dict.fromkeys(keys))
        if not keys:
            return set()
        self._index_listers_once()

        def run() -> set[str]:
            pipe = self.client.pipeline(transaction=False)
            for object_key in keys:
                pipe.smembers(self._listers_key(object_key))
            listers = {key: set(ids) - {job_id} for key, ids in zip(keys, pipe.execute(), strict=True)}
            candidates = sorted(set().union(*listers.values()))
            for candidate in candidates:
                pipe.exists(self._key(candidate))
            alive = {cid for cid, found in zip(candidates, pipe.execute(), strict=True) if found}
            for object_key, ids in listers.items():  # ids whose record expired: forget them
                if ids - alive:
                    pipe.srem(self._listers_key(object_key), *(ids - alive))
            pipe.execute()
            return {key for key, ids in listers.items() if ids & alive}

        return self.conn.call(run)

    def _index_listers_once(self) -> None:
        """Records written before the listers index existed are added to it once per Redis
        database (a marker key says it was done); until then every lookup runs this first."""
        marker = f"{self.conn.prefix}listed-by-indexed"
        if self.conn.call(self.client.exists, marker):
            return
        for job in self.all_jobs():  # idempotent: concurrent indexers add the same members
            self.conn.call(self._add_listers_now, job)
        self.conn.call(self.client.set, marker, str(time.time()))

    def _add_listers_now(self, job: Job) -> None:
        pipe = self.client.pipeline(transaction=False)
        self._add_listers(pipe, job.id, listed_keys(job))
        pipe.execute()

    def prune(self) -> int:
        """Record keys expire by TTL; drop index entries whose record has expired."""
        dropped = 0
        for status in STATUSES:
            ids = self.ids_by_status(status)
            for start in range(0, len(ids), 200):
                chunk = ids[start : start + 200]
                exists = self.conn.call(self.client.mget, [self._key(i) for i in chunk])
                gone = [i for i, raw in zip(chunk, exists, strict=True) if not raw]
                if gone:
                    dropped += int(self.conn.call(self.client.zrem, self._status_key(status), *gone))
        owner_keys = self.conn.call(lambda: list(self.client.scan_iter(match=f"{self.conn.prefix}owner:*")))
        for key in owner_keys:  # owner indexes: entries older than any live record could be
            self.conn.call(self.client.zremrangebyscore, key, "-inf", time.time() - 2 * self.ttl)
        return dropped

    def ping(self) -> None:
        self.conn.call(self.client.ping)


class RedisIdempotencyKeys:
    def __init__(self, conn: RedisConnection) -> None:
        self.conn, self.client = conn, conn.client

    def _key(self, scope: str) -> str:
        return f"{self.conn.prefix}idem:{scope}"

    def reserve(self, scope: str, record: dict, ttl: int) -> dict | None:
        key = self._key(scope)
        if self.conn.call(self.client.set, key, json.dumps(record), nx=True, ex=ttl):
            return None
        existing = self.get(scope)
        # Expired between SET and GET: try once more, then report the (new) holder.
        if existing is None and self.conn.call(self.client.set, key, json.dumps(record), nx=True, ex=ttl):
            return None
        return existing or record

    def get(self, scope: str) -> dict | None:
        raw = self.conn.call(self.client.get, self._key(scope))
        return json.loads(raw) if raw else None

    def confirm(self, scope: str, ttl: int) -> None:
        self.conn.call(self.client.expire, self._key(scope), ttl)

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

        self.conn.call(run)


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


class RedisWorkerRegistry:
    """Heartbeats are keys with a TTL (``worker:<name>``); a set of the names that heartbeated
    indexes them, so finding the live workers never scans the keyspace (which holds every job
    record: a SCAN per poll would grow with them)."""

    def __init__(self, conn: RedisConnection) -> None:
        self.conn, self.client = conn, conn.client
        self._names_key = f"{conn.prefix}workers"
        self._live = self.client.register_script(_LIVE_WORKERS)

    def heartbeat(self, name: str, info: dict, ttl: float) -> None:
        def run() -> None:
            pipe = self.client.pipeline()  # atomic: a heartbeat key always has its name in the set
            pipe.set(f"{self.conn.prefix}worker:{name}", json.dumps(info), px=int(ttl * 1000))
            pipe.sadd(self._names_key, name)
            pipe.execute()

        self.conn.call(run)

    def live(self) -> dict[str, dict]:
        flat = self.conn.call(self._live, keys=[self._names_key], args=[f"{self.conn.prefix}worker:"])
        return {name: json.loads(info) for name, info in zip(flat[::2], flat[1::2], strict=True)}

    def try_lock(self, name: str, ttl: float) -> bool:
        key = f"{self.conn.prefix}lock:{name}"
        return bool(self.conn.call(self.client.set, key, worker_name(), nx=True, px=int(ttl * 1000)))

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

        self.conn.call(run)

    def snapshot(self) -> dict[str, dict]:
        def run() -> dict[str, dict]:
            result = {}
            for stage in sorted(self.client.smembers(f"{self.conn.prefix}stages")):
                raw = self.client.hgetall(f"{self.conn.prefix}stage:{stage}")
                stats = empty_stats()
                stats["buckets"] = [int(raw.get(f"b{i}", 0)) for i in range(len(STAGE_BUCKETS) + 1)]
                stats["sum"], stats["count"] = float(raw.get("sum", 0)), int(raw.get("count", 0))
                result[stage] = stats
            return result

        return self.conn.call(run)


class RedisEventCounters:
    def __init__(self, conn: RedisConnection) -> None:
        self.conn, self.client = conn, conn.client

    def _key(self, name: str) -> str:
        return f"{self.conn.prefix}count:{name}"

    def add(self, name: str, label: str) -> None:
        self.conn.call(self.client.hincrby, self._key(name), label, 1)

    def snapshot(self, name: str) -> dict[str, int]:
        return {label: int(n) for label, n in self.conn.call(self.client.hgetall, self._key(name)).items()}


def open_redis_stores(url: str, *, ttl: int, prefix: str = "qalign:") -> JobStores:
    """The stores over one connection pool (nothing connects until the first call)."""
    conn = RedisConnection(url, prefix=prefix)
    return JobStores(
        records=RedisJobRecords(conn, ttl=ttl),
        idempotency=RedisIdempotencyKeys(conn),
        workers=RedisWorkerRegistry(conn),
        stages=RedisStageStatistics(conn),
        counters=RedisEventCounters(conn),
        close=conn.close,
    )
