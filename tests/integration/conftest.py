"""Real components for the integration tests: redis-server, moto's S3 server, a Celery worker process.

Everything listens on free loopback ports and is stopped by the fixture that started it, within
bounded time. Session scope: the worker loads the tiny model once for all tests.
"""

from __future__ import annotations

import subprocess
import time

import pytest
from int_helpers import (
    AWS_ENV,
    REPO,
    WEBHOOK_SECRET,
    MotoS3,
    RedisServer,
    celery_worker_args,
    stop_process,
    worker_env,
)


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server():
    """moto in server mode: a real S3 HTTP endpoint on loopback, with the test bucket created."""
    server = MotoS3().start()
    server.create_bucket("qalign-test")
    yield {"endpoint": server.endpoint, "bucket": "qalign-test", "region": "us-east-1"}
    server.stop()


@pytest.fixture(scope="session")
def distributed_env(redis_server, s3_server, tiny_model_dir) -> dict[str, str]:
    return {
        "QALIGN_REDIS_URL": redis_server.url,
        "QALIGN_MODEL": tiny_model_dir,
        "QALIGN_DEVICE": "cpu",
        "QALIGN_S3_BUCKET": s3_server["bucket"],
        "QALIGN_S3_ENDPOINT_URL": s3_server["endpoint"],
        "QALIGN_S3_REGION": s3_server["region"],
        "QALIGN_HEARTBEAT_INTERVAL": "1",
        "QALIGN_HEARTBEAT_TTL": "5",
        "QALIGN_PROGRESS_INTERVAL": "0.2",
        "QALIGN_CANCEL_CHECK_INTERVAL": "0.1",
        "QALIGN_READINESS_CACHE_S": "0",
        # Webhooks to receivers the tests run on loopback (test_webhooks_distributed.py).
        "QALIGN_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "QALIGN_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
        "QALIGN_WEBHOOK_ATTEMPTS": "2",
        "QALIGN_WEBHOOK_BACKOFF_S": "0.05",
        **AWS_ENV,
    }


@pytest.fixture(scope="session")
def celery_worker(distributed_env, tmp_path_factory):
    """One real ``celery worker`` process (solo pool, one job at a time) with the tiny model."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with open(log, "wb") as handle:
        proc = subprocess.Popen(
            celery_worker_args("test-worker"),
            cwd=REPO,
            env=worker_env(distributed_env),
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    import redis

    client = redis.Redis.from_url(distributed_env["QALIGN_REDIS_URL"])
    try:
        deadline = time.monotonic() + 180
        while not any(client.scan_iter(match="qalign:worker:*")):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"celery worker did not become live; log:\n{log.read_text()[-4000:]}")
            time.sleep(0.25)
        yield proc
    finally:
        client.close()
        stop_process(proc, 20)


@pytest.fixture
def distributed_client(distributed_env, celery_worker):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    settings = Settings(
        _env_file=None,
        **{k.removeprefix("QALIGN_").lower(): v for k, v in distributed_env.items() if "QALIGN_" in k},
    )
    with TestClient(create_app(settings)) as client:
        yield client
