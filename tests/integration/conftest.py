"""Real components for the integration tests: redis-server, moto's S3 server, a Celery worker process.

Everything listens on free loopback ports and is stopped by the fixture that started it, within
bounded time. Session scope: the worker loads the tiny model once for all tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from int_helpers import RedisServer, free_port, stop_process

REPO = Path(__file__).resolve().parents[2]
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer(free_port()).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server():
    """moto in server mode: a real S3 HTTP endpoint on loopback, with the test bucket created."""
    import boto3
    from moto.server import ThreadedMotoServer

    for key, value in AWS_ENV.items():
        os.environ.setdefault(key, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **_creds()).create_bucket(
        Bucket="qalign-test"
    )
    yield {"endpoint": endpoint, "bucket": "qalign-test", "region": "us-east-1"}
    server.stop()


def _creds() -> dict:
    return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


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
        **AWS_ENV,
    }


@pytest.fixture(scope="session")
def celery_worker(distributed_env, tmp_path_factory):
    """One real ``celery worker`` process (solo pool, one job at a time) with the tiny model."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    env = {**os.environ, **distributed_env, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    with open(log, "wb") as handle:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker.celery_app",
                "worker",
                "--pool=solo",
                "--concurrency=1",
                "--queues=qalign",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--hostname=test-worker@%h",
                "--loglevel=INFO",
            ],
            cwd=REPO,
            env=env,
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
