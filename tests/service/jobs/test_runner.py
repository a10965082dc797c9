"""The runner shared by the Celery task and the embedded thread, with a fake pipeline and real stores."""

from __future__ import annotations

import io
import threading

import pytest
from net_helpers import LOOPBACK_ONLY, namespace_launcher
from PIL import Image
from svc_helpers import FakePipeline, fake_colour

from qalign_core.errors import InvalidImageError, QAlignError
from service.backends.blobs import BlobNotFound, BlobStoreDown, LocalBlobStore, result_key
from service.backends.sqlite_records import open_sqlite_stores
from service.jobs import Job, lifecycle, new_job_id, transitions, utcnow
from service.jobs.lifecycle import StopReason, stop_reason
from service.jobs.lifecycle import failure as classify
from service.jobs.runner import JobContext, execute_job
from service.settings import Settings
from service.usecases.erasure import erase_job

# Names non-loopback addresses (targets the checks must refuse or never reach): every test
# here runs inside a loopback-only network namespace (tests/net_helpers.py).
pytestmark = LOOPBACK_ONLY
test_in_loopback_only_namespace = namespace_launcher(__file__)


class SoftTimeLimitExceeded(Exception):
    """Named like Celery's soft limit but unrelated: a name must not decide the error type."""


def test_internal_value_errors_are_internal_and_do_not_leak_their_text():
    """Regression: any ValueError became invalid_request with its text in the caller-facing detail."""
    kind, detail = classify(ValueError("cannot reshape tensor at /srv/secret/model.py"))
    assert kind == "internal_error" and "secret" not in detail and "ValueError" in detail


def test_library_errors_keep_their_caller_facing_text():
    assert classify(InvalidImageError("not a PNG")) == ("invalid_image", "not a PNG")
    assert classify(QAlignError("steps too low")) == ("invalid_request", "steps too low")
    assert classify(BlobNotFound("inputs/x"))[0] == "input_missing"
    assert classify(BlobStoreDown("s3 down"))[0] == "storage_unavailable"


def test_time_limit_is_recognised_by_the_class_the_host_passes_not_by_name():
    """Regression: Celery's soft time limit was recognised by class name."""
    assert classify(SoftTimeLimitExceeded())[0] == "internal_error"
    assert classify(SoftTimeLimitExceeded(), (SoftTimeLimitExceeded,))[0] == "time_limit"


def announced(ctx: JobContext) -> list[tuple[str, str]]:
    """(job id, status) of the events in the outbox, in their order."""
    return [(event.job_id, event.status) for event in ctx.stores.outbox.pending(100)]


@pytest.fixture
def context(tmp_path, small_images):
    stores = open_sqlite_stores(tmp_path / "jobs.sqlite3", ttl=3600)
    blobs = LocalBlobStore(tmp_path / "objects")
    settings = Settings(_env_file=None, data_dir=tmp_path, progress_interval=0, cancel_check_interval=0)
    ctx = JobContext(stores, blobs, settings, FakePipeline(), worker="w:1")
    yield ctx
    stores.close()


def queued(ctx: JobContext, images, **fields) -> Job:
    keys = [ctx.blobs.put_input(data, "image/png") for data in images]
    fields.setdefault("webhook_url", "https://example.com/hook")  # so the outbox records its events
    job = Job(
        id=new_job_id(), created_at=utcnow(), structure_key=keys[0], appearance_keys=[keys[1]], **fields
    )
    ctx.stores.records.create(job)
    return job


def test_execute_job_runs_to_success_and_announces_start_and_end(context, small_images):
    job = queued(context, small_images, webhook_url="https://example.com/h")
    done = execute_job(context, job.id)
    assert done.status == "succeeded" and done.result.width == 64 and done.metrics["total_s"] == 0.04
    assert announced(context) == [(job.id, "running"), (job.id, "succeeded")]
    assert context.stores.stages.snapshot()["denoising"]["count"] == 1
    assert execute_job(context, job.id).status == "succeeded", "a finished job is not run again"
    assert len(context.pipeline.calls) == 1 and execute_job(context, new_job_id()) is None


def test_a_job_with_several_appearances_uploads_one_result_each_in_order(context, small_images):
    appearances = [small_images[1], small_images[0], small_images[1]]
    keys = [context.blobs.put_input(data, "image/png") for data in (small_images[0], *appearances)]
    job = Job(id=new_job_id(), created_at=utcnow(), structure_key=keys[0], appearance_keys=keys[1:])
    context.stores.records.create(job)
    done = execute_job(context, job.id)
    assert context.pipeline.calls[0][1] == appearances, "every appearance, in order, in one call"
    assert [r.key for r in done.results] == [result_key(job.id, "image/png", index=k) for k in range(3)]
    for k, stored in enumerate(done.results):
        image = Image.open(io.BytesIO(context.blobs.get(stored.key))).convert("RGB")
        assert image.getpixel((0, 0)) == fake_colour(k) and image.size == (stored.width, stored.height)
        assert stored.adain_applied == "plain" and stored.object_masks_found is False
    assert done.output == {
        "width": 64,
        "height": 40,
        "aspect_clamped": False,
        "grid_width": 64,
        "grid_height": 40,
        "crop": None,
    }
    assert (
        done.metrics["rows_per_step"] == 10 and done.metrics["inversion_cache_hits"] == 2
    )  # repeated images
    assert done.metrics["adain_applied"] == "plain" and done.metrics["appearances"] == 3


def test_a_failing_pipeline_fails_the_job_with_a_typed_error(context, small_images):
    context.pipeline.fail_with = ValueError("internal detail")
    failed = execute_job(context, queued(context, small_images).id)
    assert failed.status == "failed" and failed.error.type == "internal_error"
    assert "internal detail" not in failed.error.detail


def test_host_time_limit_errors_fail_with_time_limit(context, small_images):
    context.pipeline.fail_with = SoftTimeLimitExceeded()
    context.time_limit_errors = (SoftTimeLimitExceeded,)
    assert execute_job(context, queued(context, small_images).id).error.type == "time_limit"


def test_the_time_limit_stops_a_run_at_its_next_step_with_one_terminal_event(context, small_images):
    """QALIGN_JOB_TIME_LIMIT holds without Celery (embedded mode): a run that never ends by itself
    is stopped at its next step and failed with time_limit, announced once."""
    context.settings = context.settings.model_copy(update={"job_time_limit": 1})
    context.pipeline = FakePipeline(gate=threading.Event())  # never released: only the limit ends it
    job = queued(context, small_images)
    thread, done = _run_in_thread(context, job.id)
    thread.join(60)
    assert not thread.is_alive() and done[0].status == "failed" and done[0].error.type == "time_limit"
    assert "QALIGN_JOB_TIME_LIMIT" in done[0].error.detail
    assert announced(context) == [(job.id, "running"), (job.id, "failed")]


def test_claim_that_ends_the_job_announces_it(context, small_images):
    job = queued(context, small_images, cancel_requested=True)
    assert execute_job(context, job.id).status == "canceled"
    assert announced(context) == [(job.id, "canceled")] and not context.pipeline.calls


class FlakyStore:
    """A LocalBlobStore whose first ``failures`` calls of ``method`` raise BlobStoreDown (an outage)."""

    def __init__(self, blobs: LocalBlobStore, method: str, failures: int) -> None:
        self.blobs, self.method, self.failures, self.calls = blobs, method, failures, 0

    def __getattr__(self, name):
        real = getattr(self.blobs, name)
        if name != self.method:
            return real

        def flaky(*args, **kwargs):
            self.calls += 1
            if self.calls <= self.failures:
                raise BlobStoreDown(f"S3 {name}: connection refused")
            return real(*args, **kwargs)

        return flaky


@pytest.mark.parametrize("method", ["get", "put"])
def test_a_storage_outage_shorter_than_the_deadline_is_waited_out(context, small_images, method, monkeypatch):
    monkeypatch.setattr("service.jobs.runner.OUTAGE_FIRST_DELAY_S", 0.01)
    monkeypatch.setattr("service.jobs.runner.OUTAGE_MAX_DELAY_S", 0.02)
    job = queued(context, small_images)
    context.blobs = FlakyStore(context.blobs, method, failures=3)
    done = execute_job(context, job.id)
    assert done.status == "succeeded", done.error
    assert context.blobs.calls >= 4 and context.blobs.blobs.get(done.result.key)


def test_a_storage_outage_past_the_deadline_fails_with_storage_unavailable(context, small_images):
    context.settings = context.settings.model_copy(update={"storage_outage_deadline": 0.0})
    job = queued(context, small_images)
    context.blobs = FlakyStore(context.blobs, "put", failures=100)
    failed = execute_job(context, job.id)
    assert failed.status == "failed" and failed.error.type == "storage_unavailable"


def test_a_job_store_outage_at_the_final_write_is_waited_out(context, small_images, monkeypatch):
    """Redis away when the result is recorded: the write is tried again, the job still succeeds."""
    from service.jobs.records import JobStoreDown

    monkeypatch.setattr("service.jobs.runner.OUTAGE_FIRST_DELAY_S", 0.01)
    job = queued(context, small_images)
    records, real_modify, failures = context.stores.records, context.stores.records.apply, []

    def modify(job_id, change):
        probe = change(records.get(job_id))
        if probe is not None and probe.status == "succeeded" and len(failures) < 2:
            failures.append(1)
            raise JobStoreDown("Redis is unreachable")
        return real_modify(job_id, change)

    monkeypatch.setattr(records, "apply", modify)
    assert execute_job(context, job.id).status == "succeeded" and len(failures) == 2


def test_a_run_whose_job_was_taken_over_stops_and_writes_nothing(context, small_images):
    """The holder was presumed lost and another worker claimed attempt 2: the old run's late writes
    (progress, result, final record) leave the new attempt alone."""
    import threading

    job = queued(context, small_images)
    context.pipeline.gate = threading.Event()
    outcome = []
    runner = threading.Thread(target=lambda: outcome.append(execute_job(context, job.id)))
    runner.start()
    assert context.pipeline.running.wait(10)
    takeover = {"worker": "other:2", "attempts": 2, "progress": 0.0}
    taken = context.stores.records.apply(job.id, lambda j: j.model_copy(update=takeover))
    context.pipeline.gate.set()
    runner.join(10)
    after = context.stores.records.get(job.id)
    assert outcome == [after], "the superseded run reports the record as the new holder has it"
    assert after == taken, "no late write of the old run reached the record"
    assert after.status == "running" and after.worker == "other:2" and after.result is None
    assert transitions.as_holder(transitions.canceled, "w:1", 1)(after) is None


def test_a_later_attempt_writes_its_own_result_object(context, small_images):
    job = queued(context, small_images, attempts=1)
    done = execute_job(context, job.id)
    assert done.attempts == 2 and done.result.key == f"results/{job.id}-a2.png"


def _run_in_thread(ctx: JobContext, job_id: str):
    done: list = []
    thread = threading.Thread(target=lambda: done.append(execute_job(ctx, job_id)), daemon=True)
    thread.start()
    return thread, done


def test_a_run_whose_record_was_requeued_elsewhere_stops_and_does_not_cancel(context, small_images):
    """Regression: a second embedded process re-queued a live run's job and the run, reading "not
    running", marked the job canceled although nobody asked."""
    context.pipeline = FakePipeline(gate=threading.Event())
    job = queued(context, small_images)
    thread, done = _run_in_thread(context, job.id)
    assert context.pipeline.running.wait(10)
    context.stores.records.apply(job.id, lambda j: lifecycle.requeue(j, "other process", 3))
    thread.join(30)
    assert not thread.is_alive()
    record = context.stores.records.get(job.id)
    assert record.status == "queued" and not record.cancel_requested
    assert done == [record] and (job.id, "canceled") not in announced(context)


def test_only_a_cancel_request_cancels_a_run(context, small_images):
    context.pipeline = FakePipeline(gate=threading.Event())
    job = queued(context, small_images)
    thread, done = _run_in_thread(context, job.id)
    assert context.pipeline.running.wait(10)
    context.stores.records.apply(job.id, lifecycle.cancel)
    thread.join(30)
    assert done[0].status == "canceled" and done[0].cancel_requested


def test_stop_reasons():
    job = Job(id=new_job_id(), created_at=utcnow(), structure_key="k", appearance_keys=["k"])
    running = lifecycle.claim(job, worker="w", live_workers={}, max_attempts=3)
    assert stop_reason(running, "w", 1) is None
    assert stop_reason(None, "w", 1) is StopReason.ERASED
    assert stop_reason(lifecycle.cancel(running), "w", 1) is StopReason.CANCELED
    assert stop_reason(running, "other", 1) is StopReason.LOST
    assert stop_reason(running, "w", 2) is StopReason.LOST
    assert stop_reason(lifecycle.requeue(running, "x", 3), "w", 1) is StopReason.LOST


class ErasingStore(LocalBlobStore):
    """Erases the job the moment its result is uploaded: the runner finishing after an erasure."""

    stores = None

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        super().put(key, data, content_type)
        if key.startswith("results/"):
            erase_job(self.stores, self, key.split("/")[1].split(".")[0])


def test_a_result_uploaded_after_erasure_is_deleted_again(context, small_images, tmp_path):
    blobs = ErasingStore(tmp_path / "erasing")
    blobs.stores = context.stores
    context.blobs = blobs
    job = queued(context, small_images)
    assert execute_job(context, job.id) is None
    assert context.stores.records.get(job.id) is None
    left = [key for folder in ("inputs", "results", "inversions") for key, _ in blobs.list_objects(folder)]
    assert left == [], "result and cached inversions of the erased run are deleted"
    assert announced(context) == [], "erasure removes the job's events: an erased job sends none"


def test_a_run_that_holds_its_job_to_the_end_is_logged_as_succeeded(context, small_images, caplog):
    """Regression: the final record (no longer running) was mistaken for a takeover."""
    with caplog.at_level("INFO", logger="qalign.job"):
        assert execute_job(context, queued(context, small_images).id).status == "succeeded"
    messages = [record.getMessage() for record in caplog.records]
    assert "job succeeded" in messages and not any("no longer held" in m for m in messages)


def test_the_outage_wait_doubles_its_pause_up_to_the_cap_and_logs_each_try(context, monkeypatch, caplog):
    """Pauses of OUTAGE_FIRST_DELAY_S doubling to OUTAGE_MAX_DELAY_S, one warning per failed try,
    and a line when storage answers again."""
    from service.jobs import runner

    monkeypatch.setattr(runner, "OUTAGE_FIRST_DELAY_S", 0.01)
    monkeypatch.setattr(runner, "OUTAGE_MAX_DELAY_S", 0.04)
    pauses: list[float] = []
    monkeypatch.setattr(runner, "_pause", lambda ctx, seconds, tracker: pauses.append(seconds))
    answers = iter([BlobStoreDown("S3 get: connection refused")] * 4 + [b"image"])

    def call() -> bytes:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    with caplog.at_level("INFO", logger="qalign.job"):
        assert runner.through_outage(context, "read the inputs", call) == b"image"
    assert pauses == [0.01, 0.02, 0.04, 0.04]
    assert [r.outage_tries for r in caplog.records if hasattr(r, "outage_tries")] == [1, 2, 3, 4]
    assert "storage reachable again (read the inputs) after 4 tries" in caplog.messages


def test_a_shutdown_ends_the_outage_wait_of_a_final_write_and_a_cancel_that_of_a_run(context):
    """A final write (no tracker) gives up at the first failed try once the process is stopping (the
    job goes back to the queue); a run's wait ends with TransferCanceled when its tracker says stop."""
    from qalign_core.errors import TransferCanceled
    from service.jobs.runner import through_outage

    calls: list[int] = []

    def down() -> None:
        calls.append(1)
        raise BlobStoreDown("S3 put: connection refused")

    context.interrupted = lambda: True
    with pytest.raises(BlobStoreDown):
        through_outage(context, "record the outcome", down)
    assert len(calls) == 1

    class Stopping:
        def should_cancel(self) -> bool:
            return True

    context.interrupted = None
    with pytest.raises(TransferCanceled):
        through_outage(context, "upload the result", down, Stopping())  # type: ignore[arg-type]
    assert len(calls) == 2
