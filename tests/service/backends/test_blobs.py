"""Object stores: local directory and S3 (moto's HTTP server on loopback)."""

from __future__ import annotations

import hashlib

import httpx
import pytest
from svc_helpers import free_port

from service.backends.blobs import (
    BlobInversionCache,
    BlobNotFound,
    LocalBlobStore,
    S3BlobStore,
    input_key,
    result_key,
)


@pytest.fixture(scope="module")
def s3(monkeypatch_module):
    import boto3
    from moto.server import ThreadedMotoServer

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch_module.setenv(key, "testing")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="qalign-unit")
    yield S3BlobStore("qalign-unit", endpoint_url=endpoint, region="us-east-1", prefix="p/")
    server.stop()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(params=["local", "s3"])
def blobs(request, tmp_path):
    return LocalBlobStore(tmp_path / "objects") if request.param == "local" else request.getfixturevalue("s3")


def test_inputs_are_content_addressed(blobs):
    data = b"\x89PNG\r\n\x1a\n pretend pixels"
    key = blobs.put_input(data, "image/png")
    assert key == "inputs/" + hashlib.sha256(data).hexdigest()
    assert blobs.put_input(data, "image/png") == key
    assert blobs.get(key) == data and blobs.age(key) is not None


def test_missing_object_and_bad_keys(blobs):
    with pytest.raises(BlobNotFound):
        blobs.get("inputs/" + "0" * 64)
    for bad in ("../etc/passwd", "inputs/../../x", "results/ABC", "inputs/" + "0" * 64 + "/x"):
        with pytest.raises(ValueError):
            blobs.get(bad)


def test_result_urls(blobs):
    key = result_key("c" * 32, "image/webp")
    assert key == "results/" + "c" * 32 + ".webp"
    blobs.put(key, b"RIFF....WEBP", "image/webp")
    url = blobs.presigned_url(key, ttl=60)
    if isinstance(blobs, LocalBlobStore):
        assert url is None and blobs.local_path(key).read_bytes() == b"RIFF....WEBP"
    else:
        response = httpx.get(url, timeout=10)
        assert response.status_code == 200 and response.content == b"RIFF....WEBP"
        assert response.headers["content-type"] == "image/webp"
    blobs.ping()


def test_local_writes_are_atomic_and_leave_no_temp_files(tmp_path):
    blobs = LocalBlobStore(tmp_path)
    key = result_key("d" * 32, "image/png")
    blobs.put(key, b"one")
    blobs.put(key, b"two")
    assert blobs.get(key) == b"two"
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["d" * 32 + ".png"]


def test_inversion_cache_adapter(blobs):
    cache = BlobInversionCache(blobs)
    assert cache.get("inv-abc") is None
    cache.put("inv-abc", b"tensors")
    assert cache.get("inv-abc") == b"tensors"
    assert input_key(b"x") != "inversions/x"


def test_presigned_urls_use_the_public_endpoint_when_set(s3):
    public = S3BlobStore(
        "qalign-unit",
        endpoint_url=s3.client.meta.endpoint_url,
        public_endpoint_url="http://localhost:19000",
        region="us-east-1",
    )
    url = public.presigned_url("results/" + "a" * 32 + ".png", ttl=60)
    assert url.startswith("http://localhost:19000/qalign-unit/results/")
    assert s3.presigned_url("results/" + "a" * 32 + ".png", ttl=60).startswith(s3.client.meta.endpoint_url)


def test_an_input_lost_behind_the_api_is_stored_again_at_the_next_submission(blobs):
    """The store is asked at every submission: an input this process stored a moment ago and the
    store then lost (a data loss, an erasure through another replica) is written again."""
    data = b"image bytes, stored then lost"
    key = blobs.put_input(data, "image/png")
    blobs.delete(key)  # behind the put_input caller's back
    assert blobs.put_input(data, "image/png") == key
    assert blobs.get(key) == data
    assert len(blobs.__dict__["_input_flights"]) == 0, "nothing about the store is remembered"


def test_a_fresh_input_is_looked_up_not_rewritten(tmp_path, monkeypatch):
    blobs = LocalBlobStore(tmp_path)
    key = blobs.put_input(b"image bytes", "image/png")
    lookups, writes = [], []
    real_age, real_put = blobs.age, blobs.put
    monkeypatch.setattr(blobs, "age", lambda k: (lookups.append(k), real_age(k))[1])
    monkeypatch.setattr(blobs, "put", lambda *a: (writes.append(a[0]), real_put(*a)))
    assert blobs.put_input(b"image bytes", "image/png") == key
    assert lookups == [key] and writes == []


def test_concurrent_requests_with_the_same_input_write_it_once(tmp_path, monkeypatch):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    blobs = LocalBlobStore(tmp_path)
    writes, barrier = [], threading.Barrier(8)
    real_put = blobs.put
    monkeypatch.setattr(blobs, "put", lambda *a: (writes.append(a[0]), real_put(*a)))

    def submit(_):
        barrier.wait()
        return blobs.put_input(b"same", "image/png")

    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(submit, range(8)))
    assert keys == {input_key(b"same")} and len(writes) == 1


def test_a_waiting_request_uses_only_a_lookup_that_started_after_it_arrived(tmp_path, monkeypatch):
    """Single flight without memory: B and C arrive while A's lookup runs; A's answer predates
    them, so the next of them looks again, and the last one takes that newer answer."""
    import threading

    from testkit import wait_for

    blobs = LocalBlobStore(tmp_path)
    key = input_key(b"same image")
    release, lookups = threading.Event(), []
    real_age = blobs.age

    def age(k):
        lookups.append(k)
        if len(lookups) == 1:
            release.wait(30)
        return real_age(k)

    monkeypatch.setattr(blobs, "age", age)
    threads = [threading.Thread(target=blobs.put_input, args=(b"same image", "image/png")) for _ in range(3)]
    threads[0].start()
    wait_for(lambda: lookups, timeout=30)
    for thread in threads[1:]:
        thread.start()
    flights = blobs.__dict__["_input_flights"]
    wait_for(lambda: flights._flights[key].users == 3, timeout=30)
    release.set()
    for thread in threads:
        thread.join(30)
    assert lookups == [key, key] and blobs.get(key) == b"same image"
    assert len(flights) == 0


def test_each_attempt_has_its_own_result_key_within_the_key_pattern():
    from service.backends.blobs import check_key, result_job_id

    job_id = "e" * 32
    assert result_key(job_id, "image/png", attempt=1) == f"results/{job_id}.png"
    assert check_key(result_key(job_id, "image/png", attempt=3)) == f"results/{job_id}-a3.png"
    assert result_job_id(f"results/{job_id}-a3.png") == result_job_id(f"results/{job_id}.png") == job_id
    for bad in (f"results/{job_id}-b3.png", f"results/{job_id}-a.png", f"results/{job_id}-a3/../x"):
        with pytest.raises(ValueError):
            check_key(bad)
