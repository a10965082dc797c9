"""Scale to zero: the API takes jobs while no worker runs, and workers started later run every one.

Each test has its own redis-server, so the session's Celery worker (other integration tests) never
sees these jobs: "no worker" here is real.
"""

from __future__ import annotations

import subprocess

import pytest
from int_helpers import FAST, REPO, RedisServer, celery_worker_args, poll, stop_process, submit, worker_env

pytestmark = pytest.mark.integration


@pytest.fixture
def scale_to_zero_env(s3_server, tiny_model_dir, distributed_env):
    redis = RedisServer().start()
    env = {
        **distributed_env,
        "QALIGN_REDIS_URL": redis.url,
        "QALIGN_MODEL": tiny_model_dir,
        "QALIGN_ACCEPT_WITHOUT_WORKERS": "true",
    }
    yield env
    redis.stop()


def _client(env):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    settings = Settings(
        _env_file=None, **{k.removeprefix("QALIGN_").lower(): v for k, v in env.items() if "QALIGN_" in k}
    )
    return TestClient(create_app(settings))


def test_jobs_wait_for_a_worker_that_starts_later(scale_to_zero_env, photo_bytes, tmp_path):
    import redis

    with _client(scale_to_zero_env) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        workers = ready.json()["checks"]["workers"]
        assert workers["live"] == 0 and workers["waiting_for_worker"] is True
        ids = [submit(client, photo_bytes, **FAST)["id"] for _ in range(5)]
        for job_id in ids:
            job = client.get(f"/jobs/{job_id}").json()
            assert job["status"] == "queued" and job["waiting_for"] == "worker", job
        # The metric the autoscaler reads: the Celery queue's Redis list.
        broker = redis.Redis.from_url(scale_to_zero_env["QALIGN_REDIS_URL"])
        assert broker.llen("qalign") == 5
        log = tmp_path / "worker.log"
        with open(log, "wb") as handle:
            proc = subprocess.Popen(
                celery_worker_args("late-worker"),
                cwd=REPO,
                env=worker_env(scale_to_zero_env),
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        try:
            finished = [poll(client, job_id, timeout=300) for job_id in ids]
            assert [job["status"] for job in finished] == ["succeeded"] * 5, log.read_text()[-3000:]
            assert all(job["waiting_for"] is None for job in finished)
            assert broker.llen("qalign") == 0
            import httpx

            assert httpx.get(finished[0]["result"]["url"], timeout=30).status_code == 200, "result in S3"
        finally:
            stop_process(proc, 60)
            broker.close()


def test_without_the_setting_no_worker_still_refuses_jobs(distributed_env, s3_server, photo_bytes):
    redis = RedisServer().start()
    try:
        env = {**distributed_env, "QALIGN_REDIS_URL": redis.url}
        with _client(env) as client:
            assert client.get("/readyz").status_code == 503
            refused = client.post(
                "/transfer",
                files={
                    "structure": ("s.png", photo_bytes[0], "image/png"),
                    "appearance": ("a.jpg", photo_bytes[1], "image/jpeg"),
                },
            )
            assert refused.status_code == 503 and "no worker heartbeat" in refused.text
    finally:
        redis.stop()


def test_autoscaler_simulation_loses_and_repeats_nothing(scale_to_zero_env, tmp_path):
    """A short run of bench/autoscale_sim.py's loop (the 20-job run is in docs/deployment.md)."""
    from bench.autoscale_sim import run_simulation, verdict

    with _client(scale_to_zero_env) as client:
        figures = run_simulation(
            client,
            scale_to_zero_env["QALIGN_REDIS_URL"],
            {**worker_env(scale_to_zero_env), "OMP_NUM_THREADS": "1"},
            tmp_path,
            jobs=6,
            max_workers=2,
            target=2,
            cooldown=2.0,
        )
    assert verdict(figures) == [], figures
    assert figures["peak_workers"] == 2 and figures["workers_started"] >= 2
