"""The job state machine as pure functions: no store, plain records in and out."""

from __future__ import annotations

from service.jobs import Job, JobResult, lifecycle, new_job_id, transitions, utcnow


def job(**fields) -> Job:
    return Job(id=new_job_id(), created_at=utcnow(), structure_key="s", appearance_keys=["a"], **fields)


def claimed(record: Job, worker: str = "w", live=None, max_attempts: int = 2) -> Job | None:
    return lifecycle.claim(record, worker=worker, live_workers=live or {}, max_attempts=max_attempts)


def test_claim_marks_running_for_the_worker():
    new = claimed(job())
    assert new.status == "running" and new.stage == "loading" and new.worker == "w" and new.attempts == 1
    assert new.started_at is not None


def test_claim_leaves_finished_and_live_held_jobs_alone():
    assert claimed(job(status="succeeded")) is None
    held = job(status="running", worker="other", attempts=1)
    assert claimed(held, live={"other": {"job": held.id}}) is None
    assert claimed(held, live={"other": {}}) is None, "a heartbeat without a job name keeps its hold"


def test_claim_takes_over_a_lost_holder_until_attempts_run_out():
    held = job(status="running", worker="dead", attempts=1)
    assert claimed(held).attempts == 2
    assert claimed(held, live={"dead": {"job": "another"}}).worker == "w", "the holder moved on"
    out = claimed(job(status="running", worker="dead", attempts=2))
    assert out.status == "failed" and out.error.type == "worker_lost" and "2 attempts" in out.error.detail


def test_claim_with_a_cancel_request_cancels():
    assert claimed(job(cancel_requested=True)).status == "canceled"


def test_progress_only_moves_forward_while_running():
    running = claimed(job())
    later = transitions.progress(running, "denoising", 0.5)
    assert later.stage == "denoising" and later.progress == 0.64
    assert transitions.progress(later, "inverting", 0.0).progress == 0.64
    assert transitions.progress(job(status="canceled"), "denoising", 1.0) is None


def test_succeed_and_fail_do_not_overwrite_an_ended_job():
    result = JobResult(key="results/x.png", content_type="image/png", width=1, height=1)
    done = transitions.succeed(claimed(job()), results=[result], params={"size": 1}, metrics={"total_s": 1})
    assert done.status == "succeeded" and done.stage == "done" and done.progress == 1.0
    assert transitions.succeed(job(status="canceled"), results=[result], params={}, metrics={}) is None
    failed = transitions.fail(claimed(job()), "internal_error", "boom")
    assert failed.status == "failed" and failed.error.type == "internal_error" and failed.finished_at
    assert transitions.fail(done, "x", "y") is None
    assert transitions.fail(job(), "x", "y", only_from=frozenset({"running"})) is None


def test_cancel_queued_now_running_flagged_finished_unchanged():
    assert lifecycle.cancel(job()).status == "canceled"
    flagged = lifecycle.cancel(claimed(job()))
    assert flagged.status == "running" and flagged.cancel_requested
    assert lifecycle.cancel(flagged) is None
    assert lifecycle.cancel(job(status="failed")) is None
    assert transitions.canceled(flagged).status == "canceled"


def test_requeue_until_attempts_run_out_and_refund_on_shutdown():
    first = claimed(job())
    again = lifecycle.requeue(first, "crash", max_attempts=2)
    assert again.status == "queued" and again.worker is None and again.attempts == 1
    failed = lifecycle.requeue(claimed(again), "crash", max_attempts=2)
    assert failed.status == "failed" and failed.error.type == "interrupted" and "crash" in failed.error.detail
    refunded = lifecycle.requeue(claimed(job(), max_attempts=1), "shutdown", max_attempts=1, refund=True)
    assert refunded.status == "queued" and refunded.attempts == 0
    assert lifecycle.requeue(job(), "crash", max_attempts=2) is None
    assert lifecycle.requeue(lifecycle.cancel(claimed(job())), "x", 2).status == "canceled"


def test_nothing_becomes_canceled_without_a_cancel_request():
    """Regression: the runner read "not running" as a cancel; a stop without a request is no cancel."""
    running = claimed(job())
    assert transitions.canceled(running) is None
    assert transitions.canceled(job()) is None
    every_end = [
        lifecycle.cancel(job()),
        transitions.canceled(lifecycle.cancel(running)),
        lifecycle.requeue(lifecycle.cancel(running), "shutdown", max_attempts=2),
        lifecycle.claim(job(cancel_requested=True), worker="w", live_workers={}, max_attempts=2),
    ]
    assert all(end.status == "canceled" and end.cancel_requested for end in every_end)


def test_only_the_transitions_write_a_status():
    """The one choke point: a status is set only by a transition here (applied by
    ``JobRecords.apply``, which writes its event to the outbox), never by a hand-made update."""
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[3]
    writes = re.compile(r"""update=\{[^}]*["']status["']""")
    offenders = [
        str(path.relative_to(repo))
        for folder in ("service", "worker")
        for path in (repo / folder).rglob("*.py")
        if path.name != "transitions.py" and writes.search(path.read_text())
    ]
    assert offenders == []
    assert writes.search((repo / "service/jobs/transitions.py").read_text()), "the check sees a write"
