"""Admission under a burst: 50 simultaneous POSTs at QALIGN_MAX_QUEUE_DEPTH=10 leave at most 10 jobs
queued, and every other one gets 429 with Retry-After, in both modes (the store counts and inserts
in one atomic operation). Served by a real uvicorn; distributed mode on a real redis-server.

No worker drains the queue during the burst: the embedded worker is still "loading its model" (a
factory that waits; POST accepts jobs meanwhile), and the distributed app runs with
QALIGN_ACCEPT_WITHOUT_WORKERS and no Celery worker.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from testkit import RedisServer, poll

from service.settings import Settings

LIMIT, BURST = 10, 50
#: The readiness verdict cached as in production: with no cache (the unit tests' setting) every POST
#: waits for its own readiness check, one at a time, which hides the race being tested.
PRODUCTION_LIKE = {"readiness_cache_s": 60.0}


def _burst(url: str, images: tuple[bytes, bytes]) -> list[httpx.Response]:
    """BURST POST /transfer requests released together (one connection each)."""
    start = threading.Barrier(BURST)

    def post(seed: int) -> httpx.Response:
        files = {
            "structure": ("s.png", images[0], "image/png"),
            "appearance": ("a.jpg", images[1], "image/jpeg"),
        }
        with httpx.Client(base_url=url, timeout=120) as client:
            start.wait()
            return client.post("/transfer", files=files, data={"seed": str(seed)})

    with ThreadPoolExecutor(BURST) as pool:
        return list(pool.map(post, range(BURST)))


def _check_burst(responses: list[httpx.Response], queued: int) -> list[str]:
    codes = sorted(r.status_code for r in responses)
    accepted = [r.json()["id"] for r in responses if r.status_code == 202]
    refused = [r for r in responses if r.status_code == 429]
    assert len(accepted) + len(refused) == BURST, codes
    assert queued <= LIMIT and len(accepted) <= LIMIT, (queued, codes)
    assert len(accepted) == LIMIT, "nothing drains the queue: exactly the limit is accepted"
    for response in refused:
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["type"] == "/problems/queue-full"
        assert f"(limit {LIMIT})" in response.json()["detail"]
    return accepted


def test_burst_embedded(make_server, embedded_settings, fake_pipeline, small_images):
    loaded = threading.Event()

    def slow_model(_settings):
        loaded.wait(120)
        return fake_pipeline

    settings = embedded_settings.model_copy(update={"max_queue_depth": LIMIT, **PRODUCTION_LIKE})
    live = make_server(settings, pipeline_factory=slow_model)
    try:
        responses = _burst(live.url, small_images)
        queued = httpx.get(f"{live.url}/metrics", timeout=30).text
        depth = next(
            float(line.split()[-1]) for line in queued.splitlines() if line.startswith("qalign_queue_depth")
        )
        accepted = _check_burst(responses, int(depth))
    finally:
        loaded.set()
    with httpx.Client(base_url=live.url, timeout=30) as client:  # the model loads: all of them run
        assert {poll(client, job_id, timeout=120)["status"] for job_id in accepted} == {"succeeded"}


@pytest.fixture
def private_redis():
    """Its own redis-server: the Celery messages of the burst stay out of the session's Redis."""
    server = RedisServer().start()
    yield server.url
    server.stop()


def test_burst_distributed(make_server, embedded_settings, private_redis, small_images):
    import redis

    settings: Settings = embedded_settings.model_copy(
        update={
            "redis_url": private_redis,
            "accept_without_workers": True,
            "max_queue_depth": LIMIT,
            **PRODUCTION_LIKE,
        }
    )
    live = make_server(settings)
    responses = _burst(live.url, small_images)
    client = redis.Redis.from_url(private_redis)
    try:
        queued = client.zcard("qalign:status:queued")
        accepted = _check_burst(responses, queued)
        assert client.llen("qalign") == len(accepted), "one Celery message per accepted job"
    finally:
        client.close()
