"""Distributed mode end to end: API -> real Redis -> real Celery worker (tiny model) -> real S3 server."""

from __future__ import annotations

import httpx
import pytest
from int_helpers import (
    FAST,
    SLOW,
    RedisServer,
    assert_shape_kept,
    crop_to,
    decode,
    free_port,
    png,
    poll,
    submit,
    submit_many,
    wait_for,
)
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]


def test_submit_poll_and_download_via_presigned_url_and_result_endpoint(distributed_client, photo_bytes):
    ready = distributed_client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["workers"]["live"] >= 1

    job = submit(distributed_client, photo_bytes, **FAST)
    assert job["status"] == "queued"
    done = poll(distributed_client, job["id"])
    assert done["status"] == "succeeded", done
    assert done["params"]["size"] == 128 and done["params"]["steps"] == 10
    assert done["metrics"]["total_s"] > 0 and done["metrics"]["inversion_cache_hits"] in (0, 1, 2)
    result = done["result"]
    shape = (done["output"]["width"], done["output"]["height"])
    assert (result["width"], result["height"]) == shape and result["expires_at"]
    assert_shape_kept(shape, decode(photo_bytes[0]).size, 128)

    # The presigned URL works without credentials, straight from the S3 server.
    assert result["url"].startswith("http://127.0.0.1:") and "Signature" in result["url"]
    direct = httpx.get(result["url"], timeout=10)
    assert direct.status_code == 200
    assert decode(direct.content).size == shape

    # /jobs/{id}/result redirects to a presigned URL that serves the same bytes.
    redirect = distributed_client.get(f"/jobs/{job['id']}/result", follow_redirects=False)
    assert redirect.status_code == 307
    via_api = httpx.get(redirect.headers["location"], timeout=10)
    assert via_api.content == direct.content and decode(via_api.content).format == "PNG"

    # Stage durations measured in the worker process reach this API's /metrics through Redis.
    families = {f.name: f for f in text_string_to_metric_families(distributed_client.get("/metrics").text)}
    jobs = {s.labels["status"]: s.value for s in families["qalign_jobs"].samples}
    assert jobs["succeeded"] >= 1
    counts = {
        s.labels["stage"]: s.value
        for s in families["qalign_stage_duration_seconds"].samples
        if s.name.endswith("_count")
    }
    assert counts.get("denoising", 0) >= 1 and counts.get("uploading", 0) >= 1
    assert families["qalign_workers_live"].samples[0].value >= 1


@pytest.mark.parametrize("ratio", [(4, 3), (9, 16)], ids=["4:3", "9:16"])
def test_a_photo_comes_back_in_its_shape(distributed_client, photos, photo_bytes, ratio):
    structure = crop_to(photos[0], ratio)
    job = submit(distributed_client, (png(structure), photo_bytes[1]), size=256, **FAST)
    done = poll(distributed_client, job["id"])
    assert done["status"] == "succeeded", done
    shape = (done["output"]["width"], done["output"]["height"])
    assert_shape_kept(shape, structure.size, 256)
    assert done["output"]["aspect_clamped"] is False
    assert decode(httpx.get(done["result"]["url"], timeout=10).content).size == shape


def test_usage_adds_up_to_the_jobs_on_redis(distributed_client, photo_bytes):
    """GET /usage from the Redis job store equals the sum of the listed jobs' own usage (the jobs of
    this module's other tests included: open mode, one owner)."""
    done = poll(distributed_client, submit(distributed_client, photo_bytes, **FAST)["id"])
    assert done["status"] == "succeeded" and done["usage"]["compute_s"] > 0
    assert done["usage"]["output_pixels"] == done["output"]["width"] * done["output"]["height"]
    jobs, cursor = [], None
    while True:
        page = distributed_client.get(
            "/jobs", params={"limit": 100, **({"cursor": cursor} if cursor else {})}
        ).json()
        jobs += page["jobs"]
        if not (cursor := page["next_cursor"]):
            break
    report = distributed_client.get("/usage").json()
    ended = [job["usage"] for job in jobs if job["usage"] is not None]
    assert report["jobs"] == len(jobs) >= 1 and report["unfinished"] == len(jobs) - len(ended)
    assert report["succeeded"] == sum(job["status"] == "succeeded" for job in jobs)
    assert report["unet_rows"] == sum(u["unet_rows"] for u in ended) > 0
    assert report["compute_s"] == pytest.approx(sum(u["compute_s"] for u in ended), abs=1e-3)
    assert report["output_megapixels"] == pytest.approx(
        sum(u["output_pixels"] for u in ended) / 1e6, abs=1e-6
    )


def test_three_appearances_give_three_results_in_order(distributed_client, photos, photo_bytes):
    """Result k is the one a single-pair job with appearance k gives (batch invariance, in order),
    and each is downloadable through /jobs/{id}/results/{k} (307 to its presigned URL)."""
    appearances = [photo_bytes[1], png(photos[0].rotate(180)), png(photos[1].transpose(0))]
    job = submit_many(distributed_client, photo_bytes[0], appearances, **FAST)
    assert job["appearances"] == 3 and len(job["urls"]["results"]) == 3
    done = poll(distributed_client, job["id"])
    assert done["status"] == "succeeded", done
    assert [r["index"] for r in done["results"]] == [0, 1, 2] and done["metrics"]["rows_per_step"] == 10
    images = []
    for k in range(3):
        redirect = distributed_client.get(f"/jobs/{job['id']}/results/{k}", follow_redirects=False)
        assert redirect.status_code == 307
        data = httpx.get(redirect.headers["location"], timeout=10).content
        assert data == httpx.get(done["results"][k]["url"], timeout=10).content
        images.append(decode(data).convert("RGB"))
    assert len({image.tobytes() for image in images}) == 3, "three different appearances, three results"
    single = poll(
        distributed_client, submit(distributed_client, (photo_bytes[0], appearances[1]), **FAST)["id"]
    )
    alone = decode(httpx.get(single["result"]["url"], timeout=10).content).convert("RGB")
    differences = [mean_abs_difference(image, alone) for image in images]
    assert differences[1] < 1.0 and differences[1] < min(differences[0], differences[2]), differences
    assert distributed_client.get(f"/jobs/{job['id']}/results/3").status_code == 404


def mean_abs_difference(first, second) -> float:
    import numpy as np

    return float(np.abs(np.asarray(first, dtype=float) - np.asarray(second, dtype=float)).mean())


def test_cancel_running_and_queued_jobs(distributed_client, photo_bytes):
    running = submit(distributed_client, photo_bytes, **SLOW)
    wait_for(
        lambda: (
            distributed_client.get(f"/jobs/{running['id']}").json()["stage"] in ("inverting", "denoising")
        ),
        timeout=120,
    )
    queued = submit(distributed_client, photo_bytes, seed=5, **FAST)

    response = distributed_client.delete(f"/jobs/{queued['id']}")
    assert response.status_code == 200 and response.json()["status"] == "canceled"

    response = distributed_client.delete(f"/jobs/{running['id']}")
    assert response.status_code == 202
    stopped = poll(distributed_client, running["id"], timeout=60)
    assert stopped["status"] == "canceled" and stopped["result"] is None
    assert stopped["progress"] < 1.0

    # The worker takes the canceled job's message next and must not run it.
    after = submit(distributed_client, photo_bytes, **FAST)
    assert poll(distributed_client, after["id"])["status"] == "succeeded"
    never_ran = distributed_client.get(f"/jobs/{queued['id']}").json()
    assert never_ran["status"] == "canceled" and never_ran["started_at"] is None
    result = distributed_client.get(f"/jobs/{queued['id']}/result", follow_redirects=False)
    assert result.status_code == 409 and result.headers["content-type"].startswith("application/problem+json")


def test_unknown_job_is_404(distributed_client):
    for method, path in (("GET", "/jobs/{}"), ("GET", "/jobs/{}/result"), ("DELETE", "/jobs/{}")):
        response = distributed_client.request(method, path.format("f" * 32))
        assert response.status_code == 404
        assert response.json()["status"] == 404 and response.json()["detail"]


def test_readiness_reports_each_dependency(s3_server, tmp_path):
    """A private Redis, stopped and started again; S3 pointed at a bucket that does not exist."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    redis_server = RedisServer(free_port()).start()
    settings = Settings(
        _env_file=None,
        redis_url=redis_server.url,
        s3_bucket=s3_server["bucket"],
        s3_endpoint_url=s3_server["endpoint"],
        s3_region=s3_server["region"],
        readiness_cache_s=0,
    )
    try:
        with TestClient(create_app(settings)) as client:
            body = client.get("/readyz").json()
            assert (
                body["checks"]["jobs"]["ok"]
                and body["checks"]["broker"]["ok"]
                and body["checks"]["store"]["ok"]
            )
            assert body["checks"]["workers"]["ok"] is False, "no worker heartbeats on this Redis"
            assert client.get("/readyz").status_code == 503

            redis_server.stop()
            body = client.get("/readyz").json()
            assert body["checks"]["jobs"]["ok"] is False and body["checks"]["broker"]["ok"] is False
            assert client.get("/healthz").status_code == 200, "liveness does not depend on Redis"

            redis_server.start()
            body = wait_for(
                lambda: (b := client.get("/readyz").json())["checks"]["jobs"]["ok"] and b, timeout=60
            )
            assert body["checks"]["broker"]["ok"]
        bad = settings.model_copy(update={"s3_bucket": "no-such-bucket"})
        with TestClient(create_app(bad)) as client:
            assert client.get("/readyz").json()["checks"]["store"]["ok"] is False
    finally:
        redis_server.stop()
