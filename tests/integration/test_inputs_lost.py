"""A storage data loss (every object of the bucket gone) with a real Celery worker, Redis and moto's
S3 server: the API asks the store about each input at each submission instead of trusting its
memory, so jobs submitted after the loss succeed with images it had stored before; a job accepted
before the loss, whose input is gone, fails with ``input_missing`` (never lost, never stuck), and
the same images submitted again run."""

from __future__ import annotations

import boto3
import httpx
import pytest
from int_helpers import SLOW, png, poll, submit, wait_for
from PIL import ImageOps

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]
#: The shortest run of the tiny model: what matters here is whether a job finds its inputs.
TINY = {"steps": 2, "skip_steps": 1, "size": 64}


def wipe_bucket(s3_server: dict[str, str]) -> int:
    """Delete every object of the test bucket behind the service's back; how many there were."""
    s3 = boto3.client("s3", endpoint_url=s3_server["endpoint"], region_name=s3_server["region"])
    keys = [
        {"Key": item["Key"]}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_server["bucket"])
        for item in page.get("Contents", [])
    ]
    for start in range(0, len(keys), 1000):
        s3.delete_objects(Bucket=s3_server["bucket"], Delete={"Objects": keys[start : start + 1000]})
    remaining = s3.list_objects_v2(Bucket=s3_server["bucket"]).get("KeyCount", 0)
    assert remaining == 0, f"{remaining} objects survived the wipe"
    return len(keys)


def test_jobs_submitted_after_the_inputs_were_lost_succeed(
    distributed_client, s3_server, photos, photo_bytes
):
    client = distributed_client
    structure, appearance = photos
    blocker_images = (png(ImageOps.flip(structure)), png(ImageOps.flip(appearance)))
    waiting_images = (png(ImageOps.mirror(structure)), png(ImageOps.mirror(appearance)))

    # The API stores these inputs and a job reads them.
    seen = submit(client, photo_bytes, **TINY)
    assert poll(client, seen["id"])["status"] == "succeeded"

    # The worker (one job at a time) is busy past reading its inputs; one job waits behind it.
    blocker = submit(client, blocker_images, **SLOW, size=64)
    wait_for(
        lambda: client.get(f"/jobs/{blocker['id']}").json()["stage"] in ("inverting", "denoising"),
        timeout=120,
    )
    waiting = submit(client, waiting_images, **TINY)
    assert client.get(f"/jobs/{waiting['id']}").json()["status"] == "queued"

    assert wipe_bucket(s3_server) >= 4, "the inputs (and the first result) were in the bucket"

    # Submitted after the loss, with the images the API stored a moment ago: stored again, so it runs.
    after = submit(client, photo_bytes, seed=7, **TINY)
    assert client.delete(f"/jobs/{blocker['id']}").status_code == 202  # free the worker

    lost = poll(client, waiting["id"])
    assert lost["status"] == "failed" and lost["error"]["type"] == "input_missing", lost
    assert "missing from the store" in lost["error"]["detail"]
    done = poll(client, after["id"])
    assert done["status"] == "succeeded", done
    assert httpx.get(done["result"]["url"], timeout=10).status_code == 200, "its result is in the store"

    # What the failed job's caller is told to do, resubmit, works.
    again = submit(client, waiting_images, **TINY)
    assert poll(client, again["id"])["status"] == "succeeded"
