"""The public job object built from a record: links and queue fields."""

from __future__ import annotations

import json

from svc_helpers import new_job

from service.jobs.public import job_json
from service.storage import make_object_store


def test_webhook_body_carries_the_links_stored_at_submission(stores, embedded_settings):
    job = new_job(stores, base_url="https://qalign.example.com")
    body = json.loads(job_json(job, make_object_store(embedded_settings), embedded_settings))
    own = f"https://qalign.example.com/jobs/{job.id}"
    assert body["urls"] == {"get": own, "cancel": own, "result": f"{own}/result", "events": f"{own}/events"}
    assert body["queue_position"] is None and body["eta_s"] is None


def test_public_base_url_setting_overrides_the_stored_base(stores, embedded_settings):
    settings = embedded_settings.model_copy(update={"public_base_url": "https://public.example/"})
    job = new_job(stores, base_url="http://internal:8000")
    body = json.loads(job_json(job, make_object_store(settings), settings))
    assert body["urls"]["get"] == f"https://public.example/jobs/{job.id}"


def test_records_without_a_base_have_no_links(stores, embedded_settings):
    job = new_job(stores)
    body = json.loads(job_json(job, make_object_store(embedded_settings), embedded_settings))
    assert body["urls"] is None
