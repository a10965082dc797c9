"""The worker's Celery signal handlers read the settings of their process, read once."""

from __future__ import annotations

import pytest


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


def test_hard_time_limit_fails_the_running_job(fresh_settings, monkeypatch, tmp_path):
    from celery.exceptions import TimeLimitExceeded

    import worker.signals as signals
    from service.jobs import Job, new_job_id, utcnow
    from service.jobs.sqlite_store import open_sqlite_stores

    monkeypatch.setenv("QALIGN_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("QALIGN_REDIS_URL", raising=False)
    stores = open_sqlite_stores(tmp_path / "jobs.sqlite3", ttl=3600)
    job = Job(id=new_job_id(), created_at=utcnow(), structure_key="s", appearance_key="a", status="running")
    stores.records.create(job)
    task = type("Task", (), {"name": signals.TASK_NAME})()
    signals._hard_time_limit(sender=task, exception=TimeLimitExceeded(), args=[job.id])
    failed = stores.records.get(job.id)
    assert failed.status == "failed" and failed.error.type == "time_limit"
    stores.close()
