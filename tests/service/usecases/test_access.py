"""Reading, cancelling and downloading through the API when the object store misbehaves."""

from __future__ import annotations

import threading

from svc_helpers import FakePipeline
from testkit import assert_problem, poll, submit

from service.backends.blobs import BlobStoreDown


def _presign_fails(*_args, **_kwargs):
    raise BlobStoreDown("cannot presign: no credentials")


def test_presign_failure_never_turns_get_or_delete_into_a_500(client, small_images, monkeypatch):
    """Regression: a presign failure while building a job body (the DELETE answer and its webhook)
    gave a 500 after the job was changed; the job object falls back to the /result URL."""
    job_id = submit(client, small_images).json()["id"]
    assert poll(client, job_id)["status"] == "succeeded"
    blobs = client.app.state.services.blobs
    monkeypatch.setattr(blobs, "presigned_url", _presign_fails)
    for response in (client.get(f"/jobs/{job_id}"), client.delete(f"/jobs/{job_id}")):
        assert response.status_code == 200, response.text
        assert response.json()["result"]["url"] == f"http://testserver/jobs/{job_id}/result"


def test_cancel_of_a_queued_job_with_a_webhook_survives_a_body_failure(
    make_client, embedded_settings, small_images, monkeypatch
):
    settings = embedded_settings.model_copy(
        update={"webhook_secret": "s", "webhook_allow_hosts": "127.0.0.1", "webhook_attempts": 1}
    )
    pipeline = FakePipeline(gate=threading.Event())
    client = make_client(settings, pipeline=pipeline)
    submit(client, small_images)
    assert pipeline.running.wait(10)
    queued = submit(client, small_images, seed=1, webhook_url="http://127.0.0.1:9/hook").json()["id"]
    import service.webhooks as webhooks

    monkeypatch.setattr(webhooks, "job_json", lambda *a: _presign_fails())
    response = client.delete(f"/jobs/{queued}")
    assert response.status_code == 200 and response.json()["status"] == "canceled"
    pipeline.gate.set()


def test_store_outage_on_result_download_is_503_with_retry_after(client, small_images, monkeypatch):
    """Regression: the result endpoint's 503 was the one built without Retry-After."""
    job_id = submit(client, small_images).json()["id"]
    assert poll(client, job_id)["status"] == "succeeded"
    blobs = client.app.state.services.blobs
    monkeypatch.setattr(blobs, "local_path", lambda key: None)
    monkeypatch.setattr(blobs, "get", lambda key: _presign_fails())
    response = client.get(f"/jobs/{job_id}/result")
    assert_problem(response, 503)
    assert response.headers["retry-after"] == "5"
