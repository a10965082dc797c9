"""The durable outbox, on both stores: every status change into running or a terminal status is
written with its event in one atomic store operation (``JobRecords.apply``), every end of a job
announces exactly one terminal event, erasure removes a job's events; and the one drainer that
drains it (``OutboxDrainer``): order per job, at least once, one drainer at a time, handover
when the drainer dies, drain at stop."""

from __future__ import annotations

import threading
import time

import pytest
from net_helpers import LOOPBACK_ONLY, namespace_launcher
from svc_helpers import claim, new_job
from testkit import wait_for

from service.backends.blobs import LocalBlobStore
from service.backends.redis_records import open_redis_stores
from service.jobs import JobStores, lifecycle, transitions
from service.jobs.embedded import EmbeddedRunner
from service.jobs.events import OutboxEvent
from service.jobs.outbox import OutboxDrainer

# Names non-loopback addresses (targets the checks must refuse or never reach): every test
# here runs inside a loopback-only network namespace (tests/net_helpers.py).
pytestmark = LOOPBACK_ONLY
test_in_loopback_only_namespace = namespace_launcher(__file__)

HOOK = "https://example.com/hook"


def announced(stores: JobStores) -> list[tuple[str, str]]:
    return [(event.job_id, event.status) for event in stores.outbox.pending(1000)]


def running(stores: JobStores, **fields):
    job = new_job(stores, webhook_url=HOOK, **fields)
    return claim(stores, job.id, "w:1", max_attempts=3)


# ---------------------------------------------------------------- every end: one terminal event
def _succeed(stores, job):
    return stores.records.apply(job.id, lambda j: transitions.succeed(j, results=[], params={}, metrics={}))


def _fail(stores, job):
    return stores.records.apply(job.id, lambda j: transitions.fail(j, "internal_error", "boom"))


def _soft_time_limit(stores, job):
    return stores.records.apply(job.id, lambda j: transitions.fail(j, "time_limit", "too long"))


def _cancel_running(stores, job):
    stores.records.apply(job.id, lifecycle.cancel)  # flagged: no status change yet
    return stores.records.apply(job.id, transitions.canceled)  # the runner stops at its next step


def _out_of_attempts_at_takeover(stores, job):
    stores.records.apply(job.id, lambda j: j.model_copy(update={"worker": "gone:1", "attempts": 3}))
    return stores.records.apply(
        job.id, lambda j: lifecycle.claim(j, worker="w:2", live_workers={}, max_attempts=3)
    )


def _out_of_attempts_at_requeue(stores, job):
    stores.records.apply(job.id, lambda j: j.model_copy(update={"attempts": 3}))
    return stores.records.apply(job.id, lambda j: lifecycle.requeue(j, "the service stopped", 3))


@pytest.mark.parametrize(
    "end,status",
    [
        (_succeed, "succeeded"),
        (_fail, "failed"),
        (_soft_time_limit, "failed"),
        (_cancel_running, "canceled"),
        (_out_of_attempts_at_takeover, "failed"),
        (_out_of_attempts_at_requeue, "failed"),
    ],
)
def test_every_end_of_a_running_job_announces_exactly_one_terminal_event(stores, end, status):
    job = running(stores)
    final = end(stores, job)
    assert final.status == status
    for retry in (_succeed, _fail, _cancel_running):  # late writers: a finished job stays finished
        retry(stores, job)
    assert announced(stores) == [(job.id, "running"), (job.id, status)]
    (terminal,) = [e for e in stores.outbox.pending(10) if e.kind == "completed"]
    assert terminal.id == f"job_{job.id}_{status}" and terminal.job.status == status
    assert terminal.job.revision == final.revision, "the event carries the record as it was changed"


def test_a_queued_job_canceled_or_failed_before_running_announces_its_end(stores):
    canceled, unqueued = new_job(stores, webhook_url=HOOK), new_job(stores, webhook_url=HOOK)
    stores.records.apply(canceled.id, lifecycle.cancel)
    stores.records.apply(unqueued.id, lambda j: transitions.fail(j, "not_enqueued", "broker down"))
    assert announced(stores) == [(canceled.id, "canceled"), (unqueued.id, "failed")]


def test_model_load_failure_and_recovery_out_of_attempts_announce_their_ends(tmp_path, embedded_settings):
    """The embedded paths that used to end a job without its terminal webhook."""
    from service.backends.sqlite_records import open_sqlite_stores

    stores = open_sqlite_stores(tmp_path / "jobs.sqlite3", ttl=3600)
    settings = embedded_settings.model_copy(update={"max_attempts": 1})
    runner = EmbeddedRunner(settings, stores, LocalBlobStore(tmp_path / "objects"))
    try:
        left_running = new_job(stores, webhook_url=HOOK)
        claim(stores, left_running.id, "embedded:gone-host:1", max_attempts=1)
        runner.recover()  # its one attempt is spent: failed, not requeued
        assert stores.records.get(left_running.id).status == "failed"
        unloaded = new_job(stores, webhook_url=HOOK)
        runner.load_error = "no such model"
        runner._fail_unloaded(unloaded.id)
        assert stores.records.get(unloaded.id).error.type == "model_load_error"
        assert announced(stores) == [
            (left_running.id, "running"),
            (left_running.id, "failed"),
            (unloaded.id, "failed"),
        ]
    finally:
        stores.close()


def test_only_status_changes_a_webhook_wants_are_announced(stores):
    silent = running(stores, webhook_events=["completed"])
    stores.records.apply(silent.id, lambda j: transitions.progress(j, "denoising", 0.5))
    no_hook = new_job(stores)
    claim(stores, no_hook.id, "w:1")
    _succeed(stores, silent)
    _succeed(stores, no_hook)
    assert announced(stores) == [(silent.id, "succeeded")]


def test_a_requeued_job_announces_nothing_until_it_runs_again(stores):
    job = running(stores)
    stores.records.apply(job.id, lambda j: lifecycle.requeue(j, "shutdown", 3, refund=True))
    assert announced(stores) == [(job.id, "running")]


def test_a_failing_transition_writes_neither_record_nor_event(stores):
    job = running(stores)
    for event in stores.outbox.pending(10):
        stores.outbox.ack(event.id)

    def broken(j):
        raise RuntimeError("bug in a transition")

    with pytest.raises(RuntimeError):
        stores.records.apply(job.id, broken)
    assert stores.records.get(job.id).status == "running" and announced(stores) == []


def test_concurrent_ends_write_one_terminal_event(stores):
    job = running(stores)
    barrier = threading.Barrier(8)

    def race(i):
        barrier.wait()
        (_succeed if i % 2 else _fail)(stores, job)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    terminal = [status for _, status in announced(stores) if status != "running"]
    assert terminal == [stores.records.get(job.id).status]


def test_each_run_of_a_job_announces_its_start_with_its_own_id(stores):
    """A requeued (or taken-over) job that runs again sends a second ``running`` event with a new
    webhook-id, so a receiver that drops repeated ids does not drop it; the first one stays."""
    job = running(stores)
    stores.records.apply(job.id, lambda j: lifecycle.requeue(j, "shutdown", 3, refund=True))
    claim(stores, job.id, "w:2", max_attempts=3)  # the same attempt number again (refunded)
    stores.records.apply(job.id, lambda j: j.model_copy(update={"worker": "gone:1"}))
    claim(stores, job.id, "w:3", max_attempts=3)  # taken over from a lost worker
    final = _succeed(stores, job)
    events = stores.outbox.pending(10)
    assert [e.status for e in events] == ["running", "running", "running", "succeeded"]
    ids = [e.id for e in events]
    assert len(set(ids)) == 4, ids
    assert ids[-1] == f"job_{job.id}_succeeded"
    assert ids[:3] == [f"job_{job.id}_running_{e.job.revision}" for e in events[:3]]
    assert [e.job.worker for e in events[:3]] == ["w:1", "w:2", "w:3"]
    assert events[-1].job.revision == final.revision


def test_erasure_removes_the_jobs_events(stores):
    job = running(stores)
    stores.records.apply(job.id, lambda j: lifecycle.requeue(j, "shutdown", 3))
    claim(stores, job.id, "w:2", max_attempts=3)
    _succeed(stores, job)
    other = running(stores)
    stores.records.delete(job.id)
    assert announced(stores) == [(other.id, "running")] and stores.outbox.count() == 1
    stores.records.delete(other.id)
    assert stores.outbox.count() == 0


def test_events_survive_reopening_the_store(tmp_path):
    from service.backends.sqlite_records import open_sqlite_stores

    stores = open_sqlite_stores(tmp_path / "jobs.sqlite3", ttl=3600)
    job = running(stores)
    stores.close()
    reopened = open_sqlite_stores(tmp_path / "jobs.sqlite3", ttl=3600)
    try:
        assert announced(reopened) == [(job.id, "running")]
    finally:
        reopened.close()


def test_redis_outbox_order_is_append_order_whatever_the_writers_clocks(redis_url, monkeypatch):
    """Several hosts append to one Redis outbox; their clocks disagree (here: every event is
    stamped an hour before the previous one). The order is the order Redis took the writes in."""
    from datetime import timedelta

    import service.jobs.events as events_module
    from service.jobs.model import new_job_id, utcnow

    prefix = f"t{new_job_id()}:"
    host_a = open_redis_stores(redis_url, ttl=3600, prefix=prefix)
    host_b = open_redis_stores(redis_url, ttl=3600, prefix=prefix)
    start, stamps = utcnow(), []

    def backwards():
        stamps.append(start - timedelta(hours=len(stamps)))
        return stamps[-1]

    monkeypatch.setattr(events_module, "utcnow", backwards)
    try:
        expected = []
        for i in range(6):
            stores = (host_a, host_b)[i % 2]
            job = running(stores)
            expected.append((job.id, "running"))
            if i % 3 == 0:
                _succeed(stores, job)
                expected.append((job.id, "succeeded"))
        assert [e.at for e in host_a.outbox.pending(100)] == stamps, "stamped by a clock going back"
        assert announced(host_a) == expected == announced(host_b)
        host_a.outbox.ack(host_a.outbox.pending(1)[0].id)
        late = running(host_b)
        assert announced(host_a) == [*expected[1:], (late.id, "running")]
    finally:
        host_a.close()
        host_b.close()


def test_redis_outbox_events_stamped_by_time_before_the_sequence_go_first(redis_url):
    """An outbox written by the version that scored events by their time keeps its order: the
    sequence starts above the newest such score."""
    from service.jobs.model import new_job_id

    stores = open_redis_stores(redis_url, ttl=3600, prefix=f"t{new_job_id()}:")
    try:
        old = running(stores)
        (event,) = stores.outbox.pending(1)
        client, prefix = stores.outbox.client, stores.outbox.conn.prefix
        client.delete(f"{prefix}outbox:seq")
        client.zadd(f"{prefix}outbox", {event.id: event.at.timestamp()})  # as the earlier version did
        new = running(stores)
        assert announced(stores) == [(old.id, "running"), (new.id, "running")]
    finally:
        stores.close()


# ---------------------------------------------------------------- the drainer
class Sink:
    """Records what it is given; ``gate`` (when set) holds every send until released;
    ``fail_at_stop`` returns False when the drainer is stopping (a cut-short delivery)."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.sent: list[tuple[str, str]] = []
        self.gate = gate
        self.lock = threading.Lock()

    def send(self, event: OutboxEvent, stopping: threading.Event) -> bool:
        while self.gate is not None and not self.gate.is_set():
            if stopping.wait(0.02):
                return False
        with self.lock:
            self.sent.append((event.job_id, event.status))
        return True


def test_the_drainer_delivers_each_jobs_events_in_order_and_empties_the_outbox(stores):
    jobs = [running(stores) for _ in range(5)]
    for job in jobs:
        _succeed(stores, job)
    sink = Sink()
    drainer = OutboxDrainer(stores, sink, name="api:1", poll_s=0.01, max_workers=3).start()
    try:
        wait_for(lambda: stores.outbox.count() == 0 and drainer.idle(), timeout=30)
    finally:
        drainer.stop(drain_s=5)
    assert sorted(sink.sent) == sorted([(j.id, s) for j in jobs for s in ("running", "succeeded")])
    for job in jobs:
        assert [s for i, s in sink.sent if i == job.id] == ["running", "succeeded"]


def test_stop_drains_what_it_can_and_leaves_the_rest_for_the_next_start(stores):
    job = running(stores)
    _succeed(stores, job)
    stuck = Sink(gate=threading.Event())  # the receiver never answers
    first = OutboxDrainer(stores, stuck, name="api:1", poll_s=0.01, lease_s=0.5).start()
    wait_for(lambda: not first.idle(), timeout=30)
    first.stop(drain_s=0.2)
    assert stuck.sent == [] and announced(stores) == [(job.id, "running"), (job.id, "succeeded")]
    sink = Sink()
    second = OutboxDrainer(stores, sink, name="api:1", poll_s=0.01).start()
    try:
        wait_for(lambda: stores.outbox.count() == 0 and second.idle(), timeout=30)
    finally:
        second.stop(drain_s=5)
    assert sink.sent == [(job.id, "running"), (job.id, "succeeded")]


#: The lease in the handover test: long enough that b's first look surely falls within a's lease
#: on a busy machine, short enough that the takeover test stays quick.
LEASE_S = 8.0


def test_one_drainer_at_a_time_and_another_takes_over_when_it_dies(redis_url):
    """Two API replicas share the outbox in Redis: only the lease holder delivers; when it dies
    (here: stops renewing its lease with an event in hand, never acknowledged), the other one
    takes over after the lease and delivers the event again (at least once, same webhook-id)."""
    from service.jobs.model import new_job_id

    prefix = f"t{new_job_id()}:"
    stores_a = open_redis_stores(redis_url, ttl=3600, prefix=prefix)
    stores_b = open_redis_stores(redis_url, ttl=3600, prefix=prefix)
    try:
        job = running(stores_a)
        dying = Sink(gate=threading.Event())
        a = OutboxDrainer(stores_a, dying, name="api:a", poll_s=0.01, lease_s=LEASE_S)
        assert a.drain_once() == 1, "a holds the lease and has the event in hand"
        b_sink = Sink()
        b = OutboxDrainer(stores_b, b_sink, name="api:b", poll_s=0.01, lease_s=LEASE_S)
        assert b.drain_once() is None, "b does not drain while a holds the lease"
        # a dies: it stops renewing, and its delivery never completes.
        stopping_since = time.monotonic()
        b.stop(drain_s=600)
        assert time.monotonic() - stopping_since < 60, "a replica without the lease stops at once"
        b = OutboxDrainer(stores_b, b_sink, name="api:b", poll_s=0.01, lease_s=LEASE_S)
        b.start()
        wait_for(lambda: b_sink.sent == [(job.id, "running")] and stores_b.outbox.count() == 0, timeout=60)
        b.stop(drain_s=1)
        a.stop(drain_s=0)
        assert dying.sent == []
    finally:
        stores_a.close()
        stores_b.close()
