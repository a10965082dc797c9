"""Fixtures of the service unit tests: a fake pipeline (unit tests only), apps on temp data dirs, Redis."""

from __future__ import annotations

import contextlib

import pytest
from PIL import Image
from svc_helpers import KEYS, LIVE_KEY, FakePipeline, encode
from testkit import LiveService, RedisServer

from service.auth import hash_key
from service.backends.redis_records import open_redis_stores
from service.backends.sqlite_records import open_sqlite_stores
from service.jobs import JobStores, new_job_id
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
def make_server(embedded_settings, fake_pipeline):
    """Factory of the embedded app served by a real uvicorn in a thread (streaming, disconnects and
    proxy peers as in production); every server is stopped at teardown."""
    from service.app import create_app

    with contextlib.ExitStack() as running:

        def make(settings: Settings | None = None, pipeline=None, pipeline_factory=None) -> LiveService:
            pipe = pipeline or fake_pipeline
            factory = pipeline_factory or (lambda _settings: pipe)
            app = create_app(settings or embedded_settings, pipeline_factory=factory)
            return running.enter_context(LiveService(app, proxy_headers=False))

        yield make


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
    server = RedisServer().start()
    yield server.url
    server.stop()


@pytest.fixture(params=["sqlite", "redis"])
def stores(request, tmp_path) -> JobStores:
    """The job-runtime stores of each backend (Redis under a fresh key prefix per test)."""
    if request.param == "sqlite":
        opened = open_sqlite_stores(tmp_path / "jobs.sqlite3", ttl=3600)
    else:
        opened = open_redis_stores(request.getfixturevalue("redis_url"), ttl=3600, prefix=f"t{new_job_id()}:")
    yield opened
    opened.close()


@pytest.fixture
def keyed(embedded_settings):
    """Embedded settings with alice and bob's keys active and an old key revoked."""
    return embedded_settings.model_copy(
        update={
            "api_keys": f"alice:{hash_key(KEYS['alice'])}, bob:{hash_key(KEYS['bob'])}",
            "revoked_api_keys": f"old:{hash_key(KEYS['old'])}",
        }
    )


@pytest.fixture(scope="module")
def live_keyed_service(tiny_model_dir, tmp_path_factory):
    """The embedded service with the tiny model under a real uvicorn, one API key (LIVE_KEY); one
    per test module."""
    from service.app import create_app

    settings = Settings(
        _env_file=None,
        model=tiny_model_dir,
        device="cpu",
        data_dir=tmp_path_factory.mktemp("live"),
        api_keys=f"tester:{hash_key(LIVE_KEY)}",
        readiness_cache_s=0.0,
    )
    with LiveService(create_app(settings)) as live:
        yield live
