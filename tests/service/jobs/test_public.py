"""The public job object built from a record: links and queue fields."""

from __future__ import annotations

import json

from svc_helpers import new_job

from service.backends.blobs import open_blob_store, result_key
from service.jobs import JobResult, transitions
from service.jobs.public import job_json


def test_webhook_body_carries_the_links_stored_at_submission(stores, embedded_settings):
    job = new_job(stores, base_url="https://qalign.example.com")
    body = json.loads(job_json(job, open_blob_store(embedded_settings), embedded_settings))
    own = f"https://qalign.example.com/jobs/{job.id}"
    assert body["urls"] == {
        "get": own,
        "cancel": own,
        "result": f"{own}/result",
        "events": f"{own}/events",
        "results": [f"{own}/results/0"],
    }
    assert body["queue_position"] is None and body["eta_s"] is None
    assert body["appearances"] == 1 and body["results"] == [] and body["output"] is None


def test_public_base_url_setting_overrides_the_stored_base(stores, embedded_settings):
    settings = embedded_settings.model_copy(update={"public_base_url": "https://public.example/"})
    job = new_job(stores, base_url="http://internal:8000")
    body = json.loads(job_json(job, open_blob_store(settings), settings))
    assert body["urls"]["get"] == f"https://public.example/jobs/{job.id}"


def test_records_without_a_base_have_no_links(stores, embedded_settings):
    job = new_job(stores)
    body = json.loads(job_json(job, open_blob_store(embedded_settings), embedded_settings))
    assert body["urls"] is None


def test_a_multi_appearance_job_lists_its_results_in_order(stores, embedded_settings):
    appearances = ["inputs/" + c * 64 for c in "bcd"]
    job = new_job(stores, base_url="https://qalign.example.com", appearance_keys=appearances)
    own = f"https://qalign.example.com/jobs/{job.id}"
    queued = json.loads(job_json(job, open_blob_store(embedded_settings), embedded_settings))
    assert queued["appearances"] == 3
    assert queued["urls"]["results"] == [f"{own}/results/{k}" for k in range(3)]
    stored = [
        JobResult(key=result_key(job.id, "image/png", index=k), content_type="image/png", width=96, height=64)
        for k in range(3)
    ]
    output = {"width": 96, "height": 64, "aspect_clamped": False}
    done = transitions.succeed(job, results=stored, params={}, metrics={}, output=output)
    body = json.loads(job_json(done, open_blob_store(embedded_settings), embedded_settings))
    # The local store has no presigned URLs: the API's own result URLs, absolute.
    assert [r["url"] for r in body["results"]] == [f"{own}/result", f"{own}/results/1", f"{own}/results/2"]
    assert [r["index"] for r in body["results"]] == [0, 1, 2]
    assert body["result"] == body["results"][0]
    older = {"grid_width": None, "grid_height": None, "crop": None}  # a record from before grids
    assert body["output"] == {**output, **older}
    assert all((r["width"], r["height"]) == (96, 64) for r in body["results"])
