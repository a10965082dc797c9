"""Admission: queue capacity, per-key limits and the Retry-After estimate."""

from __future__ import annotations

import threading

from svc_helpers import FakePipeline, bearer
from testkit import assert_problem, poll, submit


def test_queue_full_retry_after_from_recent_durations(make_client, embedded_settings, small_images):
    pipeline = FakePipeline(gate=threading.Event())
    client = make_client(embedded_settings.model_copy(update={"max_queue_depth": 1}), pipeline=pipeline)
    pipeline.gate.set()
    poll(client, submit(client, small_images).json()["id"])  # one finished job: total_s = 0.04
    pipeline.gate.clear()
    pipeline.running.clear()
    submit(client, small_images, seed=1)
    assert pipeline.running.wait(10)
    assert submit(client, small_images, seed=2).status_code == 202
    response = submit(client, small_images, seed=3)
    body = assert_problem(response, 429)
    assert response.headers["retry-after"] == "1", "0.04 s x 1 job / 1 worker, at least 1 s"
    assert "limit 1" in body["detail"]
    pipeline.gate.set()


def test_per_key_inflight_limit(make_client, keyed, small_images):
    pipeline = FakePipeline(gate=threading.Event())
    client = make_client(keyed.model_copy(update={"max_inflight_per_key": 1}), pipeline=pipeline)
    assert submit(client, small_images, headers=bearer("alice")).status_code == 202
    response = submit(client, small_images, headers=bearer("alice"), seed=1)
    assert assert_problem(response, 429)["type"] == "/problems/too-many-jobs"
    assert int(response.headers["retry-after"]) >= 1
    assert submit(client, small_images, headers=bearer("bob"), seed=1).status_code == 202
    pipeline.gate.set()
