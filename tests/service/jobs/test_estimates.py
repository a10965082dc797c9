"""Queue position and ETA of unfinished jobs, from the records and the stage statistics."""

from __future__ import annotations

import pytest
from svc_helpers import claim, new_job

from service.jobs import lifecycle, transitions
from service.jobs.estimates import QueueSnapshot, rows_factor


def _observe_runs(stores, runs: int = 2) -> None:
    for _ in range(runs):
        for stage, seconds in (("loading", 1.0), ("inverting", 3.0), ("denoising", 5.0), ("decoding", 1.0)):
            stores.stages.observe(stage, seconds)


def test_positions_count_the_jobs_queued_ahead(stores):
    stores.workers.heartbeat("w1", {}, ttl=30)
    running, first, second = new_job(stores), new_job(stores), new_job(stores)
    claim(stores, running.id, "w1")
    first = stores.records.get(first.id)
    queue = QueueSnapshot.read(stores, [running, first, second])
    assert queue.position(stores.records.get(running.id)) == 0
    assert queue.position(first) == 0, "the oldest queued job runs next"
    assert queue.position(second) == 1
    canceled = stores.records.apply(second.id, lifecycle.cancel)
    assert queue.position(canceled) is None and queue.eta_s(canceled) is None


def test_eta_is_unknown_until_a_job_has_run(stores):
    job = new_job(stores)
    assert QueueSnapshot.read(stores, [job]).eta_s(job) is None


def test_eta_from_mean_stage_durations(stores):
    _observe_runs(stores)  # one run = 1 + 3 + 5 + 1 = 10 s
    stores.workers.heartbeat("w1", {}, ttl=30)
    running, queued = new_job(stores), new_job(stores)
    claimed = claim(stores, running.id, "w1")
    halfway = stores.records.apply(claimed.id, lambda j: transitions.progress(j, "denoising", 0.5))
    queue = QueueSnapshot.read(stores, [halfway, queued])
    # Half of denoising (2.5 s) and decoding (1 s) are left.
    assert queue.eta_s(halfway) == pytest.approx(3.5)
    # The running job's remainder, then its own run.
    assert queue.eta_s(queued) == pytest.approx(3.5 + 10.0)


def test_more_workers_share_the_work_ahead(stores):
    _observe_runs(stores)
    for name in ("w1", "w2"):
        stores.workers.heartbeat(name, {}, ttl=30)
    jobs = [new_job(stores) for _ in range(3)]
    queue = QueueSnapshot.read(stores, jobs)
    assert [queue.position(job) for job in jobs] == [0, 1, 2]
    assert queue.eta_s(jobs[2]) == pytest.approx(2 * 10.0 / 2 + 10.0)


def test_a_job_that_left_the_queue_after_it_was_read_counts_as_running_next(stores):
    job = new_job(stores)
    stores.workers.heartbeat("w1", {}, ttl=30)
    claim(stores, job.id, "w1")
    assert QueueSnapshot.read(stores, [job]).position(job) == 0


def test_ranks_follow_the_queue_order_and_skip_other_statuses(stores):
    jobs = [new_job(stores) for _ in range(4)]
    stores.records.apply(jobs[1].id, lifecycle.cancel)
    ids = [job.id for job in jobs]
    assert stores.records.ranks("queued", ids) == {ids[0]: 0, ids[2]: 1, ids[3]: 2}
    assert stores.records.ranks("queued", []) == {}
    assert stores.records.ranks("canceled", ids) == {ids[1]: 0}


def test_eta_scales_with_the_rows_of_the_job(stores):
    """(3N + 1) / 4 of a single pair's run: UNet rows per aligned step over a single pair's 4."""
    _observe_runs(stores)  # one single-pair run = 10 s
    stores.workers.heartbeat("w1", {}, ttl=30)
    many = ["inputs/" + c * 64 for c in "bcde"]
    running = claim(stores, new_job(stores, appearance_keys=many).id, "w1")
    halfway = stores.records.apply(running.id, lambda j: transitions.progress(j, "denoising", 0.5))
    single, four = new_job(stores), new_job(stores, appearance_keys=many)
    queue = QueueSnapshot.read(stores, [halfway, single, four])
    assert rows_factor(1) == 1.0 and rows_factor(4) == 3.25 and rows_factor(8) == 6.25
    assert queue.eta_s(halfway) == pytest.approx(3.5 * 3.25, abs=0.05)  # its own remainder, scaled
    assert queue.eta_s(single) == pytest.approx(3.5 * 3.25 + 10.0, abs=0.05)
    # The single job ahead counts one run; its own run is 3.25 runs. The position is unchanged.
    assert queue.eta_s(four) == pytest.approx(3.5 * 3.25 + 10.0 + 32.5, abs=0.05)
    assert [queue.position(job) for job in (halfway, single, four)] == [0, 0, 1]
