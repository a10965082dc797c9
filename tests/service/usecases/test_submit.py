"""The submission use case over HTTP: Idempotency-Key replay, conflicts and races."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from svc_helpers import bearer
from testkit import assert_problem, poll, submit

from qalign_schema.params import TransferParams
from service.jobs import Job, utcnow
from service.usecases.errors import IdempotencyConflict


def test_idempotency_same_body_same_job_other_body_409(make_client, keyed, small_images):
    client = make_client(keyed)
    key = {"Idempotency-Key": "order-42", **bearer("alice")}
    first = submit(client, small_images, headers=key, seed=3)
    assert first.status_code == 202
    again = submit(client, small_images, headers=key, seed=3)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == f"/jobs/{first.json()['id']}"
    # Same request in the other encoding is the same canonical request.
    import base64

    body = {
        "structure": base64.b64encode(small_images[0]).decode(),
        "appearance": base64.b64encode(small_images[1]).decode(),
        "seed": 3,
    }
    assert client.post("/transfer", json=body, headers=key).json()["id"] == first.json()["id"]
    body = assert_problem(submit(client, small_images, headers=key, seed=4), 409)
    assert "different request" in body["detail"]
    # Keys are per API key: bob's "order-42" is his own.
    other = submit(client, small_images, headers={"Idempotency-Key": "order-42", **bearer("bob")}, seed=3)
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    assert poll(client, first.json()["id"], bearer("alice"))["status"] == "succeeded"
    # After the job finished the key still answers with it.
    assert submit(client, small_images, headers=key, seed=3).json()["status"] == "succeeded"


def test_concurrent_identical_requests_make_one_job(make_client, small_images, fake_pipeline):
    client = make_client()
    headers = {"Idempotency-Key": "burst-1"}
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: submit(client, small_images, headers=headers, seed=9), range(8)))
    assert sorted(r.status_code for r in responses) == [200] * 7 + [202]
    assert len({r.json()["id"] for r in responses}) == 1
    poll(client, responses[0].json()["id"])
    assert len(fake_pipeline.calls) == 1


class _SlowRecords:
    """A record store whose job appears only after ``misses`` reads (the reserving request still writing)."""

    def __init__(self, job, misses: int) -> None:
        self.job, self.misses, self.reads = job, misses, 0

    def get(self, job_id: str):
        self.reads += 1
        return self.job if job_id == self.job.id and self.reads > self.misses else None


def _replaying_submitter(records, settings):
    """A Submitter whose Idempotency-Key is already reserved (for the same request) by job ``j1``."""
    from types import SimpleNamespace

    from service.usecases.submit import Submission, Submitter, request_fingerprint

    submission = Submission(TransferParams(), (b"s", "image/png"), [(b"a", "image/png")], None, "k-1")
    reserved = {"job_id": "j1", "fingerprint": request_fingerprint(submission)}
    stores = SimpleNamespace(idempotency=SimpleNamespace(get=lambda scope: reserved), records=records)
    unused = SimpleNamespace()
    return Submitter(settings, stores, unused, unused, unused, unused, unused), submission


def test_a_duplicate_waits_for_the_reserving_requests_record(embedded_settings):
    job = Job(id="j1", created_at=utcnow(), structure_key="inputs/s", appearance_keys=["inputs/a"])
    records = _SlowRecords(job, misses=3)
    submitter, submission = _replaying_submitter(records, embedded_settings)
    assert submitter.submit(submission) == (job, False)
    assert records.reads == 4


def test_a_duplicate_whose_record_never_appears_is_told_to_retry(embedded_settings, monkeypatch):
    from service.usecases import submit as module

    monkeypatch.setattr(module, "REPLAY_WAIT_S", 0.3)
    job = Job(id="j1", created_at=utcnow(), structure_key="inputs/s", appearance_keys=["inputs/a"])
    submitter, submission = _replaying_submitter(_SlowRecords(job, misses=10**6), embedded_settings)
    with pytest.raises(IdempotencyConflict) as refused:
        submitter.submit(submission)
    assert refused.value.in_progress and "still being processed" in refused.value.detail
