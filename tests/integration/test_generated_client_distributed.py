"""A client generated from the distributed service's OpenAPI document downloads results through the
S3 store's presigned redirect: the result routes answer 307 to the object store (moto's S3 server on
loopback), which the generated client follows when its httpx client is told to, and reports as a
307 otherwise. Real Redis, a real Celery worker, real HTTP."""

from __future__ import annotations

import importlib
import io

import pytest
from PIL import Image
from testkit import GENERATED_PACKAGE as PACKAGE
from testkit import LiveService, generated_client, wait_for

from qalign_schema.jobs import TERMINAL_STATUSES

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_generated_client_follows_the_presigned_result_redirect(
    distributed_env, celery_worker, photo_bytes, tmp_path
):
    from service.app import create_app
    from service.settings import Settings

    settings = Settings(
        _env_file=None,
        **{k.removeprefix("QALIGN_").lower(): v for k, v in distributed_env.items() if "QALIGN_" in k},
    )
    live_service = LiveService(create_app(settings), ready=True)
    with live_service as live, generated_client(live.url, tmp_path) as client:
        submit, get_job, get_result = (
            importlib.import_module(f"{PACKAGE}.api.default.{name}")
            for name in ("submit_transfer", "get_job", "get_result")
        )
        models = importlib.import_module(f"{PACKAGE}.models")
        File = importlib.import_module(f"{PACKAGE}.types").File
        cat, cup = (io.BytesIO(data) for data in photo_bytes)
        body = models.SubmitTransferFilesBody(
            structure=File(payload=cat, file_name="cat.png", mime_type="image/png"),
            appearance=[File(payload=cup, file_name="cup.jpg", mime_type="image/jpeg")],
            steps=4,
            skip_steps=0,
            size=64,
        )
        with client.Client(base_url=live.url, timeout=60) as plain:
            submitted = submit.sync(client=plain, body=body)
            assert isinstance(submitted, models.JobOut), submitted

            def finished():
                job = get_job.sync(submitted.id, client=plain)
                return job if job.status in TERMINAL_STATUSES else None

            job = wait_for(finished, timeout=180, interval=0.2)
            assert job.status == "succeeded", job.error
            redirect = get_result.sync_detailed(job.id, client=plain)
            assert redirect.status_code == 307, redirect.status_code
            assert redirect.headers["location"].startswith(distributed_env["QALIGN_S3_ENDPOINT_URL"])
        with client.Client(base_url=live.url, timeout=60, follow_redirects=True) as following:
            response = get_result.sync_detailed(job.id, client=following)
        assert response.status_code == 200 and isinstance(response.parsed, File), response.status_code
        image = Image.open(response.parsed.payload)
        assert image.size == (job.output.width, job.output.height)
