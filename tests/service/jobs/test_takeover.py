"""The takeover scan: running jobs of workers without a heartbeat are republished, once per attempt."""

from __future__ import annotations

from testkit import FakeClock

from service.jobs import Job, new_job_id, utcnow
from service.jobs.sqlite_store import MemoryWorkerRegistry, open_sqlite_stores
from service.jobs.takeover import TakeoverWatch, orphaned


class RedisLikeRegistry(MemoryWorkerRegistry):
    """Memory heartbeats plus shared leases and a store uptime, as the Redis registry has."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.leases: dict[str, float] = {}
        self.started = clock()

    def try_lock(self, name: str, ttl: float) -> bool:
        if self.leases.get(name, 0) > self.clock():
            return False
        self.leases[name] = self.clock() + ttl
        return True

    def uptime(self) -> float | None:
        return self.clock() - self.started


def running(stores, worker: str, attempts: int = 1) -> Job:
    job = Job(
        id=new_job_id(), created_at=utcnow(), structure_key="inputs/" + "0" * 64,
        appearance_keys=["inputs/" + "1" * 64], status="running", worker=worker, attempts=attempts,
    )  # fmt: skip
    stores.records.create(job)
    return job


def test_only_jobs_of_workers_without_a_heartbeat_are_orphaned(tmp_path):
    clock = FakeClock()
    stores = open_sqlite_stores(tmp_path / "jobs.sqlite3", ttl=3600)
    workers = RedisLikeRegistry(clock)
    workers.heartbeat("alive:1", {"job": None}, ttl=5)
    kept, lost = running(stores, "alive:1"), running(stores, "dead:2", attempts=1)
    assert orphaned(stores.records, workers) == [(lost.id, 1, "dead:2")]
    assert kept.id not in [job_id for job_id, *_ in orphaned(stores.records, workers)]
    stores.close()


def test_the_watch_republishes_once_per_lost_attempt_and_only_when_heartbeats_can_be_trusted(tmp_path):
    clock = FakeClock()
    stores = open_sqlite_stores(tmp_path / "jobs.sqlite3", ttl=3600)
    workers = RedisLikeRegistry(clock)
    published: list[str] = []
    watch = TakeoverWatch(stores.records, workers, published.append, interval=1, heartbeat_ttl=5, clock=clock)
    lost = running(stores, "dead:2")

    assert watch.scan() == [], "just started: the store may have forgotten live heartbeats"
    clock.advance(5)
    assert watch.scan() == [lost.id] and published == [lost.id]
    clock.advance(1)
    assert watch.scan() == [], "the lease keeps a second watcher (or scan) from publishing it again"
    stores.records.apply(lost.id, lambda j: j.model_copy(update={"worker": "dead:3", "attempts": 2}))
    assert watch.scan() == [lost.id], "the next attempt's holder was lost too"

    workers.started = clock()  # the store restarted: no scan until heartbeats had time to come back
    clock.advance(61)
    stores.records.apply(lost.id, lambda j: j.model_copy(update={"worker": "dead:4", "attempts": 3}))
    workers.started = clock()
    assert watch.scan() == []
    stores.close()
