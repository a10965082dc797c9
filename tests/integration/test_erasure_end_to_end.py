"""Erasure end to end: the embedded service (SQLite + local store) and the distributed one (real
Redis, a real Celery worker with the tiny model, moto's S3 server); the real model throughout."""

from __future__ import annotations

import io
import json
import uuid

import httpx
import pytest
from int_helpers import FAST, poll, submit, submit_many, wait_for
from PIL import Image

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]


def unique_photos(photo_bytes: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
    """The test photos with a central block recoloured: inputs and inversions no other test's job
    shares (the preparation crops the borders and resizes, so an edge pixel would change nothing)."""
    marker = uuid.uuid4().bytes[:3]
    out = []
    for data in photo_bytes:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        cx, cy = image.width // 2, image.height // 2
        image.paste(tuple(marker), (cx - 24, cy - 24, cx + 24, cy + 24))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out[0], out[1]


def assert_every_url_404(client, job_id: str) -> None:
    for method, url in (
        ("GET", f"/jobs/{job_id}"),
        ("GET", f"/jobs/{job_id}/result"),
        ("GET", f"/jobs/{job_id}/events"),
        ("DELETE", f"/jobs/{job_id}"),
        ("DELETE", f"/jobs/{job_id}/data"),
    ):
        response = client.request(method, url)
        assert response.status_code == 404, (method, url, response.text)


def job_keys(client, job_id: str) -> set[str]:
    job = client.app.state.services.stores.records.get(job_id)
    return {*job.input_keys, *job.inversion_keys, *(result.key for result in job.results)}


def stored_keys(client) -> set[str]:
    blobs = client.app.state.services.blobs
    return {key for folder in ("inputs", "results", "inversions") for key, _ in blobs.list_objects(folder)}


# ------------------------------------------------------------------------------------------ embedded
@pytest.fixture(scope="module")
def embedded_client(tiny_model_dir, tmp_path_factory):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    settings = Settings(
        _env_file=None,
        model=tiny_model_dir,
        device="cpu",
        redis_url=None,
        s3_bucket=None,
        data_dir=tmp_path_factory.mktemp("erase-embedded"),
        progress_interval=0.2,
        cancel_check_interval=0.1,
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_embedded_erasure_removes_everything_of_the_job(embedded_client, photo_bytes):
    client = embedded_client
    job = submit(client, unique_photos(photo_bytes), **FAST)
    assert poll(client, job["id"])["status"] == "succeeded"
    keys = job_keys(client, job["id"])
    assert len(keys) == 5 and keys <= stored_keys(client), "2 inputs, 2 inversions, 1 result"

    response = client.delete(f"/jobs/{job['id']}", params={"purge": "true"})
    assert response.status_code == 204, response.text
    assert_every_url_404(client, job["id"])
    assert not keys & stored_keys(client)


def test_embedded_erasure_of_a_multi_appearance_job_removes_all_its_objects(embedded_client, photo_bytes):
    client = embedded_client
    structure, first = unique_photos(photo_bytes)
    appearances = [first, *(unique_photos(photo_bytes)[1] for _ in range(2))]
    job = submit_many(client, structure, appearances, **FAST)
    assert poll(client, job["id"])["status"] == "succeeded"
    keys = job_keys(client, job["id"])
    assert len(keys) == 4 + 4 + 3 and keys <= stored_keys(client), "4 inputs, 4 inversions, 3 results"
    assert client.delete(f"/jobs/{job['id']}/data").status_code == 204
    assert_every_url_404(client, job["id"])
    for k in range(3):
        assert client.get(f"/jobs/{job['id']}/results/{k}").status_code == 404
    assert not keys & stored_keys(client)


# --------------------------------------------------------------------------------------- distributed
def s3_keys(s3_server) -> set[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server["endpoint"], region_name=s3_server["region"])
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=s3_server["bucket"])
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def test_distributed_erasure_deletes_the_objects_and_kills_the_presigned_url(
    distributed_client, s3_server, photo_bytes
):
    client = distributed_client
    job = submit(client, unique_photos(photo_bytes), **FAST, output_format="webp")
    done = poll(client, job["id"])
    assert done["status"] == "succeeded", done
    presigned = done["result"]["url"]
    assert presigned.startswith("http") and httpx.get(presigned, timeout=10).status_code == 200
    keys = job_keys(client, job["id"])
    assert len(keys) == 5 and keys <= s3_keys(s3_server)

    response = client.delete(f"/jobs/{job['id']}/data")
    assert response.status_code == 204, response.text
    assert_every_url_404(client, job["id"])
    assert not keys & s3_keys(s3_server)
    assert httpx.get(presigned, timeout=10).status_code == 404, "the presigned URL stops working"


def test_distributed_erasure_of_a_multi_appearance_job_removes_all_its_objects(
    distributed_client, s3_server, photo_bytes
):
    client = distributed_client
    structure, first = unique_photos(photo_bytes)
    appearances = [first, unique_photos(photo_bytes)[1]]
    done = poll(client, submit_many(client, structure, appearances, **FAST)["id"])
    assert done["status"] == "succeeded", done
    presigned = [result["url"] for result in done["results"]]
    keys = job_keys(client, done["id"])
    assert len(keys) == 3 + 3 + 2 and keys <= s3_keys(s3_server), "3 inputs, 3 inversions, 2 results"
    assert client.delete(f"/jobs/{done['id']}", params={"purge": "true"}).status_code == 204
    assert_every_url_404(client, done["id"])
    assert not keys & s3_keys(s3_server)
    assert all(httpx.get(url, timeout=10).status_code == 404 for url in presigned)


def test_distributed_erasure_of_a_running_job_leaves_nothing_behind(
    distributed_client, distributed_env, s3_server, photo_bytes
):
    """The worker is mid-run when the job is erased: it stops at its next check, and whatever it
    wrote (cached inversions) is deleted; no record or result comes back."""
    import redis

    client = distributed_client
    photos = unique_photos(photo_bytes)
    initial = s3_keys(s3_server)
    job = submit(client, photos, steps=60, skip_steps=0)
    assert poll(client, job["id"], statuses=("running",))["status"] == "running"

    assert client.delete(f"/jobs/{job['id']}", params={"purge": "true"}).status_code == 204
    assert_every_url_404(client, job["id"])

    workers = redis.Redis.from_url(distributed_env["QALIGN_REDIS_URL"], decode_responses=True)
    try:
        # The worker's heartbeat names the job it runs: wait until no worker runs the erased one.
        def worker_let_go() -> bool:
            beats = [workers.get(key) for key in workers.scan_iter(match="qalign:worker:*")]
            return all(json.loads(beat).get("job") != job["id"] for beat in beats if beat)

        wait_for(worker_let_go, timeout=180, interval=0.2)
        assert workers.get(f"qalign:job:{job['id']}") is None, "the record was not brought back"
    finally:
        workers.close()
    assert s3_keys(s3_server) - initial == set(), "no input, inversion or result of the job is left"

    again = submit(client, photos, **FAST)  # the same photos again: stored anew, the job runs
    assert poll(client, again["id"])["status"] == "succeeded"
