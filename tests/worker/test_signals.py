"""The worker's Celery signal handlers read the settings of their process, read once."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from net_helpers import LOOPBACK_ONLY, namespace_launcher

# Names non-loopback addresses (targets the checks must refuse or never reach): every test
# here runs inside a loopback-only network namespace (tests/net_helpers.py).
pytestmark = LOOPBACK_ONLY
test_in_loopback_only_namespace = namespace_launcher(__file__)


@pytest.fixture
def fresh_settings(monkeypatch):
    import worker.tasks as tasks

    tasks.worker_settings.cache_clear()
    yield tasks
    tasks.worker_settings.cache_clear()


def test_signal_handlers_do_not_reread_the_environment(fresh_settings, monkeypatch):
    """Regression: the shutdown and time-limit handlers built Settings() again, so they could
    disagree with the settings the worker started with."""
    import worker.signals as signals

    monkeypatch.setenv("QALIGN_WORKER_SHUTDOWN_GRACE", "7")
    assert fresh_settings.worker_settings().worker_shutdown_grace == 7
    monkeypatch.setenv("QALIGN_WORKER_SHUTDOWN_GRACE", "999")
    started = []

    class Timer:
        def __init__(self, delay, fn):
            started.append(delay)
            self.daemon = False

        def start(self):
            pass

    monkeypatch.setattr(signals.threading, "Timer", Timer)
    signals._shutdown_grace(sig="SIGTERM", how="warm")
    assert started == [7.0]


@pytest.fixture
def running_job_store(fresh_settings, monkeypatch, tmp_path):
    """A running job in the embedded store the handler opens, and a way to call the handler."""
    from celery.exceptions import TimeLimitExceeded

    import worker.signals as signals
    from service.backends.sqlite_records import open_sqlite_stores
    from service.jobs import Job, new_job_id, utcnow

    monkeypatch.setenv("QALIGN_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("QALIGN_REDIS_URL", raising=False)
    stores = open_sqlite_stores(tmp_path / "jobs.sqlite3", ttl=3600)

    def hard_limit_hits(holder: str) -> Job:
        job = Job(
            id=new_job_id(),
            created_at=utcnow(),
            structure_key="s",
            appearance_keys=["a"],
            status="running",
            worker=holder,
            attempts=1,
            webhook_url="https://example.com/hook",
        )
        stores.records.create(job)
        task = type("Task", (), {"name": signals.TASK_NAME})()
        signals._hard_time_limit(sender=task, exception=TimeLimitExceeded(), args=[job.id])
        return stores.records.get(job.id)

    hard_limit_hits.outbox = stores.outbox
    yield hard_limit_hits
    stores.close()


def test_hard_time_limit_fails_the_job_its_killed_child_held(running_job_store):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        alive = running_job_store(f"{socket.gethostname()}:{child.pid}")
        assert alive.status == "failed" and alive.error.type == "time_limit"
    finally:
        child.kill()
        child.wait()
    gone = running_job_store(f"{socket.gethostname()}:{child.pid}")  # reaped, as the pool does
    assert gone.status == "failed" and gone.error.type == "time_limit"
    events = running_job_store.outbox.pending(10)
    assert [(e.job_id, e.status) for e in events] == [(alive.id, "failed"), (gone.id, "failed")], (
        "the hard time limit announces the job's end: one terminal event each"
    )


@pytest.mark.parametrize("holder", ["another-host:4242", "parent"])
def test_hard_time_limit_leaves_a_job_taken_over_by_another_worker(running_job_store, holder):
    """Regression: the handler failed the job whatever the record said, so a worker that froze and
    woke up failed the run of the worker that had taken its job over."""
    if holder == "parent":  # a live process on this host that is not one of ours
        holder = f"{socket.gethostname()}:{os.getppid()}"
    job = running_job_store(holder)
    assert job.status == "running" and job.error is None and job.worker == holder
    assert running_job_store.outbox.pending(10) == [], "nothing ended, nothing announced"
