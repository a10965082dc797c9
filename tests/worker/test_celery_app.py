"""Celery configuration and the task body (the task runs in-process here, with a fake pipeline)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
from svc_helpers import FakePipeline, claim  # noqa: E402

from service.backends.blobs import LocalBlobStore  # noqa: E402
from service.backends.sqlite_records import open_sqlite_stores  # noqa: E402
from service.jobs import Job, new_job_id, utcnow  # noqa: E402
from service.settings import Settings  # noqa: E402


def test_reliability_settings_are_explicit():
    from worker.celery_app import QUEUE, TASK_NAME, make_celery

    settings = Settings(
        _env_file=None, redis_url="redis://127.0.0.1:1/0", job_time_limit=600, visibility_timeout=777
    )
    app = make_celery(settings)
    conf = app.conf
    assert conf.worker_prefetch_multiplier == 1 and conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.broker_transport_options["visibility_timeout"] == 777
    assert conf.task_soft_time_limit == 600 and conf.task_time_limit == 660 < 777
    assert conf.broker_url == "redis://127.0.0.1:1/0" and conf.task_default_queue == QUEUE
    import worker.tasks  # noqa: F401 - registers the task on the module-level app
    from worker.celery_app import app as module_app

    assert TASK_NAME in module_app.tasks


def test_importing_api_and_worker_loads_no_torch_and_connects_nowhere():
    import subprocess

    code = (
        "import sys, service.app, worker.celery_app, worker.tasks; "
        "assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    )
    env = {"QALIGN_REDIS_URL": "redis://127.0.0.1:1/0", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.fixture
def worker_state(tmp_path, monkeypatch):
    import worker.tasks as tasks

    settings = Settings(_env_file=None, data_dir=tmp_path, progress_interval=0, cancel_check_interval=0)
    stores = open_sqlite_stores(tmp_path / "jobs.sqlite3", ttl=3600)
    blobs = LocalBlobStore(tmp_path / "objects")
    state = tasks.WorkerState(settings, FakePipeline(), stores, blobs, "w:1", heartbeat=None)
    monkeypatch.setattr(tasks, "_state", state)
    yield state
    stores.close()


def test_task_runs_job_by_id(worker_state, small_png):
    import worker.tasks as tasks

    keys = [worker_state.blobs.put_input(small_png, "image/png") for _ in range(2)]
    job = Job(
        id=new_job_id(),
        created_at=utcnow(),
        structure_key=keys[0],
        appearance_keys=[keys[1]],
        params={"steps": 10, "skip_steps": 3},
    )
    worker_state.stores.records.create(job)
    assert tasks.transfer.run(job.id) == "succeeded"
    done = worker_state.stores.records.get(job.id)
    assert done.worker == "w:1" and done.result.width == 64
    assert worker_state.blobs.get(done.result.key).startswith(b"\x89PNG")
    assert tasks.transfer.run(job.id) == "succeeded", "a redelivered finished job is not run again"
    assert len(worker_state.pipeline.calls) == 1
    assert tasks.transfer.run(new_job_id()) is None


def test_run_worker_passes_defaults_and_user_args(monkeypatch):
    from worker import cli
    from worker.celery_app import app

    seen = {}
    monkeypatch.setattr(app, "worker_main", lambda argv: seen.setdefault("argv", argv))
    cli.run_worker(["--concurrency=2", "--pool=solo"])
    argv = seen["argv"]
    assert argv[0] == "worker" and "--concurrency=2" in argv and "--concurrency=1" not in argv
    assert "--queues=qalign" in argv and "--pool=solo" in argv


@pytest.fixture(scope="module")
def small_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (1, 2, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_visibility_timeout_follows_the_job_time_limit():
    """Redelivery must come after the hard limit, or a live job would get a second, concurrent run."""
    from pydantic import ValidationError

    default = Settings(_env_file=None)
    assert default.broker_visibility_timeout > default.job_hard_time_limit > default.job_time_limit
    short = Settings(_env_file=None, job_time_limit=6, visibility_timeout=10)
    assert short.job_hard_time_limit == 7 and short.broker_visibility_timeout == 10
    with pytest.raises(ValidationError, match="must exceed the hard job time limit"):
        Settings(_env_file=None, job_time_limit=600, visibility_timeout=600)


def _queued_job(state, png: bytes, **params) -> Job:
    keys = [state.blobs.put_input(png, "image/png") for _ in range(2)]
    job = Job(
        id=new_job_id(),
        created_at=utcnow(),
        structure_key=keys[0],
        appearance_keys=[keys[1]],
        params={"steps": 10, "skip_steps": 3, **params},
    )
    state.stores.records.create(job)
    return job


def test_job_held_by_a_live_worker_is_retried_not_dropped(worker_state, small_png):
    """A redelivery while the holder's heartbeat still names the job: look again later (Retry)."""
    from celery.exceptions import Retry

    import worker.tasks as tasks

    job = _queued_job(worker_state, small_png)
    worker_state.stores.workers.heartbeat("other:2", {"job": job.id}, ttl=30)
    claim(worker_state.stores, job.id, "other:2")
    with pytest.raises(Retry):
        tasks.transfer.run(job.id)
    assert worker_state.stores.records.get(job.id).worker == "other:2" and not worker_state.pipeline.calls

    # The holder is alive but runs something else now: its run of this job was lost, take it over.
    worker_state.stores.workers.heartbeat("other:2", {"job": None}, ttl=30)
    assert tasks.transfer.run(job.id) == "succeeded"
    assert worker_state.stores.records.get(job.id).attempts == 2


def test_takeover_after_max_attempts_fails_with_worker_lost(worker_state, small_png):
    import worker.tasks as tasks

    job = _queued_job(worker_state, small_png)
    claim(worker_state.stores, job.id, "dead:1")
    claim(worker_state.stores, job.id, "dead:2")  # second delivery after the first death
    assert tasks.transfer.run(job.id) == "failed"
    failed = worker_state.stores.records.get(job.id)
    assert failed.error.type == "worker_lost" and "2 attempts" in failed.error.detail


def test_shutdown_interrupt_requeues_job_and_message(worker_state, small_png, monkeypatch):
    """Shutdown grace over: the job goes back to the queue (no attempt used) and the message is rejected
    with requeue, so another worker runs it."""
    from celery.exceptions import Reject

    import worker.tasks as tasks

    job = _queued_job(worker_state, small_png)
    monkeypatch.setattr(tasks, "interrupt", __import__("threading").Event())
    tasks.interrupt.set()
    with pytest.raises(Reject) as caught:
        tasks.transfer.run(job.id)
    assert caught.value.requeue
    again = worker_state.stores.records.get(job.id)
    assert again.status == "queued" and again.attempts == 0 and again.worker is None
