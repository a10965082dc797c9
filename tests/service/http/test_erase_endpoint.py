"""Erasure through the API (embedded app, fake pipeline, real SQLite and local store):
DELETE /jobs/{id}?purge=true and DELETE /jobs/{id}/data."""

from __future__ import annotations

import threading

import pytest
from svc_helpers import FakePipeline, bearer
from testkit import assert_problem, poll, submit

ERASE = {
    "purge": lambda job_id: ("DELETE", f"/jobs/{job_id}", {"purge": "true"}),
    "data": lambda job_id: ("DELETE", f"/jobs/{job_id}/data", None),
}


def erase(client, how: str, job_id: str, headers: dict | None = None):
    method, url, params = ERASE[how](job_id)
    return client.request(method, url, params=params, headers=headers)


def objects(client) -> set[str]:
    """Every object key in the app's local store."""
    blobs = client.app.state.services.blobs
    return {key for folder in ("inputs", "results", "inversions") for key, _ in blobs.list_objects(folder)}


def record(client, job_id: str):
    return client.app.state.services.stores.records.get(job_id)


def assert_all_urls_404(client, job_id: str, headers: dict | None = None) -> None:
    for method, url, params in (
        ("GET", f"/jobs/{job_id}", None),
        ("GET", f"/jobs/{job_id}/result", None),
        ("GET", f"/jobs/{job_id}/events", None),
        ("DELETE", f"/jobs/{job_id}", None),
        ("DELETE", f"/jobs/{job_id}", {"purge": "true"}),
        ("DELETE", f"/jobs/{job_id}/data", None),
    ):
        assert_problem(client.request(method, url, params=params, headers=headers), 404)


@pytest.mark.parametrize("how", sorted(ERASE))
def test_erasure_removes_record_inputs_result_and_inversions(client, small_images, how):
    job_id = submit(client, small_images).json()["id"]
    assert poll(client, job_id)["status"] == "succeeded"
    job = record(client, job_id)
    keys = {*job.input_keys, job.result.key, *job.inversion_keys}
    assert len(job.inversion_keys) == 2 and keys <= objects(client)

    response = erase(client, how, job_id)
    assert response.status_code == 204 and response.content == b""
    assert record(client, job_id) is None
    assert objects(client) == set(), "nothing of the job is left in the store"
    assert_all_urls_404(client, job_id)


def test_another_key_gets_404_and_erases_nothing(make_client, keyed, small_images):
    client = make_client(keyed)
    job_id = submit(client, small_images, headers=bearer("alice")).json()["id"]
    assert poll(client, job_id, headers=bearer("alice"))["status"] == "succeeded"
    before = objects(client)
    for how in ERASE:
        assert_problem(erase(client, how, job_id, headers=bearer("bob")), 404)
    assert objects(client) == before and record(client, job_id) is not None
    assert erase(client, "data", job_id, headers=bearer("alice")).status_code == 204
    assert_all_urls_404(client, job_id, headers=bearer("alice"))


def test_inputs_and_inversions_another_job_uses_are_kept(client, small_images):
    first = submit(client, small_images).json()["id"]
    assert poll(client, first)["status"] == "succeeded"
    second = submit(client, small_images, steps=30).json()["id"]  # same images and seed
    done = poll(client, second)
    assert done["status"] == "succeeded" and done["metrics"]["inversion_cache_hits"] == 2
    shared = record(client, second)
    assert set(shared.inversion_keys) == set(record(client, first).inversion_keys)

    assert erase(client, "purge", first).status_code == 204
    left = objects(client)
    assert {*shared.input_keys, *shared.inversion_keys, shared.result.key} <= left
    assert not any(first in key for key in left), "the erased job's result is gone"
    assert client.get(f"/jobs/{second}/result").status_code == 200

    assert erase(client, "purge", second).status_code == 204
    assert objects(client) == set()


def test_erasing_a_running_job_stops_it_and_its_late_writes_stay_erased(make_client, small_images):
    """The runner finishes after the erasure (it does not look at the record while gated): the record
    is not brought back, no result is uploaded, and the inversions it cached are deleted again."""
    pipeline = FakePipeline(gate=threading.Event(), honour_cancel=False)
    client = make_client(pipeline=pipeline)
    job_id = submit(client, small_images).json()["id"]
    assert pipeline.running.wait(10)
    assert record(client, job_id).status == "running"

    assert erase(client, "purge", job_id).status_code == 204
    assert_all_urls_404(client, job_id)
    pipeline.gate.set()
    # One worker thread runs jobs in order: once the next job is done, the erased run has ended.
    pipeline.honour_cancel = True
    after = submit(client, small_images, seed=7).json()["id"]
    assert poll(client, after)["status"] == "succeeded"
    assert record(client, job_id) is None
    assert not any(job_id in key for key in objects(client))
    kept = record(client, after)
    expected = {*kept.input_keys, kept.result.key, *kept.inversion_keys}
    assert objects(client) == expected, "only the later job's objects remain"


def test_an_erased_jobs_idempotency_key_submits_a_new_job(client, small_images):
    headers = {"Idempotency-Key": "erase-me-1"}
    first = submit(client, small_images, headers=headers)
    assert first.status_code == 202
    job_id = first.json()["id"]
    assert poll(client, job_id)["status"] == "succeeded"
    assert erase(client, "data", job_id).status_code == 204

    again = submit(client, small_images, headers=headers)
    assert again.status_code == 202, "a new job, not the erased one"
    assert again.json()["id"] != job_id
    assert poll(client, again.json()["id"])["status"] == "succeeded", "the inputs were stored again"
    replay = submit(client, small_images, headers=headers)
    assert replay.status_code == 200 and replay.json()["id"] == again.json()["id"]


def test_erasing_a_queued_job_never_runs_it(make_client, small_images):
    pipeline = FakePipeline(gate=threading.Event())
    client = make_client(pipeline=pipeline)
    running = submit(client, small_images).json()["id"]
    assert pipeline.running.wait(10)
    queued = submit(client, small_images, seed=3).json()["id"]
    assert erase(client, "purge", queued).status_code == 204
    pipeline.gate.set()
    assert poll(client, running)["status"] == "succeeded"
    later = submit(client, small_images, seed=4).json()["id"]  # queued after the erased one
    assert poll(client, later)["status"] == "succeeded"
    assert len(pipeline.calls) == 2, "the erased job never ran"
    assert record(client, queued) is None


def test_a_store_outage_during_erasure_is_503_and_keeps_the_job(client, small_images, monkeypatch):
    from service.backends.blobs import BlobStoreDown

    job_id = submit(client, small_images).json()["id"]
    assert poll(client, job_id)["status"] == "succeeded"
    blobs = client.app.state.services.blobs

    def down(key):
        raise BlobStoreDown("disk gone")

    monkeypatch.setattr(blobs, "delete", down)
    assert_problem(erase(client, "purge", job_id), 503)
    assert client.get(f"/jobs/{job_id}").status_code == 200, "nothing lost: retry the erasure"
    monkeypatch.undo()
    assert erase(client, "purge", job_id).status_code == 204
    assert objects(client) == set()
