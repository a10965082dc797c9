"""The Python client against the distributed service: the API under uvicorn on loopback, a real
Celery worker with the tiny model, Redis and moto's S3 server (results come by a presigned redirect)."""

from __future__ import annotations

import asyncio

import pytest
from int_helpers import FAST, SLOW, decode, wait_for
from testkit import LiveService

import qalign_client
from qalign_client import AsyncClient, Client

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
JOB_TIMEOUT = 240


@pytest.fixture(scope="module")
def server(distributed_env, celery_worker):
    from service.app import create_app
    from service.settings import Settings

    settings = Settings(
        _env_file=None,
        **{k.removeprefix("QALIGN_").lower(): v for k, v in distributed_env.items() if "QALIGN_" in k},
    )
    with LiveService(create_app(settings), ready=True) as served:
        yield served


@pytest.fixture
def client(server):
    with Client(server.url, timeout=60) as client:
        yield client


def test_submit_wait_and_result_through_the_store(client, photo_bytes, s3_server, tmp_path):
    job = client.submit(*photo_bytes, FAST, output_format="jpeg")
    done = client.wait(job, timeout=JOB_TIMEOUT)
    assert done.status == "succeeded", done.error
    assert done.result.url.startswith(s3_server["endpoint"])  # presigned: the client never needs it
    assert done.urls.result.startswith(client.base_url + "/jobs/")
    data = client.result(done)  # GET /jobs/{id}/result, then the 307 to the presigned URL
    image = decode(data)
    assert image.format == "JPEG" and image.size == (done.result.width, done.result.height)
    saved = client.result(done.id, tmp_path / "r.jpg")
    assert saved.read_bytes() == data


def test_cancel_a_running_job(client, photo_bytes):
    job = client.submit(*photo_bytes, SLOW)
    wait_for(lambda: client.get(job).status == "running", timeout=JOB_TIMEOUT)
    client.cancel(job)
    done = client.wait(job, timeout=JOB_TIMEOUT)
    assert done.status == "canceled" and done.result is None and done.started_at is not None
    with pytest.raises(qalign_client.ConflictError):
        client.result(done)


def test_stream_then_erase(client, photo_bytes):
    job = client.submit(*photo_bytes, FAST)
    events = list(client.stream(job))
    assert events[-1].event == "succeeded" and all(e.event == "progress" for e in events[:-1])
    assert [e.job.progress for e in events] == sorted(e.job.progress for e in events)
    assert client.erase(events[-1].job) is None
    for call in (client.get, client.result):
        with pytest.raises(qalign_client.NotFoundError):
            call(job)


def test_async_run(server, photo_bytes):
    async def scenario():
        async with AsyncClient(server.url, timeout=60) as client:
            return await client.run(*photo_bytes, FAST, timeout=JOB_TIMEOUT, seed=4)

    assert decode(asyncio.run(scenario())).size == (128, 85)  # the whole cat at its 3:2


def test_several_appearances_come_through_the_store_in_order(client, photo_bytes, s3_server, tmp_path):
    structure, cup = photo_bytes
    job = client.submit(structure, [cup, structure], FAST, aspect="square")
    done = client.wait(job, timeout=JOB_TIMEOUT)
    assert done.status == "succeeded", done.error
    assert len(done.results) == 2 and all(r.url.startswith(s3_server["endpoint"]) for r in done.results)
    paths = client.results(done, tmp_path)  # GET /jobs/{id}/result and /results/1, each a 307 to S3
    assert [p.name for p in paths] == [f"qalign-{done.id}-0.png", f"qalign-{done.id}-1.png"]
    images = [decode(p.read_bytes()) for p in paths]
    assert [i.size for i in images] == [(done.output.width, done.output.height)] * 2 == [(128, 128)] * 2
    assert paths[0].read_bytes() != paths[1].read_bytes()
    assert client.result(done.id, k=1) == paths[1].read_bytes()
