"""Job-runtime stores: both backends (SQLite file and a real Redis) apply transitions atomically and
keep heartbeats, leases and stage statistics the same way."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from svc_helpers import claim, new_job
from testkit import FakeClock

from service.backends.redis_records import open_redis_stores
from service.backends.sqlite_records import open_sqlite_stores
from service.jobs import Job, JobStoreDown, lifecycle, new_job_id, transitions, utcnow
from service.jobs.records import expires_at, idempotency_scope


def test_create_get_roundtrip_and_unknown(stores):
    job = new_job(stores)
    assert stores.records.get(job.id) == job
    assert stores.records.get(new_job_id()) is None
    assert stores.records.apply(new_job_id(), lambda j: j) is None
    assert stores.records.get_many([job.id, new_job_id()]) == [job]


def test_a_field_a_newer_version_wrote_survives_a_transition(stores):
    """A rolling upgrade: a record carrying a field this version does not know keeps it through a
    read-modify-write (claim), so the newer process reads it back."""
    job = new_job(stores)
    stores.records.apply(job.id, lambda j: Job.model_validate({**j.model_dump(), "from_the_future": [1, 2]}))
    stores.workers.heartbeat("w1", {}, ttl=30)
    claimed = claim(stores, job.id, "w1")
    assert claimed is not None and claimed.status == "running"
    assert stores.records.get(job.id).model_dump()["from_the_future"] == [1, 2]


def test_claim_then_finish(stores):
    job = new_job(stores)
    for name in ("w1", "w2"):
        stores.workers.heartbeat(name, {}, ttl=30)
    claimed = claim(stores, job.id, "w1")
    assert claimed.status == "running" and claimed.worker == "w1" and claimed.attempts == 1
    assert claim(stores, job.id, "w2") is None, "a running job is not claimed twice"
    records = stores.records
    assert records.count_by_status()["running"] == 1 and records.ids_by_status("running") == [job.id]


def test_cancel_queued_running_and_finished(stores):
    queued = new_job(stores)
    assert stores.records.apply(queued.id, lifecycle.cancel).status == "canceled"
    assert claim(stores, queued.id, "w") is None, "a canceled job never runs"

    running = new_job(stores)
    claim(stores, running.id, "w")
    flagged = stores.records.apply(running.id, lifecycle.cancel)
    assert flagged.status == "running" and flagged.cancel_requested

    done = new_job(stores, status="succeeded")
    assert stores.records.apply(done.id, lifecycle.cancel).status == "succeeded"
    assert stores.records.count_by_status() == {
        "queued": 0,
        "running": 1,
        "succeeded": 1,
        "failed": 0,
        "canceled": 1,
    }


def test_dead_workers_job_is_taken_over_live_workers_is_not(stores):
    job = new_job(stores)
    stores.workers.heartbeat("alive", {"model": "m"}, ttl=30)
    claim(stores, job.id, "alive", max_attempts=3)
    assert claim(stores, job.id, "other", max_attempts=3) is None
    orphan = new_job(stores)
    claim(stores, orphan.id, "dead", max_attempts=3)
    taken = claim(stores, orphan.id, "other", max_attempts=3)
    assert taken is not None and taken.worker == "other" and taken.attempts == 2
    assert set(stores.workers.live()) == {"alive"}


def test_claim_and_cancel_race_has_one_winner(stores):
    """Many concurrent claimers and cancellers: exactly one outcome, never both."""
    for name in ("w0", "w1", "w2"):
        stores.workers.heartbeat(name, {}, ttl=60)
    for _ in range(5):
        job = new_job(stores)
        results = []
        barrier = threading.Barrier(6)

        def claimer(name, job=job, results=results, barrier=barrier):
            barrier.wait()
            results.append(("claim", claim(stores, job.id, name)))

        def canceller(job=job, results=results, barrier=barrier):
            barrier.wait()
            results.append(("cancel", stores.records.apply(job.id, lifecycle.cancel)))

        threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(3)]
        threads += [threading.Thread(target=canceller) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        claims = [r for kind, r in results if kind == "claim" and r is not None]
        final = stores.records.get(job.id)
        assert len(claims) <= 1
        if claims:
            assert final.status == "running" and final.cancel_requested
        else:
            assert final.status == "canceled"


def test_stage_statistics_accumulate(stores):
    stores.stages.observe("denoising", 0.3)
    stores.stages.observe("denoising", 7.0)
    stats = stores.stages.snapshot()["denoising"]
    assert stats["count"] == 2 and stats["sum"] == pytest.approx(7.3)
    assert stats["buckets"][0] == 0 and stats["buckets"][3] == 1 and stats["buckets"][-1] == 2


def test_sqlite_survives_reopen(tmp_path):
    first = open_sqlite_stores(tmp_path / "jobs.sqlite3", ttl=3600)
    job = new_job(first)
    first.close()
    assert open_sqlite_stores(tmp_path / "jobs.sqlite3", ttl=3600).records.get(job.id) == job


def test_sqlite_file_of_an_earlier_version_gets_the_queue_index_at_open(tmp_path):
    """The status index becomes (status, created, id), by idempotent statements run when the file
    opens (``migrate`` at process start), and the rows already there keep working."""
    path = tmp_path / "jobs.sqlite3"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, created REAL NOT NULL,"
        " data TEXT NOT NULL)"
    )
    old.execute("CREATE INDEX jobs_status ON jobs (status, created)")
    job = Job(id=new_job_id(), created_at=utcnow(), structure_key="inputs/a", appearance_keys=["inputs/b"])
    old.execute(
        "INSERT INTO jobs VALUES (?, ?, ?, ?)",
        (job.id, job.status, job.created_at.timestamp(), job.model_dump_json()),
    )
    old.commit()
    old.close()
    for _ in range(2):
        stores = open_sqlite_stores(path, ttl=3600)
        stores.records.migrate()
        assert stores.records.ids_by_status("queued") == [job.id]
        stores.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "jobs_queue" in indexes and "jobs_status" not in indexes


def _failing_trigger(path, table: str, event: str) -> None:
    """A trigger that aborts the whole transaction, as a full disk or I/O error would."""
    conn = sqlite3.connect(path)
    conn.execute(
        f"CREATE TRIGGER boom BEFORE {event} ON {table} BEGIN SELECT RAISE(ROLLBACK, 'disk says no'); END"
    )
    conn.commit()
    conn.close()


def test_sqlite_modify_rolls_back_and_reports_the_real_error(tmp_path):
    """Regression: modify COMMITted in a ``finally`` even after an error, hiding it behind
    'cannot commit - no transaction is active'; the change must roll back and the cause surface."""
    stores = open_sqlite_stores(tmp_path / "jobs.sqlite3", ttl=3600)
    job = new_job(stores)
    _failing_trigger(tmp_path / "jobs.sqlite3", "jobs", "UPDATE")
    with pytest.raises(JobStoreDown, match="disk says no"):
        stores.records.apply(job.id, lifecycle.cancel)
    assert stores.records.get(job.id).status == "queued"
    with pytest.raises(RuntimeError):  # an error in the change itself leaves no open transaction
        stores.records.apply(job.id, lambda j: (_ for _ in ()).throw(RuntimeError("bug")))
    assert new_job(stores).status == "queued", "no transaction was left open"
    stores.close()


def test_sqlite_idempotency_reserve_rolls_back_and_reports_the_real_error(tmp_path):
    """Regression: idempotency_reserve also COMMITted in a ``finally`` after an exception."""
    stores = open_sqlite_stores(tmp_path / "jobs.sqlite3", ttl=3600)
    stores.records.ping()  # creates the schema
    _failing_trigger(tmp_path / "jobs.sqlite3", "idempotency", "INSERT")
    with pytest.raises(JobStoreDown, match="disk says no"):
        stores.idempotency.reserve("scope", {"job_id": "a", "fingerprint": "f"}, 60)
    assert stores.idempotency.get("scope") is None
    stores.close()


def test_sqlite_idempotency_key_expires_by_the_injected_clock(tmp_path):
    clock = FakeClock()
    stores = open_sqlite_stores(tmp_path / "jobs.sqlite3", ttl=3600, clock=clock)
    assert stores.idempotency.reserve("s", {"job_id": "a", "fingerprint": "f"}, 1) is None
    assert stores.idempotency.reserve("s", {"job_id": "b", "fingerprint": "f"}, 60)["job_id"] == "a"
    clock.advance(1.5)
    assert stores.idempotency.get("s") is None
    assert stores.idempotency.reserve("s", {"job_id": "b", "fingerprint": "f"}, 60) is None
    stores.close()


def test_idempotency_reservation_is_atomic_and_releasable(stores):
    barrier = threading.Barrier(10)

    def reserve(i):
        barrier.wait()
        return stores.idempotency.reserve("scope", {"job_id": f"job{i}", "fingerprint": "f"}, 60)

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(reserve, range(10)))
    winners = [r for r in results if r is None]
    assert len(winners) == 1
    holder = stores.idempotency.get("scope")["job_id"]
    assert all(r["job_id"] == holder for r in results if r is not None)
    stores.idempotency.release("scope", "someone-else")
    assert stores.idempotency.get("scope")["job_id"] == holder
    stores.idempotency.release("scope", holder)
    assert stores.idempotency.get("scope") is None


def test_redis_idempotency_key_expires_with_its_ttl(redis_url):
    """Redis expires the key itself: the TTL set is checked, not waited for (the SQLite expiry runs
    on an injected clock in tests/service/backends/test_job_stores.py)."""
    stores = open_redis_stores(redis_url, ttl=3600, prefix=f"t{new_job_id()}:")
    try:
        assert stores.idempotency.reserve("s", {"job_id": "a", "fingerprint": "f"}, 1) is None
        key = f"{stores.idempotency.conn.prefix}idem:s"
        assert 0 < stores.idempotency.client.pttl(key) <= 1000
        stores.idempotency.confirm("s", 3600)
        assert stores.idempotency.client.ttl(key) > 3000
        stores.idempotency.client.delete(key)  # what the TTL does when it runs out
        assert stores.idempotency.reserve("s", {"job_id": "b", "fingerprint": "f"}, 60) is None
    finally:
        stores.close()


def idempotency_expiry(stores, scope: str) -> float | None | str:
    """When an Idempotency-Key's record expires (epoch seconds), None when it does not, "absent"."""
    if hasattr(stores.idempotency, "db"):  # SQLite
        row = stores.idempotency.db.run(
            lambda db: db.execute("SELECT expires FROM idempotency WHERE scope = ?", (scope,)).fetchone()
        )
        return "absent" if row is None else None if row[0] == float("inf") else row[0]
    at = stores.idempotency.client.pexpiretime(stores.idempotency.conn.idempotency_key(scope))
    return "absent" if at == -2 else None if at == -1 else at / 1000


def keyed_job(stores, owner: str = "alice", key: str = "k") -> tuple[Job, str]:
    """A queued job submitted with an Idempotency-Key, its key reserved and confirmed as submit does."""
    job = new_job(stores, owner=owner, idempotency_key=key)
    scope = idempotency_scope(owner, key)
    assert stores.idempotency.reserve(scope, {"job_id": job.id, "fingerprint": "f"}, 60) is None
    assert 0 < idempotency_expiry(stores, scope) - time.time() <= 60
    stores.idempotency.confirm(scope, 3600)
    return job, scope


def test_an_idempotency_key_lives_while_its_job_is_unfinished_and_then_as_long_as_its_record(stores):
    job, scope = keyed_job(stores)
    assert idempotency_expiry(stores, scope) is None, "queued: no expiry"
    claim(stores, job.id, "w:1")
    stores.records.apply(job.id, lambda j: lifecycle.requeue(j, "shutdown", 3, refund=True))
    claim(stores, job.id, "w:2")
    stores.records.apply(job.id, lambda j: transitions.progress(j, "denoising", 0.5))
    assert idempotency_expiry(stores, scope) is None, "running (again): no expiry"
    ended = stores.records.apply(job.id, lambda j: transitions.succeed(j, results=[], params={}, metrics={}))
    assert idempotency_expiry(stores, scope) == pytest.approx(expires_at(ended, 3600), abs=0.002)
    assert stores.idempotency.get(scope)["job_id"] == job.id


def test_an_idempotency_key_confirmed_after_its_job_ended_expires_with_the_record(stores):
    job = new_job(stores, owner="alice", idempotency_key="k")
    scope = idempotency_scope("alice", "k")
    stores.idempotency.reserve(scope, {"job_id": job.id, "fingerprint": "f"}, 60)
    ended = stores.records.apply(job.id, lifecycle.cancel)  # e.g. run from a republished message
    assert idempotency_expiry(stores, scope) == pytest.approx(expires_at(ended, 3600), abs=0.002)
    stores.idempotency.confirm(scope, 3600)
    assert idempotency_expiry(stores, scope) == pytest.approx(expires_at(ended, 3600), abs=0.002)


def test_the_end_of_a_job_leaves_a_key_that_names_another_job_alone(stores):
    """A key released (the job was not queued) and reserved again by a later request belongs to
    the later job: the first one's end does not shorten it."""
    first = new_job(stores, owner="alice", idempotency_key="k")
    later, scope = keyed_job(stores)
    claim(stores, first.id, "w:1")
    stores.records.apply(first.id, lambda j: transitions.fail(j, "internal_error", "boom"))
    assert idempotency_expiry(stores, scope) is None and stores.idempotency.get(scope)["job_id"] == later.id


def test_sqlite_an_unfinished_jobs_idempotency_key_survives_any_wait(tmp_path):
    clock = FakeClock(time.time())
    stores = open_sqlite_stores(tmp_path / "jobs.sqlite3", ttl=3600, clock=clock)
    try:
        job, scope = keyed_job(stores)
        clock.advance(10 * 3600)
        stores.records.prune()
        assert stores.idempotency.get(scope)["job_id"] == job.id
        claim(stores, job.id, "w:1")
        ended = stores.records.apply(job.id, lambda j: transitions.fail(j, "internal_error", "boom"))
        clock.now = expires_at(ended, 3600) - 1
        stores.records.prune()
        assert stores.idempotency.get(scope)["job_id"] == job.id
        clock.advance(2)
        stores.records.prune()
        assert stores.idempotency.get(scope) is None
    finally:
        stores.close()


def test_redis_prune_forgets_expired_records_in_the_queue_index(redis_url):
    stores = open_redis_stores(redis_url, ttl=3600, prefix=f"t{new_job_id()}:")
    records = stores.records
    try:
        record = Job(id=new_job_id(), created_at=utcnow(), structure_key="a", appearance_keys=["b"])
        records.create(record)
        records.client.delete(records._key(record.id))  # what the key TTL does after JOB_TTL
        assert records.count_by_status()["queued"] == 1
        assert records.prune() == 1
        assert records.count_by_status()["queued"] == 0
    finally:
        stores.close()


def test_delete_returns_the_last_record_and_later_writes_find_nothing(stores):
    job = new_job(stores)
    claimed = claim(stores, job.id, "w:1")
    gone = stores.records.delete(job.id)
    assert gone is not None and gone.id == job.id and gone.status == "running" == claimed.status
    assert stores.records.get(job.id) is None and stores.records.delete(job.id) is None
    assert stores.records.apply(job.id, lambda j: transitions.progress(j, "denoising", 0.5)) is None
    assert stores.records.get(job.id) is None, "a late write does not bring the record back"
    assert job.id not in stores.records.ids_by_status("running")
    assert stores.records.count_by_status()["running"] == 0
    assert job.id not in {j.id for j in stores.records.all_jobs()}
    assert job.id not in {j.id for j in stores.records.owned(job.owner, status=None, limit=100, before=None)}


def test_listed_by_others_names_the_objects_another_stored_job_lists(stores):
    """What erasure keeps: inputs and inversions listed by another job, found through the index."""
    shared_input, own_input = "inputs/" + "c" * 64, "inputs/" + "d" * 64
    inversion = "inversions/" + "e" * 64
    erased = new_job(stores, structure_key=shared_input, appearance_keys=[own_input])
    other = new_job(stores, structure_key=shared_input)
    records = stores.records
    candidates = {shared_input, own_input, inversion}
    assert records.listed_by_others(candidates, erased.id) == {shared_input}
    assert records.listed_by_others(candidates, other.id) == {shared_input, own_input}
    assert records.listed_by_others([], erased.id) == set()

    # Inversions a run records later count too, and a deleted job lists nothing any more.
    records.apply(other.id, lambda job: job.model_copy(update={"inversion_keys": [inversion]}))
    assert records.listed_by_others(candidates, erased.id) == {shared_input, inversion}
    records.delete(other.id)
    assert records.listed_by_others(candidates, erased.id) == set()


def test_a_record_expires_ttl_after_its_job_ended_never_while_unfinished(stores):
    """Expiry counts from the job's end in both stores: not from its creation (SQLite before), not
    from its last write (Redis before); queued and running jobs stay however old they are."""
    ttl = 3600  # the ``stores`` fixture's
    long_ago = utcnow() - timedelta(seconds=10 * ttl)
    ended_now = new_job(stores, created_at=long_ago)
    stores.records.apply(ended_now.id, lifecycle.cancel)  # submitted long ago, ended just now
    ended_long_ago = new_job(
        stores, created_at=long_ago, status="failed", finished_at=utcnow() - timedelta(seconds=ttl + 60)
    )  # and written just now
    waiting = new_job(stores, created_at=long_ago)
    running = new_job(stores, created_at=long_ago)
    claim(stores, running.id, "w")

    assert stores.records.prune() == 1
    assert stores.records.get(ended_long_ago.id) is None
    assert [job.id for job in stores.records.get_many([ended_now.id, waiting.id, running.id])] == [
        ended_now.id,
        waiting.id,
        running.id,
    ]
    assert stores.records.count_by_status() == {
        "queued": 1,
        "running": 1,
        "succeeded": 0,
        "failed": 0,
        "canceled": 1,
    }
    assert stores.records.prune() == 0


def test_count_by_status_only_reads_and_prune_drops_the_expired(stores):
    """Reads never prune: a record past its expiry is counted (and its index entries stay) until
    ``prune``, the expiry sweep, drops it; then both stores agree it is gone everywhere."""
    shared = "inputs/" + "9" * 64
    expired = new_job(
        stores, structure_key=shared, status="succeeded", finished_at=utcnow() - timedelta(seconds=3700)
    )
    kept = new_job(stores, status="succeeded", finished_at=utcnow())
    for _ in range(2):
        assert stores.records.count_by_status()["succeeded"] == 2
    assert stores.records.prune() == 1
    assert stores.records.count_by_status()["succeeded"] == 1
    assert stores.records.ids_by_status("succeeded") == [kept.id]
    assert stores.records.listed_by_others([shared], kept.id) == set()
    assert expired.id not in {
        job.id for job in stores.records.owned(None, status=None, limit=10, before=None)
    }


def test_queue_order_is_enqueue_time_and_a_requeued_job_keeps_its_place(stores):
    """Every status index is ordered by enqueue time (the submission time), then id: a job that
    went back to the queue (interrupted run) is ahead of those submitted after it, and the order
    of running jobs does not depend on when each started."""
    t0 = utcnow() - timedelta(minutes=10)
    first, second, third = (new_job(stores, created_at=t0 + timedelta(seconds=s)) for s in (0, 1, 2))
    records = stores.records
    stores.workers.heartbeat("w", {}, ttl=30)
    claim(stores, first.id, "w")
    assert records.ids_by_status("queued") == [second.id, third.id]
    records.apply(first.id, lambda j: lifecycle.requeue(j, "shutdown", 3, refund=True))
    assert records.ids_by_status("queued") == [first.id, second.id, third.id]
    assert records.ranks("queued", [third.id, first.id, second.id]) == {
        first.id: 0,
        second.id: 1,
        third.id: 2,
    }
    assert records.recent_ids("queued", 2) == [third.id, second.id]

    claim(stores, third.id, "w2")
    claim(stores, first.id, "w3")  # started after third, submitted before it
    assert records.ids_by_status("running") == [first.id, third.id]
    assert records.ranks("running", [third.id]) == {third.id: 1}

    same_time = t0 + timedelta(seconds=5)  # ties go by id, in both stores
    tied = sorted(new_job(stores, created_at=same_time).id for _ in range(3))
    assert records.ids_by_status("queued") == [second.id, *tied]
    assert records.ranks("queued", tied) == {tied[0]: 1, tied[1]: 2, tied[2]: 3}
    assert records.recent_ids("queued", 10) == [*reversed(tied), second.id]


def _as_version_1_left_it(records, job: Job, *, status_entered: float) -> None:
    """What the previous version wrote for ``job``: a key TTL from the last write, the status index
    scored by the time the job entered its status, no lister entries, owner index with a TTL."""
    records.client.set(records._key(job.id), job.model_dump_json(), ex=records.ttl)
    records.client.zadd(records._status_key(job.status), {job.id: status_entered})
    records.client.zadd(records._owner_key(job.owner), {job.id: job.created_at.timestamp()})
    records.client.expire(records._owner_key(job.owner), 2 * records.ttl)


def test_redis_migrate_brings_older_records_up_to_date_once_and_erasure_never_does(redis_url):
    """Records of the previous version get this version's expiry, queue order and lister index from
    ``migrate`` (process start, sweep), once; ``listed_by_others`` (erasure) only reads."""
    stores = open_redis_stores(redis_url, ttl=3600, prefix=f"t{new_job_id()}:")
    records = stores.records
    try:
        shared = "inputs/" + "f" * 64
        t0 = utcnow() - timedelta(hours=3)
        requeued = Job(id=new_job_id(), created_at=t0, structure_key=shared, appearance_keys=["inputs/b"])
        later = requeued.model_copy(update={"id": new_job_id(), "created_at": t0 + timedelta(minutes=1)})
        done = later.model_copy(
            update={
                "id": new_job_id(),
                "status": "succeeded",
                "finished_at": utcnow() - timedelta(seconds=600),
            }
        )
        _as_version_1_left_it(records, later, status_entered=later.created_at.timestamp())
        _as_version_1_left_it(records, requeued, status_entered=time.time())  # back at the end
        _as_version_1_left_it(records, done, status_entered=time.time())

        assert records.listed_by_others([shared], done.id) == set(), "erasure does not migrate"
        assert not records.client.exists(records._listers_key(shared))

        records.migrate()
        assert records.ids_by_status("queued") == [requeued.id, later.id]
        assert records.client.ttl(records._key(requeued.id)) == -1, "an unfinished job does not expire"
        assert 2900 < records.client.ttl(records._key(done.id)) <= 3000, "a TTL from its end"
        assert records.client.ttl(records._owner_key(None)) == -1
        assert records.listed_by_others([shared], done.id) == {shared}
        assert records.client.get(f"{records.conn.prefix}records-version") == "2"

        records.client.delete(records._listers_key(shared))
        records.migrate()  # done already: the marker says so
        assert not records.client.exists(records._listers_key(shared))
    finally:
        stores.close()


def test_redis_a_later_write_keeps_the_expiry_from_the_jobs_end(redis_url):
    """A write after the end (an undelivered webhook noted, say) does not push the expiry back."""
    stores = open_redis_stores(redis_url, ttl=3600, prefix=f"t{new_job_id()}:")
    records = stores.records
    try:
        job = new_job(stores, status="succeeded", finished_at=utcnow() - timedelta(seconds=600))
        records.apply(job.id, lambda j: j.model_copy(update={"metrics": {"noted": True}}))
        assert 2900 < records.client.ttl(records._key(job.id)) <= 3000
        records.client.delete(records._key(job.id))  # what the key expiry does at its time
        assert records.listed_by_others(job.input_keys, new_job_id()) == set()
        assert records.client.sismember(records._listers_key(job.structure_key), job.id), "reads only read"
        assert records.prune() == 1
        assert not records.client.exists(records._listers_key(job.structure_key))
        assert records.owned(None, status=None, limit=10, before=None) == []
        assert not records.client.exists(records._owner_key(None))
    finally:
        stores.close()


def test_event_counters_add_up_by_label(stores):
    counters = stores.counters
    assert counters.snapshot("webhooks_undelivered") == {}
    for reason in ("failed", "queue_full", "failed"):
        counters.add("webhooks_undelivered", reason)
    assert counters.snapshot("webhooks_undelivered") == {"failed": 2, "queue_full": 1}
    assert counters.snapshot("other") == {}


def test_live_workers_are_the_heartbeats_that_have_not_expired(stores):
    stores.workers.heartbeat("w1", {"model": "m"}, ttl=60)
    stores.workers.heartbeat("w2", {}, ttl=60)
    stores.workers.heartbeat("w1", {"model": "m2"}, ttl=60)  # the newest info wins
    assert stores.workers.live() == {"w1": {"model": "m2"}, "w2": {}}


def test_redis_live_workers_come_from_the_name_set_not_a_keyspace_scan(redis_url):
    """An expired heartbeat leaves the set when read; the name comes back with its next beat."""
    stores = open_redis_stores(redis_url, ttl=3600, prefix=f"t{new_job_id()}:")
    workers = stores.workers
    try:
        workers.heartbeat("gone", {}, ttl=60)
        workers.heartbeat("alive", {}, ttl=60)
        workers.client.delete(f"{workers.conn.prefix}worker:gone")  # what the key's TTL does
        assert set(workers.live()) == {"alive"}
        assert workers.client.smembers(f"{workers.conn.prefix}workers") == {"alive"}
        workers.heartbeat("gone", {}, ttl=60)
        assert set(workers.live()) == {"alive", "gone"}
    finally:
        stores.close()


def test_redis_a_write_between_the_read_and_the_commit_makes_the_step_run_again(redis_url, monkeypatch):
    """Optimistic concurrency: another writer changes the record after ``apply`` (or ``delete``) read
    it and before its MULTI runs; the step runs again on the new record, so no write is lost and an
    erasure returns the record as it was last written."""
    stores = open_redis_stores(redis_url, ttl=3600, prefix=f"t{new_job_id()}:")
    records = stores.records
    try:
        job = new_job(stores)
        seen: list[bool] = []

        def change(current: Job) -> Job:
            seen.append(current.cancel_requested)
            if len(seen) == 1:  # the other writer lands here
                records.apply(job.id, lambda j: j.model_copy(update={"cancel_requested": True}))
            return current.model_copy(update={"metrics": {"noted": True}})

        new = records.apply(job.id, change)
        assert seen == [False, True]
        assert new.cancel_requested and new.metrics == {"noted": True} and new.revision == job.revision + 2
        assert records.get(job.id) == new

        reads: list[str] = []
        pending = records.outbox.ids_of

        def ids_of(job_id: str) -> list[str]:
            reads.append(job_id)
            if len(reads) == 1:  # between the delete's read and its MULTI
                records.apply(job.id, lambda j: j.model_copy(update={"metrics": {"late": True}}))
            return pending(job_id)

        monkeypatch.setattr(records.outbox, "ids_of", ids_of)
        gone = records.delete(job.id)
        assert len(reads) == 2 and gone is not None and gone.metrics == {"late": True}
        assert records.get(job.id) is None and job.id not in records.ids_by_status("queued")
    finally:
        stores.close()
