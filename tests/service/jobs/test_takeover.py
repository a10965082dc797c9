"""The takeover scan: running jobs of workers without a heartbeat are republished, once per attempt."""

from __future__ import annotations

from testkit import FakeClock

from service.backends.sqlite_records import MemoryWorkerRegistry, open_sqlite_stores
from service.jobs import Job, new_job_id, utcnow
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
    assert [(r.job_id, r.attempt, r.holder) for r in orphaned(stores.records, workers)] == [
        (lost.id, 1, "dead:2")
    ]
    assert kept.id not in [r.job_id for r in orphaned(stores.records, workers)]
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


def queued(stores) -> Job:
    job = Job(
        id=new_job_id(), created_at=utcnow(), structure_key="inputs/" + "0" * 64,
        appearance_keys=["inputs/" + "1" * 64],
    )  # fmt: skip
    stores.records.create(job)
    return job


def test_queued_jobs_whose_message_is_stranded_are_republished_after_the_bound(tmp_path):
    """A queued job's message waiting in the queue, or delivered less than STRANDED_MESSAGE_AFTER ago,
    is left alone; one delivered longer ago and never claimed (its worker died), or in the broker
    nowhere for that long, is published again, once per bound across watchers."""
    from service.jobs.lifecycle import BrokerView

    clock = FakeClock()
    stores = open_sqlite_stores(tmp_path / "jobs.sqlite3", ttl=3600)
    workers = RedisLikeRegistry(clock)
    view = BrokerView()
    published: list[str] = []
    watch = TakeoverWatch(
        stores.records, workers, published.append, interval=1, heartbeat_ttl=5, clock=clock,
        broker=lambda: view, stranded_after=10, wall_clock=clock,
    )  # fmt: skip
    waiting, delivered, missing = queued(stores), queued(stores), queued(stores)
    view = BrokerView(frozenset({waiting.id}), {delivered.id: clock()})
    clock.advance(5)
    assert watch.scan() == [], "just started: the store may have forgotten live heartbeats"
    clock.advance(5)
    assert watch.scan() == [delivered.id], "delivered 10 s ago and still queued: its worker died"
    view = BrokerView(frozenset({waiting.id, delivered.id}), {delivered.id: clock() - 10})
    clock.advance(5)
    assert watch.scan() == [], "missing from the broker for 5 s only"
    clock.advance(5)
    assert watch.scan() == [missing.id], "missing from the broker for 10 s"
    clock.advance(3)
    assert watch.scan() == [], "the lease keeps a second watcher from publishing it again"
    assert published == [delivered.id, missing.id]

    view = BrokerView(frozenset({waiting.id, delivered.id, missing.id}), {delivered.id: clock() - 20})
    clock.advance(20)
    assert watch.scan() == [], "republished messages wait in the queue again"
    stores.records.apply(delivered.id, lambda j: j.model_copy(update={"status": "running", "worker": "w:1"}))
    workers.heartbeat("w:1", {"job": delivered.id}, ttl=600)
    view = BrokerView(frozenset({waiting.id}), {})  # delivered's message taken, missing's lost again
    clock.advance(1)
    assert watch.scan() == [], "the broker is read at most every STRANDED_MESSAGE_AFTER / 4"
    clock.advance(2)
    assert watch.scan() == [], "missing from the broker since now"
    clock.advance(10)
    assert watch.scan() == [missing.id]
    assert published == [delivered.id, missing.id, missing.id], "a claimed job is not republished"
    stores.close()
