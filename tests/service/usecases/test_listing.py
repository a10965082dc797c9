"""GET /jobs: owner-scoped, newest first, cursor-paginated, filtered by status."""

from __future__ import annotations

import pytest
from svc_helpers import bearer
from testkit import assert_problem, poll, submit

from qalign_schema.jobs import JobList


def _all_pages(client, headers, **query) -> list[dict]:
    jobs, cursor = [], None
    while True:
        params = {**query, **({"cursor": cursor} if cursor else {})}
        response = client.get("/jobs", params=params, headers=headers)
        assert response.status_code == 200, response.text
        page = JobList.model_validate(response.json())
        assert len(page.jobs) <= int(query.get("limit", 20))
        jobs += [job.model_dump(mode="json") for job in page.jobs]
        if page.next_cursor is None:
            return jobs
        cursor = page.next_cursor


def test_list_is_owner_scoped_newest_first_and_paginated(make_client, keyed, small_images):
    client = make_client(keyed)
    alice = [submit(client, small_images, headers=bearer("alice"), seed=i).json()["id"] for i in range(5)]
    bob = [submit(client, small_images, headers=bearer("bob")).json()["id"]]
    for job_id in alice:
        poll(client, job_id, headers=bearer("alice"))
    poll(client, bob[0], headers=bearer("bob"))

    listed = _all_pages(client, bearer("alice"), limit=2)
    assert [job["id"] for job in listed] == list(reversed(alice))
    assert all(job["urls"]["get"] == f"http://testserver/jobs/{job['id']}" for job in listed)
    assert [job["id"] for job in _all_pages(client, bearer("bob"))] == bob
    assert _all_pages(client, bearer("bob"), status="failed") == []
    assert [job["id"] for job in _all_pages(client, bearer("alice"), status="succeeded", limit=3)] == list(
        reversed(alice)
    )
    assert client.get("/jobs", headers=bearer("alice")).json()["next_cursor"] is None


def test_list_needs_a_key_when_keys_are_on(make_client, keyed):
    assert_problem(make_client(keyed).get("/jobs"), 401)


@pytest.mark.parametrize(
    ("query", "field", "allowed"),
    [
        ({"status": "done"}, "status", "queued"),
        ({"limit": 0}, "limit", None),
        ({"limit": 101}, "limit", None),
        ({"cursor": "%%%"}, "cursor", "next_cursor"),
        ({"cursor": "bm90LWEtY3Vyc29y"}, "cursor", "next_cursor"),
    ],
)
def test_list_refusals_name_the_parameter(client, query, field, allowed):
    body = assert_problem(client.get("/jobs", params=query), 422)
    assert body["errors"][0]["field"] == field
    text = body["detail"] + str(body["errors"][0].get("allowed") or "")
    if allowed:
        assert allowed in text
    assert field in body["detail"]


def test_status_refusal_lists_the_allowed_statuses(client):
    detail = assert_problem(client.get("/jobs", params={"status": "done"}), 422)["detail"]
    for status in ("queued", "running", "succeeded", "failed", "canceled"):
        assert status in detail
