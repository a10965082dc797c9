"""Atomic admission in both stores: the limits are checked and the record inserted in one store
operation (a Lua script in Redis, one BEGIN IMMEDIATE transaction in SQLite)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from svc_helpers import claim

from service.jobs import Job, new_job_id, utcnow
from service.jobs.records import AdmissionLimits, AdmissionRefused


def _job(owner: str | None = None) -> Job:
    return Job(
        id=new_job_id(),
        created_at=utcnow(),
        structure_key="inputs/" + "a" * 64,
        appearance_keys=["inputs/" + "b" * 64],
        owner=owner,
    )


def test_concurrent_admissions_never_overrun_the_queue_limit(stores):
    limits = AdmissionLimits(max_queued=10)
    start = threading.Barrier(50)

    def admit(_: int) -> AdmissionRefused | None:
        job = _job()
        start.wait()
        return stores.records.admit(job, limits)

    with ThreadPoolExecutor(50) as pool:
        verdicts = list(pool.map(admit, range(50)))
    admitted = [v for v in verdicts if v is None]
    assert len(admitted) == 10
    assert stores.records.count_by_status()["queued"] == 10
    refusals = [v for v in verdicts if v is not None]
    assert all(not r.per_owner and r.count >= 10 and r.limit == 10 for r in refusals)


def test_per_owner_limit_counts_queued_and_running_jobs_of_that_owner_only(stores):
    limits = AdmissionLimits(max_queued=100, max_unfinished_per_owner=2)
    first = _job("alice")
    assert stores.records.admit(first, limits) is None
    stores.workers.heartbeat("w1", {}, ttl=30)
    assert claim(stores, first.id, "w1") is not None  # running still counts
    assert stores.records.admit(_job("alice"), limits) is None
    refused = stores.records.admit(_job("alice"), limits)
    assert refused == AdmissionRefused(per_owner=True, count=2, limit=2)
    assert stores.records.admit(_job("bob"), limits) is None
    assert stores.records.admit(_job(None), limits) is None, "no owner (open mode): no per-owner count"
    assert len(stores.records.owned("alice", status=None, limit=10, before=None)) == 2


def test_admitted_record_is_indexed_like_a_created_one(stores):
    job = _job("carol")
    assert stores.records.admit(job, AdmissionLimits(max_queued=5)) is None
    assert stores.records.get(job.id) == job
    assert stores.records.ids_by_status("queued") == [job.id]
    assert [j.id for j in stores.records.owned("carol", status="queued", limit=5, before=None)] == [job.id]
    assert stores.records.listed_by_others(job.input_keys, "someone-else") == set(job.input_keys)
