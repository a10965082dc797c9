"""Redis and the S3 server go away and come back: clear 503s while down, recovery after.

This module runs its own redis-server (AOF on, so records survive its restart, as in compose), its
own moto S3 server and its own Celery worker, so stopping them never disturbs other tests.
"""

from __future__ import annotations

import subprocess
import time

import pytest
from int_helpers import (
    AWS_ENV,
    REPO,
    MotoS3,
    RedisServer,
    celery_worker_args,
    poll,
    stop_process,
    submit,
    wait_for,
    worker_env,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]
#: The shortest valid run of the tiny model: these tests are about the plumbing, not the images.
QUICK = {"steps": 4, "skip_steps": 1}


@pytest.fixture(scope="module")
def deps(tmp_path_factory, tiny_model_dir):
    redis_server = RedisServer(directory=tmp_path_factory.mktemp("redis-aof")).start()
    s3 = MotoS3().start()
    s3.create_bucket("deps")
    env = {
        "QALIGN_REDIS_URL": redis_server.url,
        "QALIGN_MODEL": tiny_model_dir,
        "QALIGN_DEVICE": "cpu",
        "QALIGN_S3_BUCKET": "deps",
        "QALIGN_S3_ENDPOINT_URL": s3.endpoint,
        "QALIGN_S3_REGION": "us-east-1",
        "QALIGN_S3_MAX_ATTEMPTS": "2",
        "QALIGN_HEARTBEAT_INTERVAL": "0.5",
        "QALIGN_HEARTBEAT_TTL": "3",
        "QALIGN_READINESS_CACHE_S": "0",
        "QALIGN_CLEANUP_INTERVAL": "0",
        **AWS_ENV,
    }
    log = tmp_path_factory.mktemp("deps-worker") / "worker.log"
    with open(log, "wb") as handle:
        worker = subprocess.Popen(
            celery_worker_args("deps-worker"),
            cwd=REPO,
            env=worker_env(env),
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        yield {"redis": redis_server, "s3": s3, "env": env, "worker": worker, "log": log}
    finally:
        stop_process(worker, 20)
        redis_server.stop()
        s3.stop()


@pytest.fixture(scope="module")
def api(deps):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    settings = Settings(
        _env_file=None,
        **{k.removeprefix("QALIGN_").lower(): v for k, v in deps["env"].items() if "QALIGN_" in k},
    )
    with TestClient(create_app(settings)) as client:
        wait_for(lambda: client.get("/readyz").status_code == 200, timeout=180)
        yield client


def problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return response.json()


def test_redis_down_then_back(api, deps, photo_bytes):
    before = submit(api, photo_bytes, **QUICK)
    assert poll(api, before["id"])["status"] == "succeeded"

    deps["redis"].stop()
    try:
        started = time.monotonic()
        body = problem(
            api.post(
                "/transfer",
                files={"structure": ("s.png", photo_bytes[0]), "appearance": ("a.jpg", photo_bytes[1])},
            ),
            503,
        )
        assert "not ready" in body["detail"] and "Redis" in body["detail"]
        assert time.monotonic() - started < 15, "refusals while down are quick"
        body = problem(api.get(f"/jobs/{before['id']}"), 503)
        assert "job store is unavailable" in body["detail"]
        assert api.get("/readyz").status_code == 503
        assert api.get("/healthz").status_code == 200
        assert api.get("/metrics").status_code == 200
    finally:
        deps["redis"].start()

    # Records survive (AOF); the worker reconnects and heartbeats; new work is accepted and runs.
    assert api.get(f"/jobs/{before['id']}").json()["status"] == "succeeded"
    wait_for(lambda: api.get("/readyz").status_code == 200, timeout=60)
    after = submit(api, photo_bytes, seed=1, **QUICK)
    assert poll(api, after["id"])["status"] == "succeeded"


def test_s3_down_then_back(api, deps, photo_bytes):
    done = poll(api, submit(api, photo_bytes, seed=2, **QUICK)["id"])
    deps["s3"].stop()
    try:
        body = problem(
            api.post(
                "/transfer",
                files={"structure": ("s.png", photo_bytes[0]), "appearance": ("a.jpg", photo_bytes[1])},
            ),
            503,
        )
        assert "store" in body["detail"] and "deps" in body["detail"]
        # Polling answers from the job store, which is up.
        assert api.get(f"/jobs/{done['id']}").json()["status"] == "succeeded"
    finally:
        deps["s3"].start()
    wait_for(lambda: api.get("/readyz").status_code == 200, timeout=60)
    after = submit(api, photo_bytes, seed=3, **QUICK)
    assert poll(api, after["id"])["status"] == "succeeded"
    assert api.get(f"/jobs/{after['id']}/result", follow_redirects=False).status_code == 307
