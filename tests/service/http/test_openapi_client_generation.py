"""The served /openapi.json is usable by a client generator, not only valid: openapi-python-client
generates a client from it offline, and that client submits a job (multipart with files), follows it
and downloads its results, which it parses as typed ``File`` bodies. Embedded service, tiny model,
real HTTP."""

from __future__ import annotations

import importlib
import io

import pytest
from PIL import Image
from svc_helpers import LIVE_KEY as KEY
from testkit import GENERATED_PACKAGE as PACKAGE
from testkit import generated_client, wait_for

from qalign_schema.jobs import TERMINAL_STATUSES

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def generated(live_keyed_service, tmp_path_factory):
    """The client package openapi-python-client generates from the served document, imported."""
    with generated_client(live_keyed_service.url, tmp_path_factory.mktemp("generated")) as package:
        yield package


def test_generated_client_submits_follows_and_downloads_typed_results(
    generated, live_keyed_service, small_images
):
    # Readable operation ids: the modules are named as a person would name the calls.
    submit, get_job, get_result, get_result_k = (
        importlib.import_module(f"{PACKAGE}.api.default.{name}")
        for name in ("submit_transfer", "get_job", "get_result", "get_result_k")
    )
    models = importlib.import_module(f"{PACKAGE}.models")
    File = importlib.import_module(f"{PACKAGE}.types").File

    cat_png, cup_jpeg = small_images
    body = models.SubmitTransferFilesBody(
        structure=File(payload=io.BytesIO(cat_png), file_name="cat.png", mime_type="image/png"),
        appearance=[
            File(payload=io.BytesIO(cup_jpeg), file_name="cup.jpg", mime_type="image/jpeg"),
            File(payload=io.BytesIO(cat_png), file_name="cat.png", mime_type="image/png"),
        ],
        steps=4,
        skip_steps=0,
        size=64,
    )
    with generated.AuthenticatedClient(base_url=live_keyed_service.url, token=KEY, timeout=60) as client:
        submitted = submit.sync(client=client, body=body)
        assert isinstance(submitted, models.JobOut), submitted

        def finished():
            job = get_job.sync(submitted.id, client=client)
            return job if job.status in TERMINAL_STATUSES else None

        job = wait_for(finished, timeout=180, interval=0.2)
        assert job.status == "succeeded", job.error
        assert job.appearances == 2 and len(job.results) == 2

        downloads = [get_result.sync_detailed(job.id, client=client)]
        downloads += [get_result_k.sync_detailed(job.id, k, client=client) for k in range(2)]
        for response, result in zip(downloads, [job.results[0], *job.results], strict=True):
            assert response.status_code == 200 and response.headers["content-type"] == "image/png"
            assert isinstance(response.parsed, File), type(response.parsed)
            image = Image.open(response.parsed.payload)
            assert image.format == "PNG"
            assert image.size == (job.output.width, job.output.height) == (result.width, result.height)
        assert downloads[0].content == downloads[1].content != downloads[2].content
