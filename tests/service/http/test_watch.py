"""GET /jobs/{id}/events (Server-Sent Events) and POST /transfer with Prefer: wait, against the
embedded app served by a real uvicorn."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from svc_helpers import FakePipeline, bearer, read_sse, wait_for
from testkit import assert_problem, poll, submit

from qalign_schema.jobs import JobOut
from service.http.watch import prefer_wait

TERMINAL = ("succeeded", "failed", "canceled")


def stream_events(http: httpx.Client, job_id: str, headers: dict | None = None, stop_after=None, into=None):
    """Every event of the stream until it ends (or ``stop_after(event)`` says stop), also appended
    to ``into`` as they come."""
    events = into if into is not None else []
    with http.stream("GET", f"/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in read_sse(response.iter_lines()):
            events.append(event)
            if stop_after is not None and stop_after(event):
                break
    return events


@pytest.fixture
def gated():
    return FakePipeline(gate=threading.Event())


def test_events_stream_to_the_terminal_event(make_server, gated, small_images):
    live = make_server(pipeline=gated)
    with httpx.Client(base_url=live.url, timeout=60) as http:
        job_id = submit(http, small_images).json()["id"]
        events: list = []
        reader = threading.Thread(target=lambda: stream_events(http, job_id, into=events))
        reader.start()
        wait_for(lambda: any(json.loads(e.data)["stage"] == "denoising" for e in events), timeout=30)
        gated.gate.set()
        reader.join(60)
        assert not reader.is_alive(), "the stream ends after the terminal event"
    names = [e.event for e in events]
    assert names[-1] == "succeeded" and set(names[:-1]) == {"progress"}
    ids = [int(e.id) for e in events]
    assert ids == sorted(set(ids)), "ids are increasing integers"
    jobs = [JobOut.model_validate_json(e.data) for e in events]
    assert [j.id for j in jobs] == [job_id] * len(jobs)
    assert {j.stage for j in jobs} >= {"denoising", "done"}
    progress = [j.progress for j in jobs]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert jobs[-1].status == "succeeded" and jobs[-1].result is not None
    assert jobs[-1].urls.events == f"{live.url}/jobs/{job_id}/events"


def test_resume_with_last_event_id(make_server, gated, small_images):
    live = make_server(pipeline=gated)
    with httpx.Client(base_url=live.url, timeout=60) as http:
        job_id = submit(http, small_images).json()["id"]
        first = stream_events(http, job_id, stop_after=lambda e: True)[0]
        gated.gate.set()
        poll(http, job_id)
        rest = stream_events(http, job_id, headers={"Last-Event-ID": first.id})
        assert int(rest[0].id) > int(first.id)
        assert [e.event for e in rest] == ["succeeded"], "a finished job: only its terminal event is new"
        everything = stream_events(http, job_id)
        assert [e.event for e in everything] == ["succeeded"] and everything[0].id == rest[0].id
        # The client saw the terminal event: nothing more will come (204 stops EventSource retries).
        done = http.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": rest[-1].id})
        assert done.status_code == 204


def test_client_disconnect_ends_the_stream(make_server, gated, small_images):
    live = make_server(pipeline=gated)
    follower = live.app.state.services.follower
    try:
        with httpx.Client(base_url=live.url, timeout=60) as http:
            job_id = submit(http, small_images).json()["id"]
            with http.stream("GET", f"/jobs/{job_id}/events") as response:
                events = read_sse(response.iter_lines())  # kept: closing the iterator closes the response
                next(events)
                assert follower.open_streams == 1
        wait_for(lambda: follower.open_streams == 0, timeout=30)
    finally:
        gated.gate.set()


def test_idle_stream_sends_keep_alive_comments(make_server, embedded_settings, gated, small_images):
    live = make_server(embedded_settings.model_copy(update={"events_ping_s": 0.2}), pipeline=gated)
    comments: list[str] = []
    try:
        with httpx.Client(base_url=live.url, timeout=60) as http:
            job_id = submit(http, small_images).json()["id"]
            with http.stream("GET", f"/jobs/{job_id}/events") as response:
                for line in response.iter_lines():  # the job is held: nothing but pings will come
                    if line.startswith(":"):
                        comments.append(line)
                        break
    finally:
        gated.gate.set()
    assert comments and comments[0].startswith(":")


def test_events_of_unknown_or_foreign_jobs_are_404(make_client, keyed, small_images):
    client = make_client(keyed)
    assert_problem(client.get("/jobs/" + "0" * 32 + "/events", headers=bearer("alice")), 404)
    job_id = submit(client, small_images, headers=bearer("alice")).json()["id"]
    assert_problem(client.get(f"/jobs/{job_id}/events", headers=bearer("bob")), 404)
    resume = {**bearer("alice"), "Last-Event-ID": "x"}
    bad = assert_problem(client.get(f"/jobs/{job_id}/events", headers=resume), 422)
    assert "last-event-id" in bad["detail"]


# ------------------------------------------------------------------------------------ Prefer: wait
def test_prefer_wait_answers_201_with_the_finished_job(client, small_images):
    response = submit(client, small_images, headers={"Prefer": "wait=30"})
    assert response.status_code == 201, response.text
    assert response.headers["preference-applied"] == "wait=30"
    assert response.headers["location"] == f"/jobs/{response.json()['id']}"
    job = response.json()
    assert job["status"] == "succeeded" and job["result"]["url"].startswith("http://testserver/")


def test_prefer_wait_larger_than_60_is_clamped(client, small_images):
    response = submit(client, small_images, headers={"Prefer": "respond-async, wait=600"})
    assert response.status_code == 201 and response.headers["preference-applied"] == "wait=60"


def test_prefer_wait_answers_202_when_the_job_outlives_it_without_blocking_others(
    make_server, gated, small_images
):
    live = make_server(pipeline=gated)
    answers: list = []
    with httpx.Client(base_url=live.url, timeout=60) as http:
        waiter = threading.Thread(
            target=lambda: answers.append(submit(http, small_images, headers={"Prefer": "wait=2"}))
        )
        waiter.start()
        wait_for(gated.running.is_set, timeout=30)
        # While the request is held, the server answers others (the wait does not block the loop).
        assert http.get("/healthz").status_code == 200
        waiter.join(60)
        response = answers[0]
        assert response.status_code == 202 and response.headers["preference-applied"] == "wait=2"
        assert response.json()["status"] == "running"
        gated.gate.set()
        assert poll(http, response.json()["id"])["status"] == "succeeded"


@pytest.mark.parametrize("value", ["wait=0", "wait=abc", "wait=-3", "wait=1.5"])
def test_malformed_prefer_wait_is_422(client, small_images, value):
    body = assert_problem(submit(client, small_images, headers={"Prefer": value}), 422)
    assert body["errors"][0]["field"] == "Prefer" and "1 to 60" in body["errors"][0]["allowed"]


@pytest.mark.parametrize(
    ("header", "wait"),
    [(None, None), ("", None), ("respond-async", None), ("wait=5", 5), ('WAIT="7"', 7), ("wait=61", 60),
     ("handling=lenient, wait=10; foo", 10)],
)  # fmt: skip
def test_prefer_wait_parsing(header, wait):
    assert prefer_wait(header) == wait
