"""Billable usage from the job records, and the rate-limit windows: both backends (SQLite file and
a real Redis) give the same sums and counts."""

from __future__ import annotations

from datetime import timedelta

import pytest
from svc_helpers import new_job, wait_for
from testkit import FakeClock

from service.backends.sqlite_records import MemoryRateWindows
from service.jobs import JobResult, utcnow
from service.jobs import usage as usage_module
from service.jobs.usage import job_usage, usage_report


def _t0():
    """The tests' time origin: ten minutes before now, taken when the test runs (not when the module
    is imported: on a busy machine the suite takes longer than the records' one-hour TTL, and records
    that ended an hour after import would expire before the test reads them)."""
    return utcnow().replace(microsecond=0) - timedelta(minutes=10)


def _results(count: int, width: int, height: int) -> list[JobResult]:
    return [
        JobResult(key=f"results/x-{k}.png", content_type="image/png", width=width, height=height)
        for k in range(count)
    ]


def _ended(stores, owner, minute, status, *, ran_s=None, rows=(0, 0), results=0, t0=None):
    """A job of ``owner`` created ``minute`` x 10 s after ``t0`` (default: _t0()) that ended in ``status``."""
    created = (t0 or _t0()) + timedelta(seconds=10 * minute)
    started = None if ran_s is None else created + timedelta(seconds=1)
    finished = created + timedelta(seconds=1 + (ran_s or 0))
    metrics = {"unet_rows_inversion": rows[0], "unet_rows_denoising": rows[1], "total_s": 9.0}
    job = new_job(
        stores,
        owner=owner,
        created_at=created,
        status=status,
        stage="done" if status == "succeeded" else "queued",
        started_at=started,
        finished_at=finished,
        metrics=metrics,
        results=_results(results, 128, 85),
        appearance_keys=["inputs/" + "b" * 64] * max(results, 1),
    )
    return job


def test_a_jobs_usage_is_its_run_time_rows_and_result_pixels(stores):
    done = _ended(stores, "alice", 1, "succeeded", ran_s=2.5, rows=(18, 24), results=2)
    assert job_usage(done).model_dump() == {"compute_s": 2.5, "unet_rows": 42, "output_pixels": 2 * 128 * 85}
    failed = _ended(stores, "alice", 2, "failed", ran_s=1.25, rows=(6, 0))
    assert job_usage(failed).model_dump() == {"compute_s": 1.25, "unet_rows": 6, "output_pixels": 0}
    never_ran = _ended(stores, "alice", 3, "canceled")
    assert job_usage(never_ran).model_dump() == {"compute_s": 0.0, "unet_rows": 0, "output_pixels": 0}
    assert job_usage(new_job(stores, owner="alice")) is None, "no usage before the job has ended"


def test_usage_adds_up_to_the_jobs_it_covers(stores, monkeypatch):
    monkeypatch.setattr(usage_module, "USAGE_PAGE", 2)  # several store pages on both backends
    t0 = _t0()
    mine = [
        _ended(stores, "alice", 0, "succeeded", ran_s=2.0, rows=(10, 20), t0=t0, results=1),
        _ended(stores, "alice", 10, "succeeded", ran_s=3.5, rows=(10, 30), t0=t0, results=3),
        _ended(stores, "alice", 20, "failed", ran_s=0.5, rows=(4, 0), t0=t0),
        _ended(stores, "alice", 30, "canceled", t0=t0),
        _ended(stores, "alice", 40, "succeeded", ran_s=1.0, rows=(5, 5), t0=t0, results=1),
    ]
    running = new_job(stores, owner="alice", created_at=t0 + timedelta(seconds=250))
    stores.records.apply(
        running.id, lambda j: j.model_copy(update={"status": "running", "started_at": utcnow()})
    )
    _ended(stores, "bob", 10, "succeeded", ran_s=7.0, rows=(99, 99), t0=t0, results=8)  # another key's

    report = usage_report(stores.records, "alice", t0 + timedelta(seconds=100), t0 + timedelta(seconds=400))
    covered = mine[1:4]  # since inclusive, until exclusive
    usages = [job_usage(job) for job in covered]
    assert (report.jobs, report.succeeded, report.unfinished) == (4, 1, 1)
    assert report.compute_s == pytest.approx(sum(u.compute_s for u in usages)) == 4.0
    assert report.unet_rows == sum(u.unet_rows for u in usages) == 44
    assert report.output_megapixels == pytest.approx(sum(u.output_pixels for u in usages) / 1e6)

    everything = usage_report(stores.records, "alice", None, utcnow())
    assert (everything.jobs, everything.succeeded) == (6, 3)
    assert everything.unet_rows == sum(job_usage(job).unet_rows for job in mine) == 84
    assert everything.output_megapixels == pytest.approx(5 * 128 * 85 / 1e6)
    assert usage_report(stores.records, "carol", None, utcnow()).jobs == 0


def test_rate_windows_count_per_key_and_start_again(stores):
    first = [stores.rates.hit("alice", 3600) for _ in range(3)]
    assert [count for count, _ in first] == [1, 2, 3]
    assert all(0 < left <= 3600 for _, left in first)
    assert stores.rates.hit("bob", 3600)[0] == 1, "each key has its own count"
    # A one-second window: a later window starts from one again (waited for, not slept).
    count, _ = stores.rates.hit("carol", 1)
    assert count >= 1
    wait_for(lambda: stores.rates.hit("carol", 1)[0] == 1, timeout=10)


def test_memory_rate_windows_follow_their_clock():
    clock = FakeClock(now=1_000_000.0)
    rates = MemoryRateWindows(clock)
    assert rates.hit("alice", 60) == (1, 20.0)  # 1_000_000 = 16666 x 60 + 40
    clock.advance(19.5)
    assert rates.hit("alice", 60) == (2, 0.5)
    clock.advance(1.0)
    assert rates.hit("alice", 60) == (1, 59.5)
