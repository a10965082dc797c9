"""The served /openapi.json is usable by a client generator, not only valid: openapi-python-client
generates a client from it offline, and that client submits a job (multipart with files), follows it
and downloads its results, which it parses as typed ``File`` bodies. Embedded service, tiny model,
real HTTP."""

from __future__ import annotations

import importlib
import io
import os
import subprocess
import sys

import httpx
import pytest
from PIL import Image
from svc_helpers import LIVE_KEY as KEY
from testkit import wait_for

from qalign_schema.jobs import TERMINAL_STATUSES
from qalign_schema.params import IMAGE_MEDIA_TYPES

pytestmark = pytest.mark.timeout(240)

PACKAGE = "qalign_generated_client"
#: Any attempt of the generator to reach a network goes to a closed loopback port and fails.
NO_NETWORK = "http://127.0.0.1:9"


@pytest.fixture(scope="module")
def generated(live_keyed_service, tmp_path_factory):
    """The client package openapi-python-client generates from the served document, imported.

    The generator knows application/json, application/octet-stream and text/* responses only; its
    documented ``content_type_overrides`` has it read the image media types as binary. Its post hooks
    (ruff formatting the generated code) are switched off: they change layout, not behaviour."""
    root = tmp_path_factory.mktemp("generated")
    document = root / "openapi.json"
    document.write_bytes(
        httpx.get(f"{live_keyed_service.url}/openapi.json", timeout=30).raise_for_status().content
    )
    config = root / "generator.yml"
    overrides = "".join(f"  {media}: application/octet-stream\n" for media in IMAGE_MEDIA_TYPES)
    config.write_text(f"post_hooks: []\ncontent_type_overrides:\n{overrides}")
    offline = {k: v for k, v in os.environ.items() if k.lower() not in {"no_proxy", "all_proxy"}}
    offline |= {"HTTP_PROXY": NO_NETWORK, "HTTPS_PROXY": NO_NETWORK, "ALL_PROXY": NO_NETWORK}
    command = [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(document)]
    command += ["--output-path", str(root / PACKAGE), "--meta", "none", "--config", str(config)]
    run = subprocess.run(command, env=offline, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "warning" not in (run.stdout + run.stderr).lower(), run.stdout + run.stderr
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(root))
        for name in [name for name in sys.modules if name.partition(".")[0] == PACKAGE]:
            del sys.modules[name]


def test_generated_client_submits_follows_and_downloads_typed_results(
    generated, live_keyed_service, small_images
):
    submit = importlib.import_module(f"{PACKAGE}.api.default.submit_transfer_transfer_post")
    get_job = importlib.import_module(f"{PACKAGE}.api.default.get_job_jobs_job_id_get")
    get_result = importlib.import_module(f"{PACKAGE}.api.default.get_result_jobs_job_id_result_get")
    get_result_k = importlib.import_module(f"{PACKAGE}.api.default.get_result_k_jobs_job_id_results_k_get")
    models = importlib.import_module(f"{PACKAGE}.models")
    File = importlib.import_module(f"{PACKAGE}.types").File

    cat_png, cup_jpeg = small_images
    body = models.SubmitTransferTransferPostFilesBody(
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
