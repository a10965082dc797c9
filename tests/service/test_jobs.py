"""Job stores: both backends give the same transitions, atomically (SQLite file and a real Redis)."""

from __future__ import annotations

import threading

import pytest

from service.jobs import Job, SqliteJobStore, new_job_id, utcnow


def make_job(job_store) -> Job:
    job = Job(
        id=new_job_id(),
        created_at=utcnow(),
        structure_key="inputs/" + "a" * 64,
        appearance_key="inputs/" + "b" * 64,
    )
    job_store.create(job)
    return job


def test_create_get_roundtrip_and_unknown(job_store):
    job = make_job(job_store)
    assert job_store.get(job.id) == job
    assert job_store.get(new_job_id()) is None
    assert job_store.modify(new_job_id(), lambda j: j) is None


def test_claim_then_finish(job_store):
    job = make_job(job_store)
    for name in ("w1", "w2"):
        job_store.heartbeat(name, {}, ttl=30)
    claimed = job_store.claim(job.id, "w1", max_attempts=2)
    assert claimed.status == "running" and claimed.worker == "w1" and claimed.attempts == 1
    assert job_store.claim(job.id, "w2", max_attempts=2) is None, "a running job is not claimed twice"
    assert job_store.count_by_status()["running"] == 1 and job_store.ids_by_status("running") == [job.id]


def test_cancel_queued_running_and_finished(job_store):
    queued = make_job(job_store)
    assert job_store.request_cancel(queued.id).status == "canceled"
    assert job_store.claim(queued.id, "w", max_attempts=2) is None, "a canceled job never runs"

    running = make_job(job_store)
    job_store.claim(running.id, "w", max_attempts=2)
    flagged = job_store.request_cancel(running.id)
    assert flagged.status == "running" and flagged.cancel_requested

    done = make_job(job_store)
    job_store.update(done.id, status="succeeded")
    assert job_store.request_cancel(done.id).status == "succeeded"
    assert job_store.count_by_status() == {
        "queued": 0,
        "running": 1,
        "succeeded": 1,
        "failed": 0,
        "canceled": 1,
    }


def test_requeue_until_attempts_run_out(job_store):
    job = make_job(job_store)
    job_store.claim(job.id, "w", max_attempts=2)
    assert job_store.requeue(job.id, "crash", max_attempts=2).status == "queued"
    job_store.claim(job.id, "w", max_attempts=2)
    failed = job_store.requeue(job.id, "crash", max_attempts=2)
    assert failed.status == "failed" and failed.error.type == "interrupted" and "crash" in failed.error.detail


def test_graceful_requeue_does_not_use_an_attempt(job_store):
    job = make_job(job_store)
    job_store.claim(job.id, "w", max_attempts=1)
    again = job_store.requeue(job.id, "shutdown", max_attempts=1, refund=True)
    assert again.status == "queued" and again.attempts == 0


def test_dead_workers_job_is_taken_over_live_workers_is_not(job_store):
    job = make_job(job_store)
    job_store.heartbeat("alive", {"model": "m"}, ttl=30)
    job_store.claim(job.id, "alive", max_attempts=3)
    assert job_store.claim(job.id, "other", max_attempts=3) is None
    orphan = make_job(job_store)
    job_store.claim(orphan.id, "dead", max_attempts=3)
    taken = job_store.claim(orphan.id, "other", max_attempts=3)
    assert taken is not None and taken.worker == "other" and taken.attempts == 2
    assert set(job_store.live_workers()) == {"alive"}


def test_claim_and_cancel_race_has_one_winner(job_store):
    """Many concurrent claimers and cancellers: exactly one outcome, never both."""
    for name in ("w0", "w1", "w2"):
        job_store.heartbeat(name, {}, ttl=60)
    for _ in range(5):
        job = make_job(job_store)
        results = []
        barrier = threading.Barrier(6)

        def claim(name, job=job, results=results, barrier=barrier):
            barrier.wait()
            results.append(("claim", job_store.claim(job.id, name, max_attempts=2)))

        def cancel(job=job, results=results, barrier=barrier):
            barrier.wait()
            results.append(("cancel", job_store.request_cancel(job.id)))

        threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(3)]
        threads += [threading.Thread(target=cancel) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        claims = [r for kind, r in results if kind == "claim" and r is not None]
        final = job_store.get(job.id)
        assert len(claims) <= 1
        if claims:
            assert final.status == "running" and final.cancel_requested
        else:
            assert final.status == "canceled"


def test_stage_statistics_accumulate(job_store):
    job_store.observe_stage("denoising", 0.3)
    job_store.observe_stage("denoising", 7.0)
    stats = job_store.stage_stats()["denoising"]
    assert stats["count"] == 2 and stats["sum"] == pytest.approx(7.3)
    assert stats["buckets"][0] == 0 and stats["buckets"][3] == 1 and stats["buckets"][-1] == 2


def test_sqlite_survives_reopen(tmp_path):
    first = SqliteJobStore(tmp_path / "jobs.sqlite3", ttl=3600)
    job = make_job(first)
    first.close()
    assert SqliteJobStore(tmp_path / "jobs.sqlite3", ttl=3600).get(job.id) == job
