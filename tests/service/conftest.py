"""Fixtures of the service unit tests: a fake pipeline (unit tests only), apps on temp data dirs, Redis."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from PIL import Image
from svc_helpers import FakePipeline, encode, free_port, wait_for

from service.jobs import RedisJobStore, SqliteJobStore, new_job_id
from service.settings import Settings


@pytest.fixture
def fake_pipeline() -> FakePipeline:
    return FakePipeline()


@pytest.fixture
def embedded_settings(tmp_path) -> Settings:
    return Settings(
        _env_file=None,
        model="fake",
        device="cpu",
        redis_url=None,
        data_dir=tmp_path / "data",
        progress_interval=0.0,
        cancel_check_interval=0.0,
        readiness_cache_s=0.0,
        heartbeat_interval=0.2,
    )


@pytest.fixture
def make_client(embedded_settings, fake_pipeline):
    """Factory of started TestClients on the embedded app; all are closed at teardown."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    clients = []

    def make(settings: Settings | None = None, pipeline=None):
        pipe = pipeline or fake_pipeline
        app = create_app(settings or embedded_settings, pipeline_factory=lambda _settings: pipe)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client):
    return make_client()


@pytest.fixture(scope="session")
def small_images() -> tuple[bytes, bytes]:
    """Two small real photos (cat, coffee), PNG and JPEG: enough for every API path."""
    from skimage import data

    cat = Image.fromarray(data.chelsea()).resize((96, 64))
    cup = Image.fromarray(data.coffee()).resize((96, 64))
    return encode(cat, "PNG"), encode(cup, "JPEG")


@pytest.fixture(scope="session")
def redis_url():
    """A private redis-server on a free loopback port, stopped at the end of the session."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    try:
        wait_for(lambda: _pings(client), timeout=10)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


def _pings(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


@pytest.fixture(params=["sqlite", "redis"])
def job_store(request, tmp_path):
    if request.param == "sqlite":
        jobs = SqliteJobStore(tmp_path / "jobs.sqlite3", ttl=3600)
    else:
        jobs = RedisJobStore(request.getfixturevalue("redis_url"), ttl=3600, prefix=f"t{new_job_id()}:")
    yield jobs
    jobs.close()
